#!/usr/bin/env bash
# Sets up .venv and runs the scale ablation on the built-in synthetic data (no SPP, SPP single-size,
# SPP multi-size; centre-crop and full-image test), printing the table. Extra arguments go to sppnet.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sppnet ablation --workdir "${WORKDIR:-runs/scale_ablation}" "$@"
