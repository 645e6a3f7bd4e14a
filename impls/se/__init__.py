"""Squeeze-and-Excitation: mechanism, naive, vectorized, ext, peers and the report section."""

from impls.se import ext, mechanism, naive, peers, report, vectorized  # noqa: F401  (registration)
