"""attnbench: benchmark and verification harness for attention mechanisms in vision.

The public API::

    import attnbench

    @attnbench.register("ccnet", kind="user", name="mine")
    def my_cca(q, k, v): ...

    report = attnbench.check_impl("ccnet", my_cca)   # library use, see attnbench.api
"""

from attnbench.cases import Case
from attnbench.errors import SuiteError, UsageError
from attnbench.registry import (
    REGISTRY,
    Impl,
    Inputs,
    Mechanism,
    ModuleDef,
    Param,
    Property,
    PropertyOutcome,
    define_mechanism,
    register,
)

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "Case",
    "Impl",
    "Inputs",
    "Mechanism",
    "ModuleDef",
    "Param",
    "Property",
    "PropertyOutcome",
    "SuiteError",
    "UsageError",
    "define_mechanism",
    "register",
]
