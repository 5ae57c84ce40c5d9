#!/usr/bin/env bash
# Sets up .venv (requirements.txt only) and runs the scale ablation on the built-in synthetic data:
# no SPP, SPP single-size and multi-size; crop and full-image test beside the training-subset error,
# test-size sweep; prints the report. Extra arguments go to sppnet (e.g. --seeds 3, --extended).
set -euo pipefail
cd "$(dirname "$0")/.."
export SPPNET_JOB_STARTED=${SPPNET_JOB_STARTED:-$(date +%s)}  # the report's wall time includes the set-up
bash scripts/setup.sh
exec .venv/bin/sppnet ablation --workdir "${WORKDIR:-runs/scale_ablation}" "$@"
