#!/usr/bin/env bash
# Creates .venv-bench (once) for `sppnet bench` against torchvision and OpenCV: the pinned project requirements,
# torch/torchvision/opencv-contrib from requirements-bench.txt and the package itself (editable, no deps), then
# checks that the set is consistent (pip check) and that jax and torchvision import side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-bench
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e . 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -c "import jax, torch, torchvision, cv2, sppnet_jax; from torchvision.ops import roi_pool, nms; \
cv2.ximgproc.segmentation.createSelectiveSearchSegmentation; \
print('bench env: jax', jax.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'opencv', cv2.__version__)" \
  || { echo "setup_bench failed: $VENV does not import jax, torchvision and OpenCV together; see the output above." >&2; exit 1; }
