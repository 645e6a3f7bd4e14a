"""A wrong REINFORCE loss: the baseline is not detached, so it is trained through
the REINFORCE loss (it must only be trained by its own loss, e.g. MSE to the
reward). Forward and the log_prob gradient are right: caught by
``property:advantage_detached``."""

import attnbench


@attnbench.register("hard_attention.reinforce_loss", kind="user", name="baseline_attached")
def reinforce_loss_baseline_attached(log_prob, reward, baseline=None):
    advantage = reward.detach()[:, None].expand_as(log_prob)
    if baseline is not None:
        advantage = advantage - baseline  # bug: baseline.detach()
    return -(log_prob * advantage).sum() / log_prob.shape[0]
