"""Wrong on purpose: the channel and spatial normalisations swapped.

channel normalises over space (H, W) instead of over channels; spatial
normalises across channels at each pixel instead of over space per channel.
Caught by the forward check on the channel and spatial cases.
"""

import torch
import torch.nn.functional as F

import attnbench


@attnbench.register("residual_attention", kind="user", name="swapped_norm")
def ran_swapped_norm(trunk, mask_logits, kind="mixed"):
    m = mask_logits
    if kind == "mixed":
        f = torch.sigmoid(m)
    elif kind == "channel":
        f = F.normalize(m.flatten(2), dim=2).reshape(m.shape)  # BUG: over H·W, not over C
    else:
        mean = m.mean(1, keepdim=True)  # BUG: over C at each pixel, not over H·W per channel
        var = m.var(1, unbiased=False, keepdim=True)
        f = torch.sigmoid((m - mean) / torch.sqrt(var + 1e-5))
    return (1 + f) * trunk
