"""Non-local block: mechanism, naive, vectorized, ext and peers (registered as ``"nonlocal"``)."""

from impls.non_local import ext, mechanism, naive, peers, report, vectorized  # noqa: F401  (registration)
