"""Drawing detections: which to draw (:func:`select_drawn`), drawing them (:func:`draw_detections`),
and one image file through a trained workdir (:func:`detect_image`)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from sppnet_jax.data import decode


def select_drawn(scores: np.ndarray, top_k: int | None = 10,
                 score_threshold: float | None = None) -> tuple[np.ndarray, str]:
  """Which detections to draw, best first, and a sentence saying how many and why not more.

  The ``top_k`` best scores (``None``: no cap) among those above ``score_threshold``
  (``None``: no threshold); ties keep the detection order.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  if top_k is not None and top_k < 0:
    raise ValueError(f"top_k must be >= 0 or None; got {top_k}")
  order = np.argsort(-scores, kind="stable")
  above = order if score_threshold is None else order[scores[order] > score_threshold]
  shown = above if top_k is None else above[:top_k]
  n = len(scores)
  if n == 0:
    return shown, "no detections (no proposal window scored), so nothing was drawn"
  limits = []
  if score_threshold is not None and len(above) < n:
    limits.append(f"{len(above)} score above score_threshold={score_threshold:g}")
  if top_k is not None and len(above) > top_k:
    limits.append(f"top_k={top_k}")
  why = f" ({'; '.join(limits)})" if limits else ""
  if len(shown):
    why += f", scores {scores[shown[0]]:.3g} to {scores[shown[-1]]:.3g}"
  return shown, f"{n} detections; drew {len(shown)}{why}"


def draw_detections(image: np.ndarray, det: dict, names: Sequence[str], shown: Sequence[int],
                    out_png: str | os.PathLike) -> None:
  """Draws the boxes ``shown`` of ``det`` on ``image``, each labelled with its class and score, into ``out_png``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
  ax.imshow(image)
  ax.set_axis_off()
  colours = plt.get_cmap("tab20")
  for i in shown:
    x1, y1, x2, y2 = det["boxes"][i]
    c = colours(int(det["labels"][i]) % 20)
    ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, edgecolor=c, linewidth=2))
    ax.text(x1, y1 - 2, f"{names[det['labels'][i]]} {det['scores'][i]:.2f}", color="white", fontsize=8,
            bbox=dict(facecolor=c, alpha=0.8, pad=1, edgecolor="none"))
  fig.subplots_adjust(0, 0, 1, 1)
  fig.savefig(out_png)
  plt.close(fig)


def detect_image(workdir: str | os.PathLike, image_path: str | os.PathLike, out_png: str | os.PathLike,
                 score_threshold: float | None = None, proposals: np.ndarray | None = None,
                 top_k: int | None = 10) -> dict:
  """Detects objects in one image file with a trained workdir and draws them into ``out_png``.

  The ``top_k`` best-scoring detections (above ``score_threshold`` when one is given) are drawn
  with their class and SVM score (:func:`select_drawn`); a class without an SVM has none. Returns the detections (``boxes``,
  ``scores``, ``labels`` 0..K-1, ``names``), ``drawn`` (their indices, best first) and
  ``summary`` (how many were drawn, why not more, and where).
  """
  from sppnet_jax.detection.data import check_image
  from sppnet_jax.detection.system import DetectionSystem
  name = os.fspath(image_path)
  # A missing, broken or too small file is refused, by its name, before anything is loaded.
  image = check_image(decode.decode_image_file(image_path), name)
  system = DetectionSystem.restore(workdir)
  det = system.detect(image, proposals, name=name)
  shown, summary = select_drawn(det["scores"], top_k, score_threshold)
  draw_detections(image, det, system.class_names, shown, out_png)
  return {**det, "names": [system.class_names[k] for k in det["labels"]], "drawn": shown,
          "summary": f"{summary}; drawn into {os.fspath(out_png)}"}
