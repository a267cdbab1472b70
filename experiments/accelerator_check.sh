#!/usr/bin/env bash
# The device check on a GPU/TPU machine (< 10 min on one H200): train + inference benches and
# a 200-step SST-2 fine-tune; results in OUT_DIR/accelerator_check.{json,md}.
#   experiments/accelerator_check.sh OUT_DIR [--budget_s 420] [--glue_dir DIR] [--smoke]
# WHEELS=dir installs the Python wheels in it first (a machine without the package's deps).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: experiments/accelerator_check.sh OUT_DIR [options]}"
shift
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# One process benches while the fine-tune runs in another: no up-front grab of GPU memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
python3 experiments/accelerator_check.py --out "$out" "$@"
