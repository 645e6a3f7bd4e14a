#!/usr/bin/env bash
# GPU check of the CCNet extension, for a machine with a CUDA GPU and a CUDA build of torch:
#   1. build the extension with its CUDA kernels (attnbench build ccnet),
#   2. run the CUDA-marked tests of tests/test_ccnet_ext.py,
#   3. run the ccnet suite on CUDA (quick profile, float64/float32/float16/bfloat16).
# Logs and results go under OUTDIR:
#   gpu_check.log (everything), env.log, build.log, pytest_cuda.log, suite.log,
#   ccnet_cuda/ (checks.csv, perf.csv, report.md), suite_ccnet_cuda/suite.toml (the suite that ran).
# Exits non-zero, saying why, when no GPU or no CUDA torch is present or any step fails.
#
# Usage: bash scripts/gpu_check.sh OUTDIR        (PYTHON=... to choose the interpreter)
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash scripts/gpu_check.sh OUTDIR" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
exec > >(tee "$OUT/gpu_check.log") 2>&1

fail() {
  echo "GPU CHECK FAILED: $*" >&2
  exit 1
}

echo "== 0. environment"
{ command -v nvidia-smi >/dev/null && nvidia-smi; } > "$OUT/env.log" 2>&1 || echo "nvidia-smi not available" >> "$OUT/env.log"
"$PY" - >> "$OUT/env.log" 2>&1 <<'EOF' || { cat "$OUT/env.log"; fail "no usable CUDA GPU (see env.log)"; }
import sys
import torch
print("torch", torch.__version__, "| built with CUDA", torch.version.cuda, "| cuda available", torch.cuda.is_available())
if torch.version.cuda is None:
    sys.exit("this torch is a CPU-only build (torch.version.cuda is None): install a CUDA build of torch")
if not torch.cuda.is_available():
    sys.exit("torch.cuda.is_available() is False: no GPU visible (driver, CUDA_VISIBLE_DEVICES?)")
print("device 0:", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
EOF
tail -n 3 "$OUT/env.log"
command -v nvcc >/dev/null || [ -n "${CUDA_HOME:-}" ] || fail "nvcc not found (PATH or CUDA_HOME): the CUDA kernels cannot be built"

echo "== 1. build (C++ and CUDA kernels)"
"$PY" -m attnbench.cli build ccnet --verbose > "$OUT/build.log" 2>&1 || { tail -n 40 "$OUT/build.log"; fail "build failed (build.log)"; }
tail -n 1 "$OUT/build.log"
"$PY" -c "
from impls.ccnet import ext
ext.ops()
assert ext.has_cuda_kernels(), 'the extension loaded without CUDA kernels (was it built with a CUDA torch and nvcc?)'
print('CUDA kernels registered for', ', '.join(ext.OPS))
" || fail "CUDA kernels missing"

echo "== 2. CUDA tests"
set +e
"$PY" -m pytest -m cuda tests/test_ccnet_ext.py -q -rs -p no:cacheprovider > "$OUT/pytest_cuda.log" 2>&1
tests_rc=$?
set -e
tail -n 15 "$OUT/pytest_cuda.log"
[ "$tests_rc" -eq 0 ] || fail "CUDA tests failed (pytest exit $tests_rc, pytest_cuda.log)"
grep -q " passed" "$OUT/pytest_cuda.log" || fail "no CUDA test ran (pytest_cuda.log)"

echo "== 3. suite on CUDA: quick profile in float64, float32, float16, bfloat16"
SUITE="$OUT/suite_ccnet_cuda"
mkdir -p "$SUITE"
"$PY" - "$ROOT/suites/ccnet/suite.toml" "$SUITE/suite.toml" <<'EOF'
import sys
text = open(sys.argv[1]).read()
quick = text.index("[profiles.quick]")
head, tail = text[:quick], text[quick:]
old = 'dtypes = ["float64", "float32"]\ndevices = ["cpu"]'
assert old in tail, "suites/ccnet/suite.toml: [profiles.quick] dtypes/devices lines changed; update gpu_check.sh"
tail = tail.replace(old, 'dtypes = ["float64", "float32", "float16", "bfloat16"]\ndevices = ["cuda"]', 1)
head = head.replace('name = "ccnet"', 'name = "ccnet_cuda"', 1)
open(sys.argv[2], "w").write(head + tail)
EOF
set +e
"$PY" -m attnbench.cli run "$SUITE" --device cuda --out "$OUT/ccnet_cuda" --quiet > "$OUT/suite.log" 2>&1
run_rc=$?
set -e
tail -n 20 "$OUT/suite.log"
[ -f "$OUT/ccnet_cuda/report.md" ] || fail "the suite wrote no report (suite.log)"
"$PY" - "$OUT/ccnet_cuda/checks.csv" <<'EOF' || fail "ext did not run on CUDA (checks.csv)"
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["impl"] == "ext" and r["device"] == "cuda"]
ran = [r for r in rows if r["status"] != "skip"]
bad = [r for r in rows if r["status"] in ("fail", "error")]
print(f"ext on cuda: {len(rows)} rows, {len(ran)} ran, {len(bad)} failed/errored")
for r in bad[:20]:
    print(" ", r["status"], r["check"], r["case"], r["dtype"], r["detail"][:200])
sys.exit(0 if ran and not bad else 1)
EOF
[ "$run_rc" -eq 0 ] || fail "attnbench run exited $run_rc (suite.log; see $OUT/ccnet_cuda/report.md)"
echo "GPU CHECK PASSED: results in $OUT"
