"""Residual attention: mechanism, naive, vectorized, ext, peers and the report section."""

from impls.residual_attention import ext, mechanism, naive, peers, report, vectorized  # noqa: F401  (registration)
