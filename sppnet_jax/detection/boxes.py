"""Pixel boxes: overlap, greedy NMS, R-CNN box deltas, clipping, validation and TFDS conversion.

Convention used across the project: a box is ``[x1, y1, x2, y2]`` in 0-based, inclusive pixel
indices, so it covers ``x2 - x1 + 1`` columns and ``y2 - y1 + 1`` rows, and a one-pixel box has
``x1 == x2``. Areas and overlaps use these "+1" sizes, as the PASCAL VOC devkit and the
R-CNN/SPP-net code do. Arrays are ``(N, 4)`` float32 or float64 numpy arrays.
"""

from __future__ import annotations

import numpy as np

# Largest |log dw|, |log dh| that decode_boxes applies before exp (a 62.5x size change), so a
# wild regressor output cannot overflow.
DEFAULT_MAX_LOG_SCALE = float(np.log(1000.0 / 16.0))


def as_boxes(boxes: np.ndarray, name: str = "boxes") -> np.ndarray:
  """Returns ``boxes`` as a float ``(N, 4)`` array (float32 kept, anything else float64).

  An empty input of any shape with zero elements becomes ``(0, 4)``. Raises ValueError for any
  other shape that is not ``(N, 4)``.
  """
  arr = np.asarray(boxes)
  if arr.size == 0:
    return np.zeros((0, 4), np.float32 if arr.dtype == np.float32 else np.float64)
  if arr.ndim != 2 or arr.shape[1] != 4:
    raise ValueError(f"{name} must have shape (N, 4) as [x1, y1, x2, y2] rows; got shape {arr.shape}. "
                     "Reshape with .reshape(-1, 4) if the coordinates are flattened.")
  if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
    raise ValueError(f"{name} must be a real numeric array; got dtype {arr.dtype}.")
  return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


def box_widths_heights(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Inclusive pixel widths ``x2 - x1 + 1`` and heights ``y2 - y1 + 1``."""
  boxes = as_boxes(boxes)
  return boxes[:, 2] - boxes[:, 0] + 1.0, boxes[:, 3] - boxes[:, 1] + 1.0


def box_areas(boxes: np.ndarray) -> np.ndarray:
  """Inclusive pixel areas ``(x2 - x1 + 1) * (y2 - y1 + 1)``."""
  w, h = box_widths_heights(boxes)
  return w * h


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4).

  Uses VOC "+1" sizes: the intersection width is ``min(x2) - max(x1) + 1`` clamped at 0. Returns
  an ``(N, M)`` float64 array. Degenerate boxes with non-positive area give IoU 0 rather than NaN.
  """
  a = as_boxes(a, "a").astype(np.float64, copy=False)
  b = as_boxes(b, "b").astype(np.float64, copy=False)
  iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1.0
  ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1.0
  inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
  union = box_areas(a)[:, None] + box_areas(b)[None, :] - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
  return iou


# NMS resolves this many candidates per step (see ``nms``).
NMS_BLOCK = 32


def _suppresses(kept: np.ndarray, others: np.ndarray, threshold: float) -> np.ndarray:
  """(K, M) bool: IoU ("+1" sizes) of each ``kept`` box with each ``other`` box above ``threshold``.

  Both are (5, N) columns x1, y1, x2, y2, area; the arithmetic is the same, operation for
  operation, as one box against many, so the result does not depend on how boxes are grouped.
  """
  k, o = kept[:, :, None], others[:, None, :]
  iw = np.minimum(k[2], o[2]) - np.maximum(k[0], o[0]) + 1.0
  ih = np.minimum(k[3], o[3]) - np.maximum(k[1], o[1]) + 1.0
  inter = np.clip(iw, 0.0, None) * np.clip(ih, 0.0, None)
  union = k[4] + o[4] - inter
  iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
  return iou > threshold


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float = 0.3,
        max_keep: int | None = None) -> np.ndarray:
  """Greedy non-maximum suppression of one class's boxes (the R-CNN/SPP-net rule).

  Boxes are visited by descending score (stable: equal scores keep input order). The best
  remaining box is kept and every remaining box whose IoU with it is strictly greater than
  ``threshold`` is dropped. Returns the kept indices (int64) in the order they were kept, at
  most ``max_keep`` of them.

  The greedy pass runs ``NMS_BLOCK`` candidates at a time, vectorised: within the block the
  kept set is the fixed point of "kept unless a kept earlier box of the block suppresses it"
  (reached from "all kept" in at most the block's length of rounds, usually two or three;
  the rule fixes box i once boxes before i are fixed, so the fixed point is the greedy
  answer), then the block's kept boxes drop the remaining candidates they suppress. Same
  result as one box at a time, with far fewer numpy calls.
  """
  boxes = as_boxes(boxes).astype(np.float64, copy=False)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if scores.shape[0] != boxes.shape[0]:
    raise ValueError(f"nms got {boxes.shape[0]} boxes but {scores.shape[0]} scores; pass one score per box.")
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f"nms threshold is an IoU and must lie in [0, 1]; got {threshold}.")
  if np.isnan(scores).any():
    raise ValueError("nms scores contain NaN; remove or replace those detections first.")
  limit = boxes.shape[0] if max_keep is None else max(int(max_keep), 0)
  order = np.argsort(-scores, kind="stable")
  x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
  areas = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
  rest = np.stack([x1, y1, x2, y2, areas])[:, order]  # candidates still in play, best first
  keep: list[np.ndarray] = []
  kept_count = 0
  while order.size and kept_count < limit:
    block, rest, block_index, order = rest[:, :NMS_BLOCK], rest[:, NMS_BLOCK:], order[:NMS_BLOCK], order[NMS_BLOCK:]
    earlier = np.triu(_suppresses(block, block, threshold), k=1)  # [j, i]: j before i and j suppresses i
    kept = np.ones(block.shape[1], bool)
    while True:
      updated = ~(earlier & kept[:, None]).any(axis=0)
      if np.array_equal(updated, kept):
        break
      kept = updated
    kept_boxes = block[:, kept]
    keep.append(block_index[kept])
    kept_count += int(kept.sum())
    if order.size and kept_boxes.shape[1]:
      alive = ~_suppresses(kept_boxes, rest, threshold).any(axis=0)
      rest, order = rest[:, alive], order[alive]
  return np.concatenate(keep + [np.zeros(0, np.int64)])[:limit].astype(np.int64)


def _centres_sizes(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
  w = boxes[:, 2] - boxes[:, 0] + 1.0
  h = boxes[:, 3] - boxes[:, 1] + 1.0
  return boxes[:, 0] + 0.5 * (w - 1.0), boxes[:, 1] + 0.5 * (h - 1.0), w, h


def encode_boxes(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """R-CNN regression targets ``(dx, dy, log dw, log dh)`` that move ``proposals`` onto ``targets``.

  With ``w = x2 - x1 + 1`` and centre ``cx = (x1 + x2) / 2``: ``dx = (tcx - pcx) / pw``,
  ``dy = (tcy - pcy) / ph``, ``dw = log(tw / pw)``, ``dh = log(th / ph)``. Both inputs are
  ``(N, 4)`` and every box needs a positive width and height. Returns float64 ``(N, 4)``.
  """
  p = as_boxes(proposals, "proposals").astype(np.float64, copy=False)
  t = as_boxes(targets, "targets").astype(np.float64, copy=False)
  if p.shape != t.shape:
    raise ValueError(f"encode_boxes needs one target per proposal; got {p.shape[0]} proposals and {t.shape[0]} targets.")
  pcx, pcy, pw, ph = _centres_sizes(p)
  tcx, tcy, tw, th = _centres_sizes(t)
  if (pw <= 0).any() or (ph <= 0).any() or (tw <= 0).any() or (th <= 0).any():
    raise ValueError("encode_boxes got a box with x2 < x1 or y2 < y1 (non-positive size); "
                     "fix or drop it, e.g. with validate_boxes.")
  return np.stack([(tcx - pcx) / pw, (tcy - pcy) / ph, np.log(tw / pw), np.log(th / ph)], axis=1)


def decode_boxes(proposals: np.ndarray, deltas: np.ndarray,
                 max_log_scale: float = DEFAULT_MAX_LOG_SCALE) -> np.ndarray:
  """Inverse of :func:`encode_boxes`: applies ``(dx, dy, log dw, log dh)`` to ``proposals``.

  ``deltas`` is ``(N, 4)`` or ``(N, 4 * K)`` (one group of four per class, as a multi-class
  regressor outputs); the result has the same shape. ``log dw`` and ``log dh`` are clipped to
  ``max_log_scale`` before ``exp``. Returns float64 boxes, not clipped to any image.
  """
  p = as_boxes(proposals, "proposals").astype(np.float64, copy=False)
  d = np.asarray(deltas, np.float64)
  if d.ndim != 2 or d.shape[0] != p.shape[0] or d.shape[1] % 4 or d.shape[1] == 0:
    raise ValueError(f"decode_boxes needs deltas of shape (N, 4*K) with N = {p.shape[0]} proposals; got {d.shape}.")
  pcx, pcy, pw, ph = (v[:, None] for v in _centres_sizes(p))
  dx, dy = d[:, 0::4], d[:, 1::4]
  dw, dh = np.minimum(d[:, 2::4], max_log_scale), np.minimum(d[:, 3::4], max_log_scale)
  cx, cy = pcx + dx * pw, pcy + dy * ph
  w, h = pw * np.exp(dw), ph * np.exp(dh)
  out = np.empty_like(d)
  out[:, 0::4] = cx - 0.5 * (w - 1.0)
  out[:, 1::4] = cy - 0.5 * (h - 1.0)
  out[:, 2::4] = cx + 0.5 * (w - 1.0)
  out[:, 3::4] = cy + 0.5 * (h - 1.0)
  return out


def _check_size(height: int, width: int) -> None:
  if int(height) < 1 or int(width) < 1:
    raise ValueError(f"image size must be positive; got height={height}, width={width}.")


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """Clips ``[x1, y1, x2, y2]`` to the image: x into ``[0, width-1]``, y into ``[0, height-1]``.

  Works on ``(N, 4 * K)`` arrays too. Returns a new array of the input's float dtype.
  """
  _check_size(height, width)
  arr = np.asarray(boxes)
  if arr.ndim != 2 or arr.shape[1] % 4:
    raise ValueError(f"clip_boxes needs an (N, 4*K) array; got shape {arr.shape}.")
  arr = arr.astype(arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64, copy=True)
  arr[:, 0::2] = np.clip(arr[:, 0::2], 0, width - 1)
  arr[:, 1::2] = np.clip(arr[:, 1::2], 0, height - 1)
  return arr


def validate_boxes(boxes: np.ndarray, height: int | None = None, width: int | None = None,
                   name: str = "boxes") -> np.ndarray:
  """Checks that ``boxes`` are well-formed pixel boxes and returns them as a float ``(N, 4)`` array.

  Raises ValueError naming the first offending row for: a shape other than ``(N, 4)``; NaN or
  infinite coordinates; inverted boxes (``x2 < x1`` or ``y2 < y1``); and, when ``height`` and
  ``width`` are given, coordinates outside ``[0, width-1] x [0, height-1]``.
  """
  arr = as_boxes(boxes, name)
  if arr.shape[0] == 0:
    return arr
  bad = ~np.isfinite(arr).all(axis=1)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{name}[{i}] = {arr[i].tolist()} has NaN or infinite coordinates; "
                     "drop such rows before using the boxes.")
  bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{name}[{i}] = {arr[i].tolist()} is inverted (x2 < x1 or y2 < y1); boxes are "
                     "[x1, y1, x2, y2] with inclusive 0-based corners. If yours are [y1, x1, y2, x2] "
                     "(TFDS/R-CNN order) reorder the columns first.")
  if height is not None or width is not None:
    if height is None or width is None:
      raise ValueError("validate_boxes needs both height and width, or neither.")
    _check_size(height, width)
    bad = (arr[:, 0] < 0) | (arr[:, 1] < 0) | (arr[:, 2] > width - 1) | (arr[:, 3] > height - 1)
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(f"{name}[{i}] = {arr[i].tolist()} lies outside the {height}x{width} image "
                       f"(x must be in [0, {width - 1}], y in [0, {height - 1}]); use clip_boxes.")
  return arr


def tfds_to_pixel(boxes: np.ndarray, height: int, width: int, one_based: bool = True,
                  round_coords: bool = False) -> np.ndarray:
  """Converts TFDS normalised ``[ymin, xmin, ymax, xmax]`` to pixel ``[x1, y1, x2, y2]`` (0-based).

  The current TFDS ``voc`` builder (5.x) stores the XML's 1-based inclusive corners divided by the
  image size, so the pixel index is ``v * size - 1`` (``one_based=True``, the default). Builders
  that subtracted 1 before dividing (older TFDS voc releases) need ``one_based=False``.
  ``round_coords`` snaps to integers, which recovers VOC's integer corners exactly.
  Returns float64 ``(N, 4)``.
  """
  _check_size(height, width)
  arr = as_boxes(boxes, "normalised boxes").astype(np.float64, copy=False)
  scale = np.array([width, height, width, height], np.float64)
  out = arr[:, [1, 0, 3, 2]] * scale - (1.0 if one_based else 0.0)
  return np.round(out) if round_coords else out


def pixel_to_tfds(boxes: np.ndarray, height: int, width: int, one_based: bool = True) -> np.ndarray:
  """Inverse of :func:`tfds_to_pixel`: pixel ``[x1, y1, x2, y2]`` to normalised ``[ymin, xmin, ymax, xmax]``."""
  _check_size(height, width)
  arr = as_boxes(boxes).astype(np.float64, copy=False)
  scale = np.array([height, width, height, width], np.float64)
  return (arr[:, [1, 0, 3, 2]] + (1.0 if one_based else 0.0)) / scale
