"""An impl whose native code crashes (reads address 0): the run records an
`error` row with the signal and goes on."""

import ctypes

import attnbench


@attnbench.register("ccnet", kind="user", name="segfaults")
def cca_segfaults(q, k, v):
    ctypes.string_at(0)
    return v
