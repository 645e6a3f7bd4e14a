"""A wrong straight-through estimator: the surrogate softmax ignores τ.
Caught by ``backward:logits`` and ``property:straight_through_surrogate`` on
the τ = 0.5 cases."""

import torch

import attnbench


@attnbench.register("hard_attention.hard_select", kind="user", name="straight_through_no_tau")
def hard_select_no_tau(logits, values, gumbel, tau=1.0, straight_through=False):
    index = (logits + gumbel).argmax(-1)
    hard = values.gather(1, index[:, None, None].expand(-1, 1, values.shape[2])).squeeze(1)
    if not straight_through:
        return hard
    p = torch.softmax(logits + gumbel, dim=-1)  # bug: (logits + gumbel) / tau
    soft = (p[:, :, None] * values.detach()).sum(1)
    return hard + (soft - soft.detach())
