"""A wrong Gumbel-max: ties go to the highest index (argmax over the reversed
items). Identical on continuous data; caught by ``forward`` on the exact-ties
case (integer logits, zero noise)."""

import attnbench


@attnbench.register("hard_attention.hard_select", kind="user", name="ties_highest")
def hard_select_ties_highest(logits, values, gumbel, tau=1.0, straight_through=False):
    N = logits.shape[1]
    index = N - 1 - (logits + gumbel).flip(-1).argmax(-1)  # bug: the lowest index must win
    return values.gather(1, index[:, None, None].expand(-1, 1, values.shape[2])).squeeze(1)
