"""Selective search object proposals ("fast" mode, as R-CNN and SPP-net used) and proposal I/O.

Recipe (Uijlings et al., IJCV 2013; the R-CNN/SPP-net ``selective_search_boxes.m`` fast mode):

* colour spaces {HSV, Lab} x Felzenszwalb-Huttenlocher segmentations with k in {50, 100}
  (``skimage.segmentation.felzenszwalb(colour_image, scale=k, sigma=0.8, min_size=k)``) x
  similarity sets {C+T+S+F, T+S+F}: 8 hierarchies.
* Each hierarchy greedily merges the most similar pair of *adjacent* regions (regions sharing
  a 4-connected pixel border) until one region is left; every initial and merged region gives
  its bounding box.
* Similarities, each in [0, 1] and summed over the enabled ones:
  colour (C): intersection of 75-bin histograms (25 bins per channel of the colour image,
  L1-normalised over all 75); texture (T): intersection of 240-bin histograms (see below);
  size (S): ``1 - (size_i + size_j) / image_size``; fill (F):
  ``1 - (bbox_area_ij - size_i - size_j) / image_size``. A merged region's histograms are the
  size-weighted average of its parts'.
* Ranking: a box created at hierarchy position ``p`` (``p = 1`` for the final, whole-image
  region, larger for earlier merges, largest for the initial regions) gets priority
  ``p * u`` with ``u ~ U[0, 1)`` from a seeded generator; boxes of all hierarchies are sorted by
  ascending priority (stable).
* Then boxes whose inclusive width ``x2 - x1 + 1`` *or* height ``y2 - y1 + 1`` is below
  ``min_box_size`` (20) are dropped, and duplicates are removed keeping the best-ranked copy.

Texture (a documented approximation of the original SIFT-like measure): for each channel of
the colour image, Gaussian derivatives (sigma 1) are steered to 8 orientations
``theta = k * 45 deg``; at each pixel the positive part of each oriented response is binned into
10 equal bins over ``[0, max gradient magnitude of that channel]``; pixels where the oriented
response is not positive do not vote for that orientation. 3 channels x 8 orientations x 10
bins = 240 bins, L1-normalised.

Colour images are 8-bit: HSV is scaled from [0, 1] to [0, 255]; Lab maps L from [0, 100] to
[0, 255] and a, b by +128 (clipped to [0, 255]). They are passed as uint8 to skimage, which
rescales the image and ``scale`` consistently with the reference 0-255 implementation.

Input images: any array :func:`sppnet_jax.data.decode.to_rgb_uint8` accepts (grey, grey + alpha,
RGB, RGBA; 8- or 16-bit integers, bool, floats), converted under that module's one policy (alpha
composited over white, 16-bit divided by 257). Images with a side shorter than ``min_box_size``
give an empty ``(0, 4)`` array.
"""

from __future__ import annotations

import heapq
import os
from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hsv, rgb2lab
from skimage.segmentation import felzenszwalb
from skimage.transform import resize

from sppnet_jax.data.decode import to_rgb_uint8
from sppnet_jax.detection.boxes import as_boxes, iou_matrix

FAST_KS = (50, 100)
FAST_COLOUR_SPACES = ("hsv", "lab")
FAST_STRATEGIES = ("CTSF", "TSF")
COLOUR_BINS = 25
TEXTURE_ORIENTATIONS = 8
TEXTURE_BINS = 10


def colour_image(rgb: np.ndarray, space: str) -> np.ndarray:
  """``rgb`` (H, W, 3) uint8 in the colour space ``space`` ('hsv', 'lab' or 'rgb'), as uint8."""
  space = space.lower()
  if space == "rgb":
    return rgb
  if space == "hsv":
    out = rgb2hsv(rgb) * 255.0
  elif space == "lab":
    lab = rgb2lab(rgb)
    out = np.stack([lab[..., 0] * 2.55, lab[..., 1] + 128.0, lab[..., 2] + 128.0], axis=-1)
  else:
    raise ValueError(f"unknown colour space {space!r}; use 'hsv', 'lab' or 'rgb'.")
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- region features

def _texture_codes(img: np.ndarray) -> np.ndarray:
  """Per-pixel texture bin codes, (H*W, 3*4) int32 in [0, 240), or 240 where no vote.

  Orientation ``k + 4`` is orientation ``k`` turned by 180 degrees, so its response is exactly the
  negated one: of each such pair at most the one with a positive response votes, and one code per
  pair and channel holds that vote (half the codes of one per orientation, the same histogram).
  """
  h, w, c = img.shape
  half = TEXTURE_ORIENTATIONS // 2
  no_vote = c * TEXTURE_ORIENTATIONS * TEXTURE_BINS
  codes = np.empty((h * w, c * half), np.int32)
  angles = (np.arange(half) * (2 * np.pi / TEXTURE_ORIENTATIONS)).astype(np.float32)
  for ch in range(c):
    x = img[:, :, ch].astype(np.float32)
    gx = ndimage.gaussian_filter(x, 1.0, order=(0, 1)).reshape(-1)
    gy = ndimage.gaussian_filter(x, 1.0, order=(1, 0)).reshape(-1)
    top = float(np.sqrt(gx * gx + gy * gy).max())
    resp = np.cos(angles)[None, :] * gx[:, None] + np.sin(angles)[None, :] * gy[:, None]  # float32
    bins = np.minimum((np.abs(resp) * np.float32(TEXTURE_BINS / max(top, 1e-12))).astype(np.int32), TEXTURE_BINS - 1)
    orientation = np.where(resp > 0, np.arange(half, dtype=np.int32), np.arange(half, dtype=np.int32) + half)
    codes[:, ch * half:(ch + 1) * half] = np.where(
        resp != 0, (ch * TEXTURE_ORIENTATIONS + orientation) * TEXTURE_BINS + bins, no_vote)
  return codes


def _histograms(labels: np.ndarray, num: int, codes: np.ndarray, bins: int) -> np.ndarray:
  """Per-region L1-normalised histograms from per-pixel codes in [0, bins] via one bincount; code ``bins``
  is a spare column for pixels without a vote (texture), dropped before normalising."""
  flat = labels.reshape(-1, 1).astype(np.int32) * np.int32(bins + 1) + codes
  hist = np.bincount(flat.reshape(-1), minlength=num * (bins + 1)).reshape(num, bins + 1)[:, :bins]
  hist = hist.astype(np.float64)
  total = hist.sum(axis=1, keepdims=True)
  return hist / np.maximum(total, 1e-12)


def region_adjacency(labels: np.ndarray) -> np.ndarray:
  """Unique pairs ``(i, j)``, ``i < j``, of labels that touch horizontally or vertically. (E, 2) int64."""
  num = int(labels.max()) + 1
  pairs = []
  for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
    diff = a != b
    lo, hi = np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])
    pairs.append(lo.astype(np.int64) * num + hi)
  keys = np.unique(np.concatenate(pairs))
  return np.stack([keys // num, keys % num], axis=1)


def _region_boxes(labels: np.ndarray, num: int) -> np.ndarray:
  boxes = np.zeros((num, 4), np.float64)
  for r, sl in enumerate(ndimage.find_objects(labels + 1, max_label=num)):
    boxes[r] = (sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1)
  return boxes


# ---------------------------------------------------------------------------- grouping

def _parse_strategy(strategy: str) -> tuple[bool, bool, bool, bool]:
  s = strategy.upper().replace("+", "")
  if not s or set(s) - set("CTSF"):
    raise ValueError(f"strategy {strategy!r} must be a non-empty combination of the letters C (colour), "
                     "T (texture), S (size), F (fill), e.g. 'CTSF' or 'TSF'.")
  return "C" in s, "T" in s, "S" in s, "F" in s


def hierarchical_grouping(sizes: np.ndarray, boxes: np.ndarray, colour: np.ndarray, texture: np.ndarray,
                          pairs: np.ndarray, image_size: int, strategy: str = "CTSF") -> tuple[np.ndarray, np.ndarray]:
  """Greedy merging of adjacent regions by similarity; one selective search hierarchy.

  Args:
    sizes: (R,) pixel counts. boxes: (R, 4) inclusive bounding boxes. colour, texture: (R, Bc),
      (R, Bt) L1-normalised histograms. pairs: (E, 2) adjacent region pairs.
    image_size: H * W. strategy: letters of the enabled similarities, e.g. 'CTSF'.

  Returns:
    boxes (R + merges, 4) in creation order (initial regions first) and their hierarchy positions
    (1 = last merge, i.e. the top of the hierarchy).
  """
  use_c, use_t, use_s, use_f = _parse_strategy(strategy)
  num = sizes.shape[0]
  cap = 2 * num - 1
  size = np.zeros(cap); size[:num] = sizes
  box = np.zeros((cap, 4)); box[:num] = boxes
  # The enabled histograms side by side: the sum of the colour and texture intersections is one
  # intersection over the joined bins, and a merge averages them in one operation.
  parts = [h for h, used in ((colour, use_c), (texture, use_t)) if used]
  hist = np.zeros((cap, sum(h.shape[1] for h in parts)))
  if parts:
    hist[:num] = np.concatenate(parts, axis=1)
  inv = 1.0 / float(image_size)

  def similarity(i: int | np.ndarray, j: np.ndarray) -> np.ndarray:
    s = np.minimum(hist[i], hist[j]).sum(axis=-1) if parts else np.zeros(np.shape(j))
    if use_s:
      s += 1.0 - (size[i] + size[j]) * inv
    if use_f:
      bw = np.maximum(box[i, 2], box[j, 2]) - np.minimum(box[i, 0], box[j, 0]) + 1.0
      bh = np.maximum(box[i, 3], box[j, 3]) - np.minimum(box[i, 1], box[j, 1]) + 1.0
      s += 1.0 - (bw * bh - size[i] - size[j]) * inv
    return s

  neighbours: list[set[int]] = [set() for _ in range(cap)]
  for a, b in pairs.tolist():
    neighbours[a].add(b)
    neighbours[b].add(a)
  sims = similarity(pairs[:, 0], pairs[:, 1]) if len(pairs) else np.zeros(0)
  heap = [(-s, a, b) for s, (a, b) in zip(sims.tolist(), pairs.tolist())]
  heapq.heapify(heap)
  alive = np.zeros(cap, bool); alive[:num] = True
  t = num
  while heap:
    _, i, j = heapq.heappop(heap)
    if not (alive[i] and alive[j]):
      continue
    wi, wj = size[i], size[j]
    size[t] = wi + wj
    box[t] = (min(box[i, 0], box[j, 0]), min(box[i, 1], box[j, 1]), max(box[i, 2], box[j, 2]),
              max(box[i, 3], box[j, 3]))
    if parts:
      hist[t] = (wi * hist[i] + wj * hist[j]) / size[t]
    alive[i] = alive[j] = False
    alive[t] = True
    nbrs = (neighbours[i] | neighbours[j]) - {i, j}
    for n in nbrs:
      neighbours[n].discard(i)
      neighbours[n].discard(j)
      neighbours[n].add(t)
    neighbours[t] = nbrs
    neighbours[i] = neighbours[j] = set()
    if nbrs:
      idx = np.fromiter(nbrs, np.int64, len(nbrs))
      idx.sort()
      for s, n in zip(similarity(t, idx).tolist(), idx.tolist()):
        heapq.heappush(heap, (-s, n, t))
    t += 1
  positions = t - np.arange(t)
  return box[:t], positions.astype(np.float64)


# ---------------------------------------------------------------------------- selective search

def selective_search(image: np.ndarray, ks: Sequence[int] = FAST_KS,
                     colour_spaces: Sequence[str] = FAST_COLOUR_SPACES,
                     strategies: Sequence[str] = FAST_STRATEGIES, sigma: float = 0.8,
                     min_box_size: int = 20, seed: int = 0, max_side: int | None = None) -> np.ndarray:
  """Selective search proposals for one image; the defaults are the paper's fast mode.

  Args:
    image: (H, W[, C]) image, see the module docstring for accepted layouts and dtypes.
    ks: Felzenszwalb scales k; ``min_size`` is set to k as in the original.
    colour_spaces: any of 'hsv', 'lab', 'rgb'.
    strategies: similarity sets, letters from 'CTSF'.
    sigma: Felzenszwalb pre-smoothing.
    min_box_size: boxes with inclusive width or height below this are dropped.
    seed: seed of the pseudo-random ranking (same seed, same output).
    max_side: if given and the image's longer side exceeds it, search on a downscaled copy and
      scale the boxes back (the default searches at full resolution).

  Returns:
    (N, 4) float32 ranked boxes ``[x1, y1, x2, y2]``, 0-based inclusive, inside the image.
  """
  rgb = to_rgb_uint8(image, name="selective_search image")
  h, w = rgb.shape[:2]
  if min(h, w) < min_box_size:
    return np.zeros((0, 4), np.float32)
  for k in ks:
    if not k > 0:
      raise ValueError(f"every k must be positive; got ks={tuple(ks)}.")
  strategies = tuple(strategies)
  for s in strategies:
    _parse_strategy(s)
  factor = 1.0
  if max_side is not None and max(h, w) > max_side:
    factor = max(h, w) / float(max_side)
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    rgb = np.round(resize(rgb, size, order=1, anti_aliasing=True, preserve_range=True)).astype(np.uint8)
  hh, ww = rgb.shape[:2]
  all_boxes, all_pos = [], []
  for space in colour_spaces:
    img = colour_image(rgb, space)
    colour_codes = (img.reshape(-1, 3).astype(np.int32) * COLOUR_BINS) // 256 + np.arange(3, dtype=np.int32) * COLOUR_BINS
    texture_codes = _texture_codes(img)
    for k in ks:
      labels = felzenszwalb(img, scale=float(k), sigma=sigma, min_size=int(k), channel_axis=-1)
      labels = labels.astype(np.int64)
      num = int(labels.max()) + 1
      sizes = np.bincount(labels.reshape(-1), minlength=num).astype(np.float64)
      boxes = _region_boxes(labels, num)
      colour = _histograms(labels, num, colour_codes, 3 * COLOUR_BINS)
      texture = _histograms(labels, num, texture_codes, 3 * TEXTURE_ORIENTATIONS * TEXTURE_BINS)
      pairs = region_adjacency(labels)
      for strategy in strategies:
        b, p = hierarchical_grouping(sizes, boxes, colour, texture, pairs, hh * ww, strategy)
        all_boxes.append(b)
        all_pos.append(p)
  boxes = np.concatenate(all_boxes)
  priority = np.concatenate(all_pos) * np.random.default_rng(seed).random(len(boxes))
  boxes = boxes[np.argsort(priority, kind="stable")]
  if factor != 1.0:
    boxes = np.round(np.stack([boxes[:, 0] * factor, boxes[:, 1] * factor, (boxes[:, 2] + 1) * factor - 1,
                               (boxes[:, 3] + 1) * factor - 1], axis=1))
    boxes = np.clip(boxes, 0, [w - 1, h - 1, w - 1, h - 1])
  return _filter_and_dedup(boxes, min_box_size).astype(np.float32)


def _filter_and_dedup(boxes: np.ndarray, min_box_size: int) -> np.ndarray:
  """Drops boxes with inclusive width or height < ``min_box_size``; removes duplicates, keeping the first."""
  keep = ((boxes[:, 2] - boxes[:, 0] + 1) >= min_box_size) & ((boxes[:, 3] - boxes[:, 1] + 1) >= min_box_size)
  boxes = boxes[keep]
  _, first = np.unique(boxes, axis=0, return_index=True)
  return boxes[np.sort(first)]


# ---------------------------------------------------------------------------- precomputed proposals and recall

def load_precomputed(path: str | os.PathLike) -> tuple[list[np.ndarray], list[str] | None]:
  """Loads precomputed proposals; returns ``(boxes per image, image ids or None)``.

  Formats:
    * ``.mat`` as distributed with R-CNN/SPP-net (``selective_search_data/*.mat``): a cell array
      ``boxes`` of ``[y1 x1 y2 x2]`` 1-based rows and optionally ``images``; converted to 0-based
      ``[x1 y1 x2 y2]``. MATLAB v7.3 (HDF5) files are not supported by scipy.
    * ``.npz``: either a key ``boxes`` (object array of (N, 4) arrays, or one (N, 4) array) with an
      optional ``image_ids``; or one (N, 4) array per key, the key being the image id.
    * ``.npy``: one (N, 4) array (one image) or an object array of (N, 4) arrays.
    ``.npz``/``.npy`` boxes are already 0-based ``[x1 y1 x2 y2]``.
  All boxes are returned as float32 (N, 4).
  """
  path = os.fspath(path)
  ext = os.path.splitext(path)[1].lower()
  if not os.path.exists(path):
    raise FileNotFoundError(f"proposal file {path!r} does not exist.")
  if ext == ".mat":
    from scipy.io import loadmat
    try:
      data = loadmat(path)
    except NotImplementedError:
      raise ValueError(f"{path!r} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it with "
                       "save(..., '-v7') or convert it to .npz.") from None
    if "boxes" not in data:
      raise ValueError(f"{path!r} has no 'boxes' variable; found {sorted(k for k in data if not k.startswith('__'))}.")
    raw = np.asarray(data["boxes"])
    cells = list(raw.reshape(-1)) if raw.dtype == object else [raw]  # a plain matrix is one image
    boxes = [as_boxes(np.asarray(b, np.float64).reshape(-1, 4), f"boxes[{i}]")[:, [1, 0, 3, 2]] - 1.0
             for i, b in enumerate(cells)]
    ids = None
    if "images" in data:
      ids = [str(np.asarray(x).reshape(-1)[0]) if np.asarray(x).size else "" for x in np.asarray(data["images"]).reshape(-1)]
    return [b.astype(np.float32) for b in boxes], ids
  if ext == ".npz":
    with np.load(path, allow_pickle=True) as data:
      if "boxes" in data.files:
        raw = data["boxes"]
        items = list(raw) if raw.dtype == object else [raw]
        ids = [str(x) for x in data["image_ids"]] if "image_ids" in data.files else None
      else:
        ids = list(data.files)
        items = [data[k] for k in ids]
    return [as_boxes(b, f"boxes[{i}]").astype(np.float32) for i, b in enumerate(items)], ids
  if ext == ".npy":
    raw = np.load(path, allow_pickle=True)
    items = list(raw) if raw.dtype == object else [raw]
    return [as_boxes(b, f"boxes[{i}]").astype(np.float32) for i, b in enumerate(items)], None
  raise ValueError(f"unsupported proposal file extension {ext!r} in {path!r}; use .mat, .npz or .npy.")


def best_overlaps(proposals_per_image: Sequence[np.ndarray], gt_per_image: Sequence[np.ndarray]) -> np.ndarray:
  """For every GT box (images concatenated in order), the best IoU with any proposal of its image."""
  if len(proposals_per_image) != len(gt_per_image):
    raise ValueError(f"got proposals for {len(proposals_per_image)} images and GT for {len(gt_per_image)}.")
  out = []
  for props, gt in zip(proposals_per_image, gt_per_image):
    gt = as_boxes(gt, "gt")
    props = as_boxes(props, "proposals")
    if gt.shape[0] == 0:
      continue
    out.append(iou_matrix(gt, props).max(axis=1) if props.shape[0] else np.zeros(gt.shape[0]))
  return np.concatenate(out) if out else np.zeros(0)


def recall(proposals_per_image: Sequence[np.ndarray], gt_per_image: Sequence[np.ndarray],
           iou: float = 0.5) -> float:
  """Fraction of GT boxes covered by some proposal of the same image with IoU >= ``iou`` (NaN if no GT)."""
  best = best_overlaps(proposals_per_image, gt_per_image)
  return float((best >= iou).mean()) if best.size else float("nan")
