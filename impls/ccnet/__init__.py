"""CCNet criss-cross attention: mechanism, naive, vectorized, ext and peers."""

from impls.ccnet import ext, mechanism, naive, peers, report, vectorized  # noqa: F401  (registration)
