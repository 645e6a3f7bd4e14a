"""Non-local block: mechanism, naive, vectorized, ext and peers (registered as ``"nonlocal"``)."""

from impls.non_local import mechanism, naive, peers, vectorized  # noqa: F401  (registration)
