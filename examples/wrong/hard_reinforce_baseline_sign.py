"""A wrong REINFORCE loss: the baseline is added instead of subtracted.

Same expected gradient (E[score] = 0), so only the exact comparison sees it:
caught by ``forward``."""

import attnbench


@attnbench.register("hard_attention.reinforce_loss", kind="user", name="baseline_sign")
def reinforce_loss_baseline_sign(log_prob, reward, baseline=None):
    advantage = reward[:, None].expand_as(log_prob)
    if baseline is not None:
        advantage = advantage + baseline  # bug: should be reward − baseline
    return -(log_prob * advantage.detach()).sum() / log_prob.shape[0]
