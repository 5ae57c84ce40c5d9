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

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LEVELS = (6, 3, 2, 1)

# roi_spp pools boxes in one pass when the output is at most SINGLE_PASS_BYTES, else in
# chunks of about CHUNK_BYTES of output (the chunk's gathered entries stay in cache).
SINGLE_PASS_BYTES = 4 * 2**20
CHUNK_BYTES = 2**20
# A sparse table deeper than the map itself is built for blocks of channels of at most this size.
TABLE_BYTES = 32 * 2**20


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


def _doubled(t: jax.Array, axis: int, step: int) -> jax.Array:
  """``_shift_max`` materialised: the result goes through an optimisation barrier.

  Without it XLA fuses every doubling step into the table's consumer and evaluates a
  2**(i+j)-element max tree for each entry of table level (i, j): 225 reads per map element
  for a 4 x 4 table instead of 16 (measured 73 ms instead of 11 ms on a 43x57x256 map).
  """
  if step >= t.shape[axis]:
    return t
  return jax.lax.optimization_barrier(_shift_max(t, axis, step))


def sparse_table(x: jax.Array, depth: tuple[int, int] | None = None) -> jax.Array:
  """2-D sparse table of range maxima.

  For x of shape (B, H, W, C) returns T of shape (B, KH, KW, H, W, C) with
  ``T[b, i, j, y, x] = max(x[b, y:y + 2**i, x:x + 2**j])`` wherever that range lies inside
  the map. ``depth`` is (KH - 1, KW - 1); by default the deepest useful table,
  KH = floor(log2 H) + 1. Any rectangle maximum whose sides need no window longer than
  the table holds is then the max of four entries.
  """
  _, height, width, _ = x.shape
  if depth is None:
    depth = (int(_floor_log2(height)[height]), int(_floor_log2(width)[width]))
  rows = [x]
  for i in range(1, depth[0] + 1):
    rows.append(_doubled(rows[-1], 1, 2 ** (i - 1)))
  table = [jnp.stack(rows, axis=1)]  # (B, KH, H, W, C): every row doubling at once below
  for j in range(1, depth[1] + 1):
    table.append(_doubled(table[-1], 3, 2 ** (j - 1)))
  return jnp.stack(table, axis=2)


def level_sources(levels: Sequence[int]) -> dict[int, int | None]:
  """For each distinct level n, the finer level it is exactly derived from, or None.

  When m is a multiple of n (m = q n), bin i of n bins over any length L is the union of bins
  iq .. iq + q - 1 of m bins: both start at floor(iL/n) and end at ceil((i+1)L/n), and
  consecutive bins touch or overlap. So level n is the max over q x q blocks of level m,
  bit for bit. Each level takes the smallest such m in ``levels``; levels with none
  ("base" levels) are read from the sparse table. {6, 3, 2, 1}: 3 and 2 from 6, 1 from 2.
  """
  distinct = sorted(set(check_levels(levels)))
  return {n: next((m for m in distinct if m > n and m % n == 0), None) for n in distinct}


def _table_depth(length: int, base_levels: Sequence[int]) -> int:
  """floor(log2) of the longest bin any base level has over any box side in 1..length."""
  longest = max(e - s for side in range(1, length + 1) for n in base_levels for s, e in bin_edges(side, n))
  return int(_floor_log2(longest)[longest])


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


def _check_roi_args(features, boxes, valid) -> None:
  _check_features(features, "features")
  if getattr(boxes, "ndim", None) != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
    raise ValueError(f"boxes must be (B, R, 4) with B = {features.shape[0]}; got shape {getattr(boxes, 'shape', None)}.")
  if not jnp.issubdtype(boxes.dtype, jnp.integer):
    raise TypeError(f"boxes must be integer feature-map cells; got {boxes.dtype}. Project pixel windows with "
                    "sppnet_jax.ops.project_boxes first.")
  if getattr(valid, "shape", None) != boxes.shape[:2]:
    raise ValueError(f"valid must be (B, R) = {boxes.shape[:2]}; got {getattr(valid, 'shape', None)}.")
  _validate_boxes_eagerly(boxes, valid)


def _clipped_corners(boxes: jax.Array, height: int, width: int) -> tuple[jax.Array, ...]:
  boxes = boxes.astype(jnp.int32)
  x1 = jnp.clip(boxes[..., 0], 0, width - 1)
  y1 = jnp.clip(boxes[..., 1], 0, height - 1)
  x2 = jnp.maximum(jnp.clip(boxes[..., 2], 0, width - 1), x1)
  y2 = jnp.maximum(jnp.clip(boxes[..., 3], 0, height - 1), y1)
  return x1, y1, x2, y2


def _bin_windows(start: jax.Array, end: jax.Array, n: int, log2: jax.Array) -> tuple[jax.Array, ...]:
  """Per box, the two overlapping power-of-two windows covering each of n bins over
  [start, end]: (k, first window's start, second window's start), each (B, R, n)."""
  extent = (end - start + 1)[..., None]
  i = jnp.arange(n, dtype=jnp.int32)
  lo = start[..., None] + (i * extent) // n
  hi = start[..., None] - ((-(i + 1) * extent) // n)
  k = log2[hi - lo]
  return k, lo, hi - (1 << k)


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

  How: only the "base" levels (those that divide no finer level; {6} of {6, 3, 2, 1}) are
  looked up; every other level is the max over blocks of a finer level's bins, which is
  exact (``level_sources``). A base-level bin is the max of at most four entries of a
  sparse table of range maxima. The table is only as deep as the longest bin of the valid
  boxes needs: a ``lax.switch`` on that depth (a traced value) picks one of a few compiled
  branches, so small boxes skip the build entirely (depth 0: one lookup per bin, straight
  from the map) and the largest table is bounded by the longest bin a box of the map's size
  can have (4 x 4 copies of a 43 x 57 map for {6, 3, 2, 1}). R boxes cost O(R * bins * C)
  plus at most one O(H W C log(H/n) log(W/n)) build. Boxes are traced values: new boxes of
  the same padded shape never recompile.
  """
  levels = check_levels(levels)
  _check_roi_args(features, boxes, valid)
  batch, height, width, channels = features.shape
  num_boxes = boxes.shape[1]
  dim = spp_output_dim(channels, levels)
  total = batch * num_boxes
  if total == 0:
    return jnp.zeros((batch, num_boxes, dim), features.dtype)
  sources = level_sources(levels)
  base = tuple(n for n, source in sources.items() if source is None)
  max_depth = (_table_depth(height, base), _table_depth(width, base))
  log2 = jnp.asarray(_floor_log2(max(height, width)))
  x1, y1, x2, y2 = (c.reshape(total) for c in _clipped_corners(boxes, height, width))
  valid = jnp.asarray(valid, bool).reshape(total)
  image = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), num_boxes, total_repeat_length=total)
  windows = {n: (_bin_windows(y1, y2, n, log2), _bin_windows(x1, x2, n, log2)) for n in base}

  # The depth the valid boxes need; padding rows do not count.
  needed = jnp.zeros((), jnp.int32)
  for (ky, _, _), (kx, _, _) in windows.values():
    needed = jnp.maximum(needed, jnp.max(jnp.where(valid[:, None], jnp.maximum(ky, kx), 0), initial=0))

  # Many boxes are pooled a chunk at a time into the output, so the gathered entries and
  # the levels derived from them stay in cache; the last chunk is shifted back to end at
  # the last box (it recomputes a few boxes rather than padding R). A small output is
  # pooled in one pass. A table deeper than the map itself is built and read for a block
  # of channels at a time, at most TABLE_BYTES each, so less fresh memory is touched per
  # call: on the 2-core CPU machine the first-touch page faults of the 40 MB table of a
  # 43x57x256 map and its doubling steps cost more than building it (2 blocks of 128
  # channels: 64 random boxes in 6-8 ms instead of 20-25 ms; 2,000 unchanged).
  itemsize = features.dtype.itemsize
  bins = sum(n * n for n in levels)

  def pool_with_depth(depth: int) -> jax.Array:
    d_h, d_w = min(depth, max_depth[0]), min(depth, max_depth[1])
    copies = (d_h + 1) * (d_w + 1)
    block = channels if copies == 1 else max(
        [c for c in range(1, channels + 1) if channels % c == 0 and c * copies * features[..., :1].size * itemsize
         <= TABLE_BYTES] or [1])
    row_bytes = bins * block * itemsize
    chunk = total if total * dim * itemsize <= SINGLE_PASS_BYTES else min(total, max(1, CHUNK_BYTES // row_bytes))

    def pool_block(c: jax.Array, out: jax.Array) -> jax.Array:
      part_map = jax.lax.dynamic_slice_in_dim(features, c * block, block, axis=3)
      table = part_map[:, None, None] if copies == 1 else sparse_table(part_map, (d_h, d_w))
      flat = table.reshape(-1, block)

      def pool_chunk(i: jax.Array, out: jax.Array) -> jax.Array:
        start = jnp.minimum(i * chunk, total - chunk)
        part = lambda a: jax.lax.dynamic_slice_in_dim(a, start, chunk, 0)
        keep = part(valid)[:, None, None, None]
        pooled = {}
        for n in base:
          (ky, ya, yb), (kx, xa, xb) = (tuple(part(a) for a in axis) for axis in windows[n])
          ky, kx = jnp.minimum(ky, d_h), jnp.minimum(kx, d_w)  # in range even in a branch that was not picked
          rows = jnp.stack([ya, yb] if d_h else [ya], -1)[:, :, None, :, None]  # (chunk, n, 1, 2|1, 1)
          cols = jnp.stack([xa, xb] if d_w else [xa], -1)[:, None, :, None, :]  # (chunk, 1, n, 1, 2|1)
          level = (part(image)[:, None, None] * (d_h + 1) + ky[:, :, None]) * (d_w + 1) + kx[:, None, :]
          index = ((level[..., None, None] * height + rows) * width + cols).reshape(chunk, n, n, -1)
          cells = jnp.take(flat, index, axis=0, mode="clip").max(axis=-2)  # (chunk, n, n, block)
          pooled[n] = jnp.where(keep, cells, jnp.zeros((), cells.dtype))
        for n in sorted(sources, reverse=True):
          if sources[n] is not None:
            q = sources[n] // n
            pooled[n] = pooled[sources[n]].reshape(chunk, n, q, n, q, block).max(axis=(2, 4))
        rows_out = jnp.concatenate([pooled[n].reshape(chunk, n * n, block) for n in levels], axis=1)
        return jax.lax.dynamic_update_slice(out, rows_out, (start, 0, c * block))

      return jax.lax.fori_loop(0, -(-total // chunk), pool_chunk, out)

    out = jnp.zeros((total, bins, channels), features.dtype)
    return jax.lax.fori_loop(0, channels // block, pool_block, out).reshape(total, dim)

  depths = range(max(max_depth) + 1)
  out = jax.lax.switch(jnp.minimum(needed, depths[-1]), [functools.partial(pool_with_depth, d) for d in depths])
  return out.reshape(batch, num_boxes, dim)


def _roi_spp_every_level(features: jax.Array, boxes: jax.Array, valid: jax.Array,
                         levels: Sequence[int]) -> jax.Array:
  """ROI SPP with every level looked up in one full-depth sparse table (the first
  implementation of ``roi_spp``; same values). ``padded_spp`` keeps it, so the training
  step's gradients and cost stay what the training runs were measured with."""
  levels = check_levels(levels)
  _check_roi_args(features, boxes, valid)
  batch, height, width, channels = features.shape
  num_boxes = boxes.shape[1]
  rows_tables = [features]
  for i in range(1, int(_floor_log2(height)[height]) + 1):
    rows_tables.append(_shift_max(rows_tables[-1], 1, 2 ** (i - 1)))
  table = []
  for r in rows_tables:
    cols = [r]
    for j in range(1, int(_floor_log2(width)[width]) + 1):
      cols.append(_shift_max(cols[-1], 2, 2 ** (j - 1)))
    table.append(jnp.stack(cols, axis=1))
  table = jnp.stack(table, axis=1)
  k_h, k_w = table.shape[1:3]
  flat = table.reshape(-1, channels)
  log2 = jnp.asarray(_floor_log2(max(height, width)))
  x1, y1, x2, y2 = _clipped_corners(boxes, height, width)
  image = jnp.arange(batch, dtype=jnp.int32)[:, None]

  pooled = []
  for n in levels:
    ky, ya, yb = _bin_windows(y1, y2, n, log2)
    kx, xa, xb = _bin_windows(x1, x2, n, log2)
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
  return _roi_spp_every_level(features, boxes, jnp.ones(boxes.shape[:2], bool), levels)[:, 0]


def _window_taps(x: jax.Array, window: int, stride: int) -> tuple[list[jax.Array], tuple[int, int]]:
  """The ``window * window`` strided views of an NHWC ``x`` that a VALID max pool compares, in
  row-major window order, and the pooled (h, w)."""
  out_h = (x.shape[1] - window) // stride + 1
  out_w = (x.shape[2] - window) // stride + 1
  taps = [jax.lax.slice(x, (0, i, j, 0), (x.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1,
                                          x.shape[3]), (1, stride, stride, 1))
          for i in range(window) for j in range(window)]
  return taps, (out_h, out_w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """VALID ``window`` x ``window`` max pooling of an NHWC map with ``stride``: the values of
  ``flax.linen.max_pool`` and torch's ``max_pool2d``, and their gradient (all of each output's
  gradient to the first arg-max of its window in row-major order, as XLA's select-and-scatter,
  torch and Caffe do).

  The forward pass is a maximum of the window's strided views and the backward pass a sum of
  masked, interior-padded copies of the incoming gradient: both are elementwise fusions. XLA's
  CPU backend lowers the usual ``select_and_scatter`` gradient to an arg-max reduce-window over
  index iotas and a scatter, which took about 10 % of a ZF-5 training step (``bench``)."""
  if x.ndim != 4 or min(x.shape[1:3]) < window:
    raise ValueError(f"max_pool needs an NHWC map of at least {window}x{window}; got shape {x.shape}.")
  taps, _ = _window_taps(x, window, stride)
  return functools.reduce(jnp.maximum, taps)


def _first_arg_max(taps: list[jax.Array], pooled: jax.Array) -> jax.Array:
  """Per output, the index (int8, row-major in the window) of the first tap equal to the maximum."""
  index = jnp.zeros(pooled.shape, jnp.int8)
  for k in reversed(range(len(taps))):
    index = jnp.where(taps[k] == pooled, jnp.int8(k), index)
  return index


def _max_pool_forward(x, window, stride):
  if window * window > 127:
    raise ValueError(f"max_pool's gradient keeps the arg-max as int8: window {window} is too large.")
  taps, _ = _window_taps(x, window, stride)
  pooled = functools.reduce(jnp.maximum, taps)
  return pooled, (_first_arg_max(taps, pooled), x.shape)


def _max_pool_backward(window, stride, residuals, g):
  """Written as a gather, one output phase at a time: input row ``stride * a + r`` receives from tap
  row ``r + stride * d`` of output row ``a - d``. Each of the ``stride**2`` phases is a sum of a few
  shifted, masked copies of ``g``, and interleaving the phases gives the gradient; nothing is
  scattered and nothing is padded with interior zeros."""
  index, (batch, height, width, channels) = residuals
  out_h, out_w = index.shape[1:3]
  rows, cols = -(-height // stride), -(-width // stride)
  zero = jnp.zeros((), g.dtype)
  phase_rows = []
  for r in range(stride):
    phase_row = []
    for t in range(stride):
      phase = jnp.zeros((batch, rows, cols, channels), g.dtype)
      for d in range(max(0, -(-(window - r) // stride))):
        for e in range(max(0, -(-(window - t) // stride))):
          k = (r + stride * d) * window + t + stride * e
          shift = [(0, 0, 0), (d, rows - out_h - d, 0), (e, cols - out_w - e, 0), (0, 0, 0)]
          phase = phase + jax.lax.pad(jnp.where(index == k, g, zero), zero, shift)
      phase_row.append(phase)
    phase_rows.append(jnp.stack(phase_row, axis=3))
  dx = jnp.stack(phase_rows, axis=2).reshape(batch, rows * stride, cols * stride, channels)
  return (dx[:, :height, :width],)


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
