"""Measurements: latency, memory, FLOPs and the machine fingerprint."""
