"""An impl that allocates 100 GiB: an `error` row saying out of memory."""

import torch

import attnbench


@attnbench.register("ccnet", kind="user", name="hog")
def cca_hog(q, k, v):
    scratch = torch.zeros(100 * 2**30, dtype=torch.uint8)
    return v + scratch[0]
