"""A wrong REINFORCE loss: the sign is flipped (gradient ascent on the surrogate
means descent on the reward). Caught by ``forward`` and by the z-tests of the
REINFORCE estimator (``property:reinforce_toy1_x``)."""

import attnbench


@attnbench.register("hard_attention.reinforce_loss", kind="user", name="loss_sign")
def reinforce_loss_sign(log_prob, reward, baseline=None):
    advantage = reward[:, None].expand_as(log_prob)
    if baseline is not None:
        advantage = advantage - baseline
    return (log_prob * advantage.detach()).sum() / log_prob.shape[0]  # bug: missing minus
