"""Multi-head self-attention (Transformer, DETR): mechanism, naive, vectorized, ext and peers."""

from impls.mhsa import ext, mechanism, naive, peers, report, vectorized  # noqa: F401  (registration)
