"""Wrong on purpose: attention residual learning dropped, out = f(m) ⊙ T instead of (1 + f(m)) ⊙ T.

Caught by the forward check (mixed with m = 0 gives 0.5·trunk, not 1.5·trunk).
"""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("residual_attention", kind="user", name="no_residual")
def ran_no_residual(trunk, mask_logits, kind="mixed"):
    m = mask_logits
    if kind == "mixed":
        f = torch.sigmoid(m)
    elif kind == "channel":
        f = F.normalize(m, dim=1)
    else:
        mean = m.mean((2, 3), keepdim=True)
        var = m.var((2, 3), unbiased=False, keepdim=True)
        f = torch.sigmoid((m - mean) / torch.sqrt(var + 1e-5))
    return f * trunk  # BUG: should be (1 + f) * trunk
