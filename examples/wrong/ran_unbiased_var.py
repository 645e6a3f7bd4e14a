"""Wrong on purpose: the spatial kind with the unbiased variance 1/(H·W − 1).

Caught by the forward check on the spatial cases (√(4/3) at H·W = 4); H·W = 1
gives NaN, which is a failure too.
"""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("residual_attention", kind="user", name="unbiased_var")
def ran_unbiased_var(trunk, mask_logits, kind="mixed"):
    m = mask_logits
    if kind == "mixed":
        f = torch.sigmoid(m)
    elif kind == "channel":
        f = F.normalize(m, dim=1)
    else:
        mean = m.mean((2, 3), keepdim=True)
        var = m.var((2, 3), unbiased=True, keepdim=True)  # BUG: the canonical variance is biased
        f = torch.sigmoid((m - mean) / torch.sqrt(var + 1e-5))
    return (1 + f) * trunk
