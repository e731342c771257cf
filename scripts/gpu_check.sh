#!/usr/bin/env bash
# GPU smoke check at the paper's size: about 10 minutes on one H200 (benchmarks/gpu_check.py says what it measures).
#
#   scripts/gpu_check.sh --out gpu_check.json     # paper size on cuda:0, the figures also as JSON
#   scripts/gpu_check.sh --tiny                   # tiny, on whatever device there is (seconds on a CPU)
#   GPU_CHECK_TINY=1 scripts/gpu_check.sh         # the same
#   scripts/gpu_check.sh --out results.json --device cuda:1 --skip detector
#
# Python: $PYTHON, else the repository's .venv, else python3 on the PATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
  py=.venv/bin/python
else
  py=python3
fi
case "${GPU_CHECK_TINY:-}" in
  1|true|yes) set -- --tiny "$@" ;;
esac
exec "$py" benchmarks/gpu_check.py "$@"
