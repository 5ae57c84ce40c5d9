#!/usr/bin/env bash
# Creates .venv (once) and installs the pinned requirements and the package.
# With --test it also installs the test requirements (pytest, and CPU torch as the pooling oracle).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REQUIREMENTS=(-r requirements.txt)
if [ "${1:-}" = "--test" ]; then
  REQUIREMENTS+=(-r requirements-test.txt)
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import jax, flax, optax, orbax.checkpoint, grain, scipy, sppnet_jax" \
  || { echo "setup failed: the environment in .venv does not import; see the pip output above." >&2; exit 1; }
