#!/usr/bin/env bash
# The GPU check on the device machine, run from the repository root: installs the carried wheels
# (.whl: duckdb, grad-cam, ttach, pydicom, which the machine's image lacks), points the project at
# the carried data (.devdata/cxr, .devdata/cxr-external; bench/gpu_carry.py builds them), then runs
# bench/gpu_check.py, which keeps to its own budget (8 min) and writes one summary
# ($OUT/gpu_check.md when $OUT is set). Arguments go to gpu_check.py; `--dry-run` runs every step
# on the CPU at tiny sizes. `--exec CMD ARGS...` runs CMD in the same environment instead (the
# resumed `paper` commands of bench/RESULTS.md). $PYTHON picks the interpreter (default python3).
set -u
cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then  # installed once per machine: a warm machine keeps /tmp/site
  if ! ls .whl | cmp -s - /tmp/site/.cxr-wheels; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && ls .whl >/tmp/site/.cxr-wheels
  fi
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -d .devdata/cxr ]; then export CXR_DATA=${CXR_DATA:-$PWD/.devdata/cxr}; fi
if [ -d .devdata/cxr-external ]; then export CXR_EXTERNAL=${CXR_EXTERNAL:-$PWD/.devdata/cxr-external}; fi
export CXR_CACHE=${CXR_CACHE:-/tmp/cxr-cache}
if [ "${1:-}" = --exec ]; then
  shift
  exec "$@"
fi
exec "$PYTHON" bench/gpu_check.py "$@"
