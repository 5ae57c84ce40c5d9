"""Timing of ``roi_spp`` and ``spp`` against a per-box torch loop and a naive masked-max JAX
version (``torchvision.ops.roi_pool`` is in ``bench.torchvision_peer``).

Default sizes: the 43x57x256 conv5 map of a VOC image at scale 688, with 64 and 2,000
boxes that are either small (1-6 cells a side) or large (60-100 % of the map side), and
whole-map SPP of a batch of 32 13x13x256 (224 input) and 10x10x256 (180 input) maps.

Every time is the median of ``repeats`` runs after a warm-up call, each ended with
``block_until_ready`` (JAX) or taken after the call returns (torch CPU; CUDA is
synchronised). torch is imported only inside the functions that need it, so the library
imports and this benchmark runs (with those rows skipped) without it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax.ops import check_levels, roi_spp, spp, spp_output_dim
from sppnet_jax.ops.pooling import _table_depth, level_sources
from sppnet_jax.timing import environment, median_ms

# Largest (boxes x bins x H x W x C) intermediate one chunk of the naive version may create.
NAIVE_CHUNK_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------------------
# Timing helpers (``median_ms`` and ``environment`` live in ``sppnet_jax.timing``)


def _jax_sync(out):
  return jax.block_until_ready(out)


# ----------------------------------------------------------------------------------------
# Inputs


def make_boxes(rng: np.random.Generator, num_boxes: int, map_hw: tuple[int, int], kind: str) -> np.ndarray:
  """(1, R, 4) int32 boxes [x1, y1, x2, y2] inside the map, inclusive.

  ``small``: 1 to 6 cells a side; ``large``: 60 % to 100 % of the map's side.
  """
  height, width = map_hw
  sides = []
  for length in (width, height):
    if kind == "small":
      side = rng.integers(1, min(6, length) + 1, num_boxes)
    elif kind == "large":
      side = rng.integers(max(1, int(0.6 * length)), length + 1, num_boxes)
    else:
      raise ValueError(f"box kind must be 'small' or 'large'; got {kind!r}.")
    sides.append(side)
  (bw, bh) = sides
  x1 = rng.integers(0, width - bw + 1)
  y1 = rng.integers(0, height - bh + 1)
  return np.stack([x1, y1, x1 + bw - 1, y1 + bh - 1], axis=-1)[None].astype(np.int32)


# ----------------------------------------------------------------------------------------
# The naive masked-max baseline (JAX)


def naive_roi_spp(features: jax.Array, boxes: jax.Array, levels: Sequence[int], chunk: int) -> jax.Array:
  """ROI SPP with one boolean mask over the whole map per bin: max(where(mask, x, -inf)).

  features (1, H, W, C), boxes (1, R, 4) with R a multiple of ``chunk``; returns (1, R, D) in
  ``roi_spp``'s layout. Boxes are processed ``chunk`` at a time under ``lax.map``. Cost grows
  with the map, not with the box: R * bins * H * W * C comparisons.
  """
  levels = check_levels(levels)
  _, height, width, channels = features.shape
  x = features[0]
  rows = jnp.arange(height)
  cols = jnp.arange(width)

  def axis_masks(start, end, length_index, n):
    extent = end - start + 1
    i = jnp.arange(n)
    lo = start[:, None] + (i * extent[:, None]) // n
    hi = start[:, None] - ((-(i + 1) * extent[:, None]) // n)
    return (length_index >= lo[..., None]) & (length_index < hi[..., None])  # (chunk, n, length)

  def pool_chunk(chunk_boxes):
    x1, y1, x2, y2 = (chunk_boxes[:, k] for k in range(4))
    outs = []
    for n in levels:
      row_mask = axis_masks(y1, y2, rows, n)  # (chunk, n, H)
      col_mask = axis_masks(x1, x2, cols, n)  # (chunk, n, W)
      mask = row_mask[:, :, None, :, None] & col_mask[:, None, :, None, :]  # (chunk, n, n, H, W)
      masked = jnp.where(mask[..., None], x, jnp.array(-jnp.inf, x.dtype))  # (chunk, n, n, H, W, C)
      outs.append(masked.max(axis=(3, 4)).reshape(chunk_boxes.shape[0], n * n * channels))
    return jnp.concatenate(outs, axis=-1)

  chunks = boxes[0].reshape(-1, chunk, 4)
  pooled = jax.lax.map(pool_chunk, chunks)
  return pooled.reshape(1, -1, spp_output_dim(channels, levels))


def naive_chunk_size(map_hw: tuple[int, int], channels: int, levels: Sequence[int], itemsize: int,
                     num_boxes: int) -> int:
  """The largest divisor of ``num_boxes`` whose masked intermediate fits NAIVE_CHUNK_BYTES."""
  per_box = max(n * n for n in levels) * map_hw[0] * map_hw[1] * channels * itemsize
  limit = max(1, NAIVE_CHUNK_BYTES // per_box)
  return max(d for d in range(1, min(limit, num_boxes) + 1) if num_boxes % d == 0)


# ----------------------------------------------------------------------------------------
# torch peers (lazy imports)


def _torch_dtype(torch, name: str):
  return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _torch_box_loop(torch, features_nchw, boxes: np.ndarray, levels: Sequence[int]):
  """Per box: crop, adaptive_max_pool2d per level, (n, n, C) layout, concatenated."""
  pool = torch.nn.functional.adaptive_max_pool2d
  rows = []
  for x1, y1, x2, y2 in boxes[0].tolist():
    crop = features_nchw[:, :, y1:y2 + 1, x1:x2 + 1]
    rows.append(torch.cat([pool(crop, n).permute(0, 2, 3, 1).reshape(-1) for n in levels]))
  return torch.stack(rows)[None]


def _torch_whole_maps(torch, maps_nchw, levels: Sequence[int]):
  pool = torch.nn.functional.adaptive_max_pool2d
  batch = maps_nchw.shape[0]
  return torch.cat([pool(maps_nchw, n).permute(0, 2, 3, 1).reshape(batch, -1) for n in levels], dim=1)


# ----------------------------------------------------------------------------------------
# The benchmark


@dataclasses.dataclass
class _Row:
  op: str
  impl: str
  dtype: str
  shape: str
  boxes: str
  ms: float | None = None
  vs_roi_spp: float | None = None
  gb_per_s: float | None = None
  note: str = ""
  min_bytes: int | None = None  # the library's own rows: ``minimal_bytes`` of the problem


def minimal_bytes(map_elements: int, num_pooled: int, channels: int, levels: Sequence[int], itemsize: int) -> int:
  """The least any SPP implementation must move: the conv map(s) read once and the pooled
  output (``num_pooled`` windows or maps) written once."""
  return (map_elements + num_pooled * spp_output_dim(channels, levels)) * itemsize


def roi_spp_bytes(map_hw: tuple[int, int], channels: int, levels: Sequence[int], num_boxes: int,
                  itemsize: int) -> int:
  """Bytes moved by ``roi_spp`` under its algorithm's model, with the deepest table the map can need.

  map read once; the sparse table ((d_h + 1) x (d_w + 1) copies of the map, the depth the
  longest base-level bin of a whole-map box needs) written once; four table entries of C values
  read per base-level bin and box; the pooled output written once. Boxes needing a shallower
  table move less (small boxes read the map directly, one entry per bin).
  """
  height, width = map_hw
  base = [n for n, source in level_sources(levels).items() if source is None]
  d_h, d_w = _table_depth(height, base), _table_depth(width, base)
  map_bytes = height * width * channels * itemsize
  base_bins = sum(n * n for n in base)
  return map_bytes + (d_h + 1) * (d_w + 1) * map_bytes + 4 * num_boxes * base_bins * channels * itemsize \
      + num_boxes * spp_output_dim(channels, levels) * itemsize


def run_pooling_benchmark(num_boxes: Sequence[int] = (64, 2000), map_hw: tuple[int, int] = (43, 57),
                          channels: int = 256, levels: Sequence[int] = (6, 3, 2, 1),
                          dtypes: Sequence[str] = ("float32", "bfloat16"), repeats: int = 5,
                          whole_map_batch: int = 32, whole_map_sides: Sequence[int] = (13, 10),
                          baseline_budget_s: float = 5.0, naive_budget_s: float = 20.0,
                          torch_threads: int | None = None, seed: int = 0) -> list[dict]:
  """Times ROI and whole-map SPP; returns one dict per (op, implementation, dtype, size).

  Keys: op, impl, dtype, shape, boxes, ms (median, None when skipped), vs_roi_spp (time /
  the matching ``roi_spp`` or ``spp`` time), gb_per_s (``roi_spp`` rows: see
  ``roi_spp_bytes``), note (skip reasons, checks), env (``environment()``, the same dict in
  every row).

  ``roi_spp`` and ``spp`` always get ``repeats`` runs. The baselines stop timing once
  ``baseline_budget_s`` has passed (at least one run; the note gives the count); the torch
  loop, whose cost is the same for every box, is timed on the first K boxes and scaled by
  R / K when all R would not fit the budget (the note says so). The naive
  version is skipped for a box count when the time measured at a smaller count, scaled
  linearly, says one call would exceed ``naive_budget_s``, and reported as skipped when it
  runs out of memory. ``torch_threads``: None keeps torch's default thread count.
  """
  levels = check_levels(levels)
  repeats = max(int(repeats), 1)
  if torch_threads is not None:
    import torch

    torch.set_num_threads(torch_threads)
  env = environment()
  rng = np.random.default_rng(seed)
  height, width = map_hw
  rows: list[_Row] = []

  try:
    import torch
  except ImportError:
    torch = None
  roi_fn = jax.jit(roi_spp, static_argnames="levels")
  for dtype in dtypes:
    jdtype = jnp.dtype(dtype)
    itemsize = jdtype.itemsize
    base = rng.standard_normal((1, height, width, channels)).astype(np.float32)
    features = jnp.asarray(base, jdtype)
    shape = f"{height}x{width}x{channels}"
    if torch is not None:
      nchw = torch.from_numpy(base.transpose(0, 3, 1, 2).copy()).to(_torch_dtype(torch, dtype))
    naive_ms_per_box: dict[str, float] = {}
    for count in sorted(num_boxes):
      for kind in ("small", "large"):
        boxes = make_boxes(rng, count, map_hw, kind)
        valid = np.ones(boxes.shape[:2], bool)
        label = f"{count} {kind}"

        reference = roi_fn(features, boxes, valid, levels=levels)
        t_roi, _ = median_ms(lambda: roi_fn(features, boxes, valid, levels=levels), repeats, _jax_sync)
        moved = roi_spp_bytes(map_hw, channels, levels, count, itemsize)
        rows.append(_Row("roi_spp", "roi_spp (jit, sparse table)", dtype, shape, label, t_roi, 1.0,
                         moved / (t_roi * 1e-3) / 1e9,
                         min_bytes=minimal_bytes(height * width * channels, count, channels, levels, itemsize)))

        # (a) torch per-box loop on CPU.
        if torch is None:
          rows.append(_Row("roi_spp", "torch crop + adaptive_max_pool2d loop", dtype, shape, label,
                           note="skipped: torch not installed"))
        else:
          with torch.no_grad():
            # The loop costs the same per box, so when all R boxes would not fit the budget the
            # first K are timed and the time scaled by R / K.
            probe = min(count, 8)
            start = time.perf_counter()
            _torch_box_loop(torch, nchw, boxes[:, :probe], levels)
            per_box = (time.perf_counter() - start) / probe
            timed = int(min(count, max(probe, baseline_budget_s / (repeats * per_box))))
            subset = boxes[:, :timed]
            out = _torch_box_loop(torch, nchw, subset, levels)
            t, runs = median_ms(lambda: _torch_box_loop(torch, nchw, subset, levels), repeats,
                                 warm_up=lambda: out, budget_s=baseline_budget_s)
            t *= count / timed
          same = np.array_equal(out.float().numpy(), np.asarray(reference[:, :timed].astype(jnp.float32)))
          note = f"{runs} runs" + ("" if timed == count else f" on the first {timed} boxes, scaled to {count}")
          rows.append(_Row("roi_spp", "torch crop + adaptive_max_pool2d loop", dtype, shape, label, t, t / t_roi,
                           note=note + ("" if same else ", OUTPUT DIFFERS from roi_spp")))

        # (b) naive masked max.
        impl = "naive masked max (jax, lax.map)"
        naive = jax.jit(naive_roi_spp, static_argnames=("levels", "chunk"))
        if kind not in naive_ms_per_box and count > 16:  # nothing smaller measured yet: time a 16-box probe
          probe = boxes[:, :16]
          probe_chunk = naive_chunk_size(map_hw, channels, levels, itemsize, 16)
          try:
            start = time.perf_counter()
            jax.block_until_ready(naive(features, probe, levels=levels, chunk=probe_chunk))
            naive_ms_per_box[kind] = 1e3 * (time.perf_counter() - start) / 16  # includes compiling: an upper bound
          except Exception:
            pass
        projected = naive_ms_per_box.get(kind, 0.0) * count * 1e-3
        if projected > naive_budget_s:
          rows.append(_Row("roi_spp", impl, dtype, shape, label,
                           note=f"skipped: projected {projected:.0f} s per call from a smaller box count "
                                f"(budget {naive_budget_s:.0f} s)"))
        else:
          chunk = naive_chunk_size(map_hw, channels, levels, itemsize, count)
          try:
            compiled = naive.lower(features, boxes, levels=levels, chunk=chunk).compile()
            out = compiled(features, boxes)
            t, runs = median_ms(lambda: compiled(features, boxes), repeats, _jax_sync, warm_up=lambda: out,
                                 budget_s=baseline_budget_s)
            naive_ms_per_box[kind] = t / count
            same = np.array_equal(np.asarray(out.astype(jnp.float32)), np.asarray(reference.astype(jnp.float32)))
            note = f"chunk {chunk} boxes, {runs} runs"
            rows.append(_Row("roi_spp", impl, dtype, shape, label, t, t / t_roi,
                             note=note + ("" if same else ", OUTPUT DIFFERS from roi_spp")))
          except Exception as err:  # XLA reports out-of-memory as a runtime error
            message = str(err).splitlines()[0][:120]
            reason = "out of memory" if "RESOURCE_EXHAUSTED" in str(err) or isinstance(err, MemoryError) else "failed"
            rows.append(_Row("roi_spp", impl, dtype, shape, label, note=f"skipped: {reason}: {message}"))

    # Whole-map SPP.
    spp_fn = jax.jit(spp, static_argnames="levels")
    for side in whole_map_sides:
      maps32 = rng.standard_normal((whole_map_batch, side, side, channels)).astype(np.float32)
      maps = jnp.asarray(maps32, jdtype)
      shape = f"{whole_map_batch}x{side}x{side}x{channels}"
      reference = spp_fn(maps, levels=levels)
      t_spp, _ = median_ms(lambda: spp_fn(maps, levels=levels), repeats, _jax_sync)
      moved = minimal_bytes(maps.size, whole_map_batch, channels, levels, itemsize)
      rows.append(_Row("spp", "spp (jit, static slices)", dtype, shape, "whole map", t_spp, 1.0,
                       moved / (t_spp * 1e-3) / 1e9, min_bytes=moved))
      if torch is None:
        rows.append(_Row("spp", "torch adaptive_max_pool2d per level", dtype, shape, "whole map",
                         note="skipped: torch not installed"))
      else:
        nchw = torch.from_numpy(maps32.transpose(0, 3, 1, 2).copy()).to(_torch_dtype(torch, dtype))
        with torch.no_grad():
          out = _torch_whole_maps(torch, nchw, levels)
          t, _ = median_ms(lambda: _torch_whole_maps(torch, nchw, levels), repeats)
        same = np.array_equal(out.float().numpy(), np.asarray(reference.astype(jnp.float32)))
        rows.append(_Row("spp", "torch adaptive_max_pool2d per level", dtype, shape, "whole map", t, t / t_spp,
                         note="" if same else "OUTPUT DIFFERS from spp"))

  return [dict(dataclasses.asdict(row), env=env) for row in rows]


def format_table(rows: Sequence[dict]) -> str:
  """Markdown: an environment line, the timing table and the bytes model."""
  def number(value, digits):
    return "" if value is None else f"{value:.{digits}f}"

  lines = []
  if rows and rows[0].get("env"):
    env = rows[0]["env"]
    parts = [f"{key} {value}" for key, value in env.items() if value is not None]
    lines += ["Environment: " + "; ".join(parts), ""]
  lines.append("| op | implementation | dtype | input | boxes | ms (median) | x roi_spp/spp | GB/s | note |")
  lines.append("|---|---|---|---|---|---:|---:|---:|---|")
  for row in rows:
    lines.append(f"| {row['op']} | {row['impl']} | {row['dtype']} | {row['shape']} | {row['boxes']} | "
                 f"{number(row['ms'], 2)} | {number(row['vs_roi_spp'], 1)} | {number(row['gb_per_s'], 1)} | "
                 f"{row['note']} |")
  lines += ["", "x roi_spp/spp: the row's time divided by the roi_spp (or spp) time of the same dtype, input "
            "and boxes; above 1 means slower than this library.",
            "GB/s model, roi_spp: map read once + sparse table written once (as deep as a whole-map box "
            "needs: (d+1)^2 copies of the map, 16 for a 43x57 map and {6,3,2,1}) + 4 table reads of C values "
            "per finest-level bin and box + the output written once. spp: maps read once + output written once. The time includes all of it."]
  return "\n".join(lines)
