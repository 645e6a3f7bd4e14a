"""The built-in `vectorized` CCNet impl made 25 % slower: registered under the
same name, it replaces the built-in for this run. Used to prove the gate:
`attnbench run SUITE --baseline BASE --impl this_file.py` exits 3."""

import time

import attnbench
from impls.ccnet.vectorized import cca_vectorized


@attnbench.register("ccnet", kind="vectorized", name="vectorized")
def cca_vectorized_slower(q, k, v):
    start = time.perf_counter()
    out = cca_vectorized(q, k, v)
    spin_until = time.perf_counter() + 0.25 * (time.perf_counter() - start)
    while time.perf_counter() < spin_until:
        pass
    return out
