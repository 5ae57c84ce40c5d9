"""Spatial pyramid pooling over whole maps and over regions of interest.

Bin rule (the paper's appendix; identical to ``torch.nn.functional.adaptive_max_pool2d``):
bin ``i`` of ``n`` over a length ``L`` covers ``[floor(i*L/n), ceil((i+1)*L/n))``. Bins may
overlap, are never empty, and there are always exactly ``n`` of them, even for ``n > L``.

Output layout of one image (or one box): levels in the order given; within a level the
``n*n`` bins in row-major order; each bin's ``C`` channels contiguous. In other words a
level's ``(n, n, C)`` block flattened, then the levels concatenated.

Gradients: JAX's max splits the gradient evenly among tied maxima, where torch and Caffe
give all of it to the first arg-max. On inputs without ties the two agree exactly; on
post-ReLU maps with tied zeros the tied elements share it, not necessarily equally (``spp``
reduces rows, then columns; ``roi_spp``'s range lookups overlap), but the shares of one
output always sum to its incoming gradient.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LEVELS = (6, 3, 2, 1)


def check_levels(levels: Sequence[int]) -> tuple[int, ...]:
  """Returns ``levels`` as a tuple of positive Python ints, or raises ValueError."""
  try:
    levels = tuple(levels)
  except TypeError:
    raise ValueError(f"levels must be a sequence of positive ints such as (6, 3, 2, 1); got {levels!r}") from None
  if not levels:
    raise ValueError("levels is empty: give at least one pyramid level, e.g. (6, 3, 2, 1).")
  for n in levels:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
      raise ValueError(f"every pyramid level must be a positive int (bins per side); got {n!r} in {levels!r}.")
  return tuple(int(n) for n in levels)


def spp_output_dim(channels: int, levels: Sequence[int] = DEFAULT_LEVELS) -> int:
  """Length of the pooled vector: ``channels * sum(n*n)``."""
  return channels * sum(n * n for n in check_levels(levels))


def bin_edges(length: int, n: int) -> list[tuple[int, int]]:
  """The ``n`` half-open bins ``[floor(i*L/n), ceil((i+1)*L/n))`` over ``length``."""
  return [((i * length) // n, -((-(i + 1) * length) // n)) for i in range(n)]


def _check_features(x, name: str = "x") -> None:
  if getattr(x, "ndim", None) != 4:
    raise ValueError(f"{name} must be a (B, H, W, C) feature map; got shape {getattr(x, 'shape', None)}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be floating point (float32 or bfloat16); got {x.dtype}. Cast it with x.astype(jnp.float32).")
  if min(x.shape[1:3]) < 1:
    raise ValueError(f"{name} has an empty spatial extent {x.shape[1:3]}; pooling needs at least a 1x1 map.")


def spp(x: jax.Array, levels: Sequence[int] = DEFAULT_LEVELS) -> jax.Array:
  """Spatial pyramid max pooling of whole maps.

  Args:
    x: (B, H, W, C) floating feature maps.
    levels: bins per side of each pyramid level, e.g. (6, 3, 2, 1).

  Returns:
    (B, C * sum(n*n)) pooled features in the layout of the module docstring.

  The bin bounds are Python ints at trace time, so this is a set of static slices: exact,
  and compiled once per input shape. Each level pools rows first, then columns.
  """
  levels = check_levels(levels)
  _check_features(x)
  batch, height, width, channels = x.shape
  pooled = []
  for n in levels:
    rows = jnp.stack([x[:, s:e].max(axis=1) for s, e in bin_edges(height, n)], axis=1)
    cells = jnp.stack([rows[:, :, s:e].max(axis=2) for s, e in bin_edges(width, n)], axis=2)
    pooled.append(cells.reshape(batch, n * n * channels))
  return jnp.concatenate(pooled, axis=-1)


def sliding_window_spp(x: jax.Array, levels: Sequence[int] = DEFAULT_LEVELS) -> list[jax.Array]:
  """The paper's fixed-size training rule: window ceil(a/n), stride floor(a/n), no padding.

  Kept for the ablation and for comparison only; ``spp`` is the default. This rule gives
  n bins per side only for some map sizes: on a 13x13 map it matches ``spp`` for
  n in {6, 4, 3, 2, 1}, but on the 10x10 map of a 180 input, n = 6 gives window 2 and
  stride 1, i.e. 9x9 bins. Returns one (B, m, m', C) array per level, m and m' being
  whatever number of windows the rule produces.
  """
  levels = check_levels(levels)
  _check_features(x)
  _, height, width, _ = x.shape
  out = []
  for n in levels:
    window = (-(-height // n), -(-width // n))
    stride = (max(height // n, 1), max(width // n, 1))
    out.append(jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), "VALID"))
  return out


def _floor_log2(length: int) -> np.ndarray:
  """Table t with t[L] = floor(log2(L)) for L in 1..length (t[0] = 0)."""
  table = np.zeros(length + 1, np.int32)
  table[1:] = np.floor(np.log2(np.arange(1, length + 1))).astype(np.int32)
  return table


def _shift_max(t: jax.Array, axis: int, step: int) -> jax.Array:
  """max(t[i], t[i + step]) along ``axis``; the last ``step`` entries are never queried."""
  size = t.shape[axis]
  ahead = jnp.concatenate([jax.lax.slice_in_dim(t, step, size, axis=axis),
                           jax.lax.slice_in_dim(t, size - step, size, axis=axis)], axis=axis)
  return jnp.maximum(t, ahead)


def sparse_table(x: jax.Array) -> jax.Array:
  """2-D sparse table of range maxima.

  For x of shape (B, H, W, C) returns T of shape (B, KH, KW, H, W, C) with
  ``T[b, i, j, y, x] = max(x[b, y:y + 2**i, x:x + 2**j])`` wherever that range lies inside
  the map; KH = floor(log2 H) + 1. Any rectangle maximum is then the max of four entries.
  """
  _, height, width, _ = x.shape
  rows = [x]
  for i in range(1, int(_floor_log2(height)[height]) + 1):
    rows.append(_shift_max(rows[-1], 1, 2 ** (i - 1)))
  table = []
  for r in rows:
    cols = [r]
    for j in range(1, int(_floor_log2(width)[width]) + 1):
      cols.append(_shift_max(cols[-1], 2, 2 ** (j - 1)))
    table.append(jnp.stack(cols, axis=1))
  return jnp.stack(table, axis=1)


def _validate_boxes_eagerly(boxes, valid) -> None:
  if isinstance(boxes, jax.core.Tracer) or isinstance(valid, jax.core.Tracer):
    return
  b = np.asarray(boxes)
  v = np.asarray(valid, bool)
  bad = v & ((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]))
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
        f"box {where} = {b[where].tolist()} is inverted: boxes are [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2 "
        "(inclusive feature-map cells). Mark padding rows invalid instead of giving them inverted boxes.")


def roi_spp(features: jax.Array, boxes: jax.Array, valid: jax.Array,
            levels: Sequence[int] = DEFAULT_LEVELS) -> jax.Array:
  """Spatial pyramid pooling of many boxes per image, with static shapes.

  Args:
    features: (B, H, W, C) floating feature maps.
    boxes: (B, R, 4) integer boxes [x1, y1, x2, y2] in feature-map cells, inclusive.
    valid: (B, R) bool; rows with False are padding and come out as zeros.
    levels: pyramid levels.

  Returns:
    (B, R, C * sum(n*n)). For a valid box, row r equals
    ``spp(features[b:b+1, y1:y2+1, x1:x2+1], levels)``.

  Boxes partly outside the map are clipped to it; a box wholly outside is clamped onto
  the nearest border row/column (the authors' detection code clamps its indices the same
  way). Concrete inverted boxes raise; under ``jit`` an inverted box is read as
  ``x2 = max(x1, x2)``.

  Cost does not grow with box area: a sparse table of range maxima (built once per map)
  answers each bin with four lookups, so R boxes cost O(R * bins * C) after an
  O(H W log H log W C) build. Boxes are traced values: new boxes of the same padded
  shape never recompile.
  """
  levels = check_levels(levels)
  _check_features(features, "features")
  if getattr(boxes, "ndim", None) != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
    raise ValueError(f"boxes must be (B, R, 4) with B = {features.shape[0]}; got shape {getattr(boxes, 'shape', None)}.")
  if not jnp.issubdtype(boxes.dtype, jnp.integer):
    raise TypeError(f"boxes must be integer feature-map cells; got {boxes.dtype}. Project pixel windows with "
                    "sppnet_jax.ops.project_boxes first.")
  if getattr(valid, "shape", None) != boxes.shape[:2]:
    raise ValueError(f"valid must be (B, R) = {boxes.shape[:2]}; got {getattr(valid, 'shape', None)}.")
  _validate_boxes_eagerly(boxes, valid)

  batch, height, width, channels = features.shape
  num_boxes = boxes.shape[1]
  table = sparse_table(features)
  k_h, k_w = table.shape[1:3]
  flat = table.reshape(-1, channels)
  log2 = jnp.asarray(_floor_log2(max(height, width)))

  boxes = boxes.astype(jnp.int32)
  x1 = jnp.clip(boxes[..., 0], 0, width - 1)
  y1 = jnp.clip(boxes[..., 1], 0, height - 1)
  x2 = jnp.maximum(jnp.clip(boxes[..., 2], 0, width - 1), x1)
  y2 = jnp.maximum(jnp.clip(boxes[..., 3], 0, height - 1), y1)
  image = jnp.arange(batch, dtype=jnp.int32)[:, None]

  def ranges(start, end, n):
    """Per box, the two overlapping power-of-two windows covering each of n bins."""
    extent = (end - start + 1)[..., None]
    i = jnp.arange(n, dtype=jnp.int32)
    lo = start[..., None] + (i * extent) // n
    hi = start[..., None] - ((-(i + 1) * extent) // n)
    k = log2[hi - lo]
    return k, lo, hi - (1 << k)  # (B, R, n) each

  pooled = []
  for n in levels:
    ky, ya, yb = ranges(y1, y2, n)
    kx, xa, xb = ranges(x1, x2, n)
    base = (image[..., None] * k_h + ky)[..., :, None] * k_w + kx[..., None, :]  # (B, R, n, n)
    base = base * height
    rows = jnp.stack([ya, yb], -1)[..., :, None, :, None]  # (B, R, n, 1, 2, 1)
    cols = jnp.stack([xa, xb], -1)[..., None, :, None, :]  # (B, R, 1, n, 1, 2)
    index = (base[..., None, None] + rows) * width + cols  # (B, R, n, n, 2, 2)
    cell_max = jnp.take(flat, index.reshape(batch, num_boxes, n, n, 4), axis=0).max(axis=-2)
    pooled.append(cell_max.reshape(batch, num_boxes, n * n * channels))
  out = jnp.concatenate(pooled, axis=-1)
  return jnp.where(valid[..., None], out, jnp.zeros((), out.dtype))


def padded_spp(features: jax.Array, valid_hw: jax.Array, levels: Sequence[int] = DEFAULT_LEVELS) -> jax.Array:
  """Whole-image SPP over a padded batch: image b pools only rows [0, h_b) and columns [0, w_b).

  Args:
    features: (B, H, W, C) maps of images of different sizes padded to one shape.
    valid_hw: (B, 2) integer (h, w) valid extent of each map, 1 <= h <= H, 1 <= w <= W.

  Returns:
    (B, C * sum(n*n)), row b equal to ``spp(features[b:b+1, :h_b, :w_b])``. The extents are
    traced, so every image of a padding bucket shares one compiled program.
  """
  valid_hw = jnp.asarray(valid_hw)
  if valid_hw.ndim != 2 or valid_hw.shape[-1] != 2:
    raise ValueError(f"valid_hw must be (B, 2) (height, width) per image; got shape {valid_hw.shape}.")
  if not isinstance(valid_hw, jax.core.Tracer) and getattr(features, "ndim", None) == 4:
    extents = np.asarray(valid_hw)
    limits = np.asarray(features.shape[1:3])
    if ((extents < 1) | (extents > limits)).any():
      raise ValueError(f"valid_hw must lie in 1..{tuple(limits.tolist())} (the padded map's height and width); "
                       f"got {extents.tolist()}.")
  h = valid_hw[:, 0].astype(jnp.int32)
  w = valid_hw[:, 1].astype(jnp.int32)
  zero = jnp.zeros_like(h)
  boxes = jnp.stack([zero, zero, w - 1, h - 1], axis=-1)[:, None]
  return roi_spp(features, boxes, jnp.ones(boxes.shape[:2], bool), levels)[:, 0]
