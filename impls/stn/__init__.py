"""Spatial transformer: bilinear sampler and affine grid (naive, vectorized, ext, peers, legacy adapter)."""

from impls.stn import ext, legacy, mechanism, naive, peers, report, vectorized  # noqa: F401  (registration)
