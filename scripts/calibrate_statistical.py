"""Measures the false-alarm rate and power of the hard-attention statistical checks.

    python scripts/calibrate_statistical.py [--seeds 200] [--power-seeds 20]

Writes docs/hard_attention_calibration.md and docs/hard_attention_calibration.json.
"""

from __future__ import annotations

import argparse

from impls.hard_attention import calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--seeds", type=int, default=200, help="seeds per check on the correct impls")
    parser.add_argument("--power-seeds", type=int, default=20, help="seeds per (check, mutation)")
    parser.add_argument("--checks", default="", help="comma-separated check names (default: all)")
    args = parser.parse_args()
    checks = [c for c in args.checks.split(",") if c] or None
    result = calibration.run(args.seeds, args.power_seeds, checks, progress=print)
    calibration.write(result)
    print(f"wrote {calibration.MD_PATH} and {calibration.JSON_PATH}")


if __name__ == "__main__":
    main()
