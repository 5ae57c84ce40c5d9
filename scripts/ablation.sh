#!/usr/bin/env bash
# Sets up .venv (requirements.txt only) and runs the scale ablation on the built-in synthetic data:
# no SPP, SPP single-size, multi-size and whole-image training, plus the scale-shift pair; crop and
# full-image test, test-size sweep; prints the report. Extra arguments go to sppnet (e.g. --seeds 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sppnet ablation --workdir "${WORKDIR:-runs/scale_ablation}" "$@"
