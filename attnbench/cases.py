"""Cases, their ids and the seeds derived from them (specs/README.md §5).

A *shape case* is a mechanism core plus its parameters (shapes and options).
A *case* adds a dtype and a device. Every random tensor of a case is drawn from
a seed derived from the shape id and the tensor's role, so all dtypes and
devices of one shape see the same numbers (rounded), and a rerun reproduces a
failure bit for bit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
DEVICES = ("cpu", "cuda")


def format_value(value: Any) -> str:
    """Formats a case parameter for ids: stable, short, no spaces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def seed(shape_id: str, role: str) -> int:
    """The seed of one tensor of a shape case, as specs/README.md §5 defines it."""
    digest = hashlib.sha256(f"{shape_id}|{role}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class Case:
    """One shape case of a mechanism core.

    Attributes:
        mechanism: registry key of the core, e.g. ``"ccnet"`` or ``"danet.cam"``.
        core: the core's function name used in ids, e.g. ``"cca"``.
        params: shape and option parameters, e.g. ``{"B": 2, "H": 5, ...}``.
        name: optional human label from the suite (``"H > W"``).
        tags: free labels (``"gradcheck"``, ``"module"``) that select checks.
    """

    mechanism: str
    core: str
    params: Mapping[str, Any]
    name: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    @property
    def family(self) -> str:
        """The mechanism family (``"danet"`` for ``"danet.cam"``)."""
        return self.mechanism.split(".", 1)[0]

    @property
    def param_str(self) -> str:
        return ",".join(f"{k}={format_value(self.params[k])}" for k in sorted(self.params))

    @property
    def shape_id(self) -> str:
        """``"{mechanism}/{core}/{k1=v1,...}"`` with keys sorted (no dtype, no device)."""
        return f"{self.family}/{self.core}/{self.param_str}"

    def case_id(self, dtype: str, device: str) -> str:
        return f"{self.shape_id}/{dtype}/{device}"

    def seed(self, role: str) -> int:
        return seed(self.shape_id, role)

    def generator(self, role: str) -> torch.Generator:
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed(role))
        return gen

    def randn(self, role: str, *shape: int, std: float = 1.0) -> torch.Tensor:
        """Standard-normal float64 CPU tensor for ``role`` scaled by ``std``."""
        return torch.randn(shape, generator=self.generator(role), dtype=torch.float64) * std

    def rand(self, role: str, *shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """Uniform float64 CPU tensor on [low, high) for ``role``."""
        u = torch.rand(shape, generator=self.generator(role), dtype=torch.float64)
        return low + (high - low) * u

    def with_params(self, **changes: Any) -> Case:
        params = dict(self.params)
        params.update(changes)
        return Case(self.mechanism, self.core, params, self.name, self.tags)


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}") from None
