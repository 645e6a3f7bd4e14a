"""CCNet criss-cross attention: mechanism, naive, vectorized, ext and peers."""

from impls.ccnet import mechanism, naive, peers, vectorized  # noqa: F401  (registration)
