"""Hard attention: glimpse, location policy, REINFORCE loss, Gumbel-max selection."""

from impls.hard_attention import ext, mechanism, naive, peers, report, vectorized  # noqa: F401  (registration)
