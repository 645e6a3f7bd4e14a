#!/usr/bin/env bash
# Sets up a CPU-only virtual environment (if needed) and runs every check CI runs:
# lint, types, nvcc -c of the CUDA sources, and the test suite.
# Usage: bash scripts/test.sh [extra pytest args]     (e.g. -m slow for the slow set)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# constraints/cpu.txt pins the CPU torch wheel; an unpinned torch is a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints/cpu.txt -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy attnbench impls
echo "== nvcc -c of every .cu (no GPU needed)"
if command -v nvcc >/dev/null 2>&1 || [ -n "${CUDA_HOME:-}" ]; then
  .venv/bin/attnbench build --check-cuda
else
  echo "nvcc not found: CUDA sources NOT compiled in this run"
fi
echo "== pytest"
set +e
.venv/bin/python -m pytest -n 2 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing (exit 5 must not pass silently)" >&2
  exit 1
fi
exit "$rc"
