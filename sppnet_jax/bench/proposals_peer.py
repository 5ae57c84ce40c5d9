"""Selective search beside OpenCV's fast mode on real photos, with boxes drawn by hand.

The photos are scikit-image's bundled colour photos named in ``photo_boxes.json`` (next to this
module), with the objects' boxes drawn by hand. For each photo both searches run one after the
other, ``repeats`` times (medians): the project's ``detection.proposals.selective_search``
(fast mode: HSV and Lab, k 50 and 100, two strategies; Python, NumPy and scikit-image) and
OpenCV's ``ximgproc.segmentation`` selective search, ``switchToSelectiveSearchFast``, on one
thread (``cv2.setNumThreads(1)``). Recall is the fraction of drawn boxes that some proposal of
the same photo covers at IoU >= 0.5 and >= 0.7 (0-based inclusive corners, VOC "+1" areas).

OpenCV is a peer only: ``opencv-contrib-python-headless`` in ``.venv-bench`` (see
``requirements-bench.txt``), never a dependency of the project. ::

    .venv-bench/bin/python -m sppnet_jax.bench.proposals_peer --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Sequence

import numpy as np

BOXES_FILE = pathlib.Path(__file__).with_name("photo_boxes.json")


def drawn_boxes(path: pathlib.Path = BOXES_FILE) -> dict[str, np.ndarray]:
  """Photo name -> (N, 4) float32 boxes drawn by hand."""
  data = json.loads(path.read_text())["images"]
  return {name: np.asarray(list(entry["boxes"].values()), np.float32) for name, entry in data.items()}


def photo(name: str) -> np.ndarray:
  import skimage.data
  return np.asarray(getattr(skimage.data, name)())[..., :3].astype(np.uint8)


def opencv_fast(image: np.ndarray) -> np.ndarray:
  """OpenCV's selective search, fast mode, on an RGB uint8 image: (N, 4) boxes [x1, y1, x2, y2], inclusive."""
  import cv2
  search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
  search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))
  search.switchToSelectiveSearchFast()
  rects = np.asarray(search.process(), np.float32).reshape(-1, 4)
  return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:] - 1], axis=1)


def _timed(fn, image, repeats: int) -> tuple[np.ndarray, float]:
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    boxes = fn(image)
    seconds.append(time.perf_counter() - start)
  return boxes, float(np.median(seconds))


def compare(names: Sequence[str] | None = None, repeats: int = 3) -> list[dict]:
  """Per photo: boxes, seconds (median) and recall at 0.5 / 0.7 of both searches."""
  import cv2

  from sppnet_jax.detection import proposals
  cv2.setNumThreads(1)
  gt = drawn_boxes()
  rows = []
  for name in names or list(gt):
    image = photo(name)
    row = {"photo": name, "hw": list(image.shape[:2]), "drawn_boxes": len(gt[name])}
    for key, fn in (("ours", proposals.selective_search), ("opencv", opencv_fast)):
      boxes, seconds = _timed(fn, image, repeats)
      row[key] = {"boxes": int(len(boxes)), "seconds": seconds,
                  "recall_0.5": proposals.recall([boxes], [gt[name]], 0.5),
                  "recall_0.7": proposals.recall([boxes], [gt[name]], 0.7),
                  "best_iou": [round(float(v), 3) for v in proposals.best_overlaps([boxes], [gt[name]])]}
    row["opencv_over_ours_time"] = row["opencv"]["seconds"] / row["ours"]["seconds"]
    rows.append(row)
  return rows


def format_table(rows: Sequence[dict]) -> str:
  lines = ["| photo | drawn boxes | ours: boxes | s | recall 0.5 | recall 0.7 | OpenCV fast: boxes | s | recall 0.5 | "
           "recall 0.7 | OpenCV time ÷ ours |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    o, c = r["ours"], r["opencv"]
    lines.append(f"| {r['photo']} | {r['drawn_boxes']} | {o['boxes']} | {o['seconds']:.2f} | {o['recall_0.5']:.2f} | "
                 f"{o['recall_0.7']:.2f} | {c['boxes']} | {c['seconds']:.2f} | {c['recall_0.5']:.2f} | "
                 f"{c['recall_0.7']:.2f} | {r['opencv_over_ours_time']:.2f}x |")
  total = {k: sum(r[k]["seconds"] for r in rows) for k in ("ours", "opencv")}
  n = sum(r["drawn_boxes"] for r in rows)
  rec = {(k, t): sum(r[k][f"recall_{t}"] * r["drawn_boxes"] for r in rows) / n
         for k in ("ours", "opencv") for t in ("0.5", "0.7")}
  lines.append(f"| all | {n} | | {total['ours'] / len(rows):.2f} / image | {rec['ours', '0.5']:.2f} | "
               f"{rec['ours', '0.7']:.2f} | | {total['opencv'] / len(rows):.2f} / image | {rec['opencv', '0.5']:.2f} | "
               f"{rec['opencv', '0.7']:.2f} | {total['opencv'] / total['ours']:.2f}x |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  import cv2

  from sppnet_jax.timing import environment, write_results
  rows = compare(repeats=args.repeats)
  text = write_results(args.out, "proposals_opencv_cpu", "Selective search beside OpenCV's fast mode",
                       dict(environment(), opencv=cv2.__version__), format_table(rows), rows)
  print(text)
  return text


if __name__ == "__main__":
  main()
