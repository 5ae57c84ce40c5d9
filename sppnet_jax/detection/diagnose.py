"""Where a trained detection system loses its mAP: proposals, or the classification of windows.

From a detection workdir's test-split feature cache and its trained system:

* **proposal recall**: the share of ground-truth objects that some proposal covers at IoU >= 0.5
  (and 0.7); an object no proposal covers can never be detected, so recall caps every AP
  (objects marked difficult are left out, as VOC's AP leaves them out);
* **window accuracy**: of the windows that overlap an object at IoU >= 0.5, the share whose
  highest SVM score is the object's class (classes without an SVM never win);
* **best-window accuracy by object size**: for each object, its best-overlapping proposal
  (IoU >= 0.5) classified by the SVMs, grouped by the object's side (square root of its area, in
  bins of ``size_bin`` pixels of the original image), so a trunk that fails on small or large
  objects shows it.

Run on a workdir that ``sppnet detect`` trained::

    python -m sppnet_jax.detection.diagnose --workdir runs/det   # writes runs/det/diagnostics.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Sequence

import numpy as np

from sppnet_jax.detection import boxes as box_ops, cache, system as system_lib


def _cached_test_images(workdir: pathlib.Path) -> list[pathlib.Path]:
  metrics = workdir / "metrics.json"
  if not metrics.exists():
    raise FileNotFoundError(f"{metrics} is missing: diagnose a workdir that 'sppnet detect' finished.")
  cache_dir = pathlib.Path(json.loads(metrics.read_text())["cache_dir"])
  paths = sorted(cache_dir.glob("test-*/*.npz"))
  if not paths:
    raise FileNotFoundError(f"{cache_dir} holds no cached test image (test-*/*.npz); rerun 'sppnet detect' on "
                            f"{workdir} to rebuild its feature cache.")
  return paths


def diagnose(workdir: str | pathlib.Path, size_bin: int = 40) -> dict:
  """The three measures of the module docstring, as a dict (counts beside every share)."""
  workdir = pathlib.Path(workdir)
  system = system_lib.DetectionSystem.restore(workdir, with_trunk=False)
  best_iou: list[float] = []
  window_right = window_count = 0
  by_size: dict[int, list[int]] = {}
  for path in _cached_test_images(workdir):
    image = cache.read_fields(path, ("windows", "pool5", "gt_boxes", "gt_labels", "gt_difficult"))
    counted = ~image["gt_difficult"].astype(bool)
    gt, labels, windows = image["gt_boxes"][counted], image["gt_labels"][counted], image["windows"]
    if not len(gt):
      continue
    if not len(windows):
      best_iou.extend([0.0] * len(gt))
      continue
    overlap = box_ops.iou_matrix(windows, gt)  # (windows, objects)
    best_iou.extend(overlap.max(axis=0).tolist())
    scores = system.window_scores(image["pool5"])
    predicted = np.where(np.isnan(scores), -np.inf, scores).argmax(axis=1)
    covering = overlap.max(axis=1) >= 0.5
    window_right += int((predicted[covering] == labels[overlap.argmax(axis=1)[covering]]).sum())
    window_count += int(covering.sum())
    for j in range(len(gt)):
      i = int(overlap[:, j].argmax())
      if overlap[i, j] < 0.5:
        continue
      side = float(np.sqrt(box_ops.box_areas(gt[j:j + 1])[0]))
      tally = by_size.setdefault(int(side // size_bin) * size_bin, [0, 0])
      tally[0] += int(predicted[i] == labels[j])
      tally[1] += 1
  best = np.asarray(best_iou)
  return {
      "objects": int(best.size),
      "proposal_recall_iou50": float((best >= 0.5).mean()) if best.size else float("nan"),
      "proposal_recall_iou70": float((best >= 0.7).mean()) if best.size else float("nan"),
      "covering_windows": window_count,
      "covering_window_accuracy": window_right / window_count if window_count else float("nan"),
      "best_window_accuracy_by_object_side": {
          f"{low}-{low + size_bin - 1} px": {"accuracy": right / n, "objects": n}
          for low, (right, n) in sorted(by_size.items())},
  }


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--size_bin", type=int, default=40)
  args = parser.parse_args(argv)
  result = diagnose(args.workdir, args.size_bin)
  text = json.dumps(result, indent=2)
  (pathlib.Path(args.workdir) / "diagnostics.json").write_text(text + "\n")
  print(text)
  return result


if __name__ == "__main__":
  main()
