"""Correctness checks: equivalence against the float64 reference, gradcheck,
mechanism properties, opcheck, scaling and statistical tests."""
