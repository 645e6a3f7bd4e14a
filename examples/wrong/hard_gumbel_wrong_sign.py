"""A wrong Gumbel-max: the noise is subtracted. Selection frequencies no longer
follow softmax(logits): caught by ``property:gumbel_max_frequencies`` (χ² ≈ 800)
and by ``forward``."""

import attnbench


@attnbench.register("hard_attention.hard_select", kind="user", name="gumbel_wrong_sign")
def hard_select_wrong_sign(logits, values, gumbel, tau=1.0, straight_through=False):
    index = (logits - gumbel).argmax(-1)  # bug: logits + gumbel
    return values.gather(1, index[:, None, None].expand(-1, 1, values.shape[2])).squeeze(1)
