"""``roi_spp`` against ``torchvision.ops.roi_pool`` and ``detection.boxes.nms`` against
``torchvision.ops.nms``, side by side in one process.

torchvision is not a dependency of the package: ``scripts/setup_bench.sh`` makes
``.venv-bench`` with torch 2.14.1 and torchvision 0.29.1 next to the project's pinned set
(``pip check`` is clean there, so jax and torchvision share the process and no subprocess
is needed). Without torchvision every row here comes back with a skip note.

roi_pool: one call per pyramid level with the same boxes at ``spatial_scale`` 1, boxes given
as ``[0, x1, y1, x2, y2]`` in map cells. For integer boxes inside the map its bins are the
floor/ceil bins of ``roi_spp`` (``torchvision/csrc/ops/cpu/roi_pool_kernel.cpp``), so the
outputs, rearranged to ``roi_spp``'s layout, must be bit-identical. torchvision's time is
its four calls (its own (R, C, n, n) layout, no rearranging); ``roi_spp``'s is the jitted
call with ``block_until_ready``. Both produce a fresh output per call.

nms: torchvision's IoU has no "+1" in widths and areas, the project's (VOC) has, so
torchvision gets ``[x1, y1, x2 + 1, y2 + 1]``: with integer pixel boxes in float64 both
compute the same IoU exactly, and both drop a box when IoU > threshold. Scores are distinct,
so the visiting order is the same.

A row whose outputs differ from the peer's carries no time: the bench does not report a
speed for a result that is not the same.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax.detection import boxes as box_ops
from sppnet_jax.ops import check_levels, roi_spp
from sppnet_jax.timing import median_ms

BOX_KINDS = ("small", "random", "large")


def peer_boxes(rng: np.random.Generator, num_boxes: int, map_hw: tuple[int, int], kind: str) -> np.ndarray:
  """(R, 4) int32 boxes [x1, y1, x2, y2] inside the map, inclusive cells.

  ``small``: 3 x 3 cells; ``random``: each side's two ends drawn uniformly from the map and
  sorted; ``large``: 90 % to 100 % of the map's side, near the full map.
  """
  height, width = map_hw
  ends = []
  for length in (width, height):
    if kind == "small":
      side = np.full(num_boxes, min(3, length))
      start = rng.integers(0, length - side + 1)
      ends.append((start, start + side - 1))
    elif kind == "random":
      pair = np.sort(rng.integers(0, length, (num_boxes, 2)), axis=1)
      ends.append((pair[:, 0], pair[:, 1]))
    elif kind == "large":
      side = rng.integers(max(1, int(np.ceil(0.9 * length))), length + 1, num_boxes)
      start = rng.integers(0, length - side + 1)
      ends.append((start, start + side - 1))
    else:
      raise ValueError(f"box kind must be one of {BOX_KINDS}; got {kind!r}.")
  (x1, x2), (y1, y2) = ends
  return np.stack([x1, y1, x2, y2], axis=-1).astype(np.int32)


def nms_boxes(rng: np.random.Generator, num_boxes: int, image_hw: tuple[int, int] = (375, 500)) -> tuple[np.ndarray, np.ndarray]:
  """Integer pixel boxes (float64, inclusive corners) of 8 to 250 px a side inside the image,
  and distinct scores in [0, 1)."""
  height, width = image_hw
  w = rng.integers(8, min(250, width) + 1, num_boxes)
  h = rng.integers(8, min(250, height) + 1, num_boxes)
  x1 = rng.integers(0, width - w + 1)
  y1 = rng.integers(0, height - h + 1)
  boxes = np.stack([x1, y1, x1 + w - 1, y1 + h - 1], axis=-1).astype(np.float64)
  scores = rng.permutation(num_boxes).astype(np.float64) / num_boxes + rng.random(num_boxes) / (2 * num_boxes)
  return boxes, scores


def torchvision_ops() -> tuple[Any, Any, Any, str]:
  """(torch, roi_pool, nms, reason): the ops, or Nones and why they cannot be imported."""
  try:
    import torch
    from torchvision.ops import nms, roi_pool
  except Exception as err:  # missing, or built for another torch
    return None, None, None, (f"torchvision not importable ({type(err).__name__}: {str(err).splitlines()[0][:80]}); "
                              "run scripts/setup_bench.sh and the bench from .venv-bench")
  return torch, roi_pool, nms, ""


def roi_pool_to_roi_spp_layout(torch, outputs: Sequence[Any]) -> np.ndarray:
  """torchvision's per-level (R, C, n, n) outputs as one (R, C * sum(n*n)) array in ``roi_spp``'s layout."""
  return torch.cat([o.permute(0, 2, 3, 1).reshape(o.shape[0], -1) for o in outputs], dim=1).float().cpu().numpy()


def roi_spp_rows(num_boxes: Sequence[int] = (64, 300, 2000, 20000), kinds: Sequence[str] = BOX_KINDS,
                 map_hw: tuple[int, int] = (43, 57), channels: int = 256, levels: Sequence[int] = (6, 3, 2, 1),
                 repeats: int = 5, seed: int = 0, ops: tuple | None = None) -> list[dict]:
  """``roi_spp`` and torchvision ``roi_pool`` per level on the same float32 map and boxes.

  One dict per (box count, kind): boxes, kind, roi_spp_ms, torchvision_ms (medians of
  ``repeats`` after a warm-up), torchvision_over_roi_spp (above 1: roi_spp faster),
  identical (bit-identical outputs), min_bytes (map read once + output written once), device,
  note. When the outputs differ both times are None. ``ops``: (torch, roi_pool) to use
  instead of torchvision's (the tests pass a stand-in).
  """
  levels = check_levels(levels)
  if ops is None:
    torch, roi_pool, _, reason = torchvision_ops()
  else:
    (torch, roi_pool), reason = ops, ""
  rng = np.random.default_rng(seed)
  height, width = map_hw
  base = rng.standard_normal((1, height, width, channels)).astype(np.float32)
  features = jnp.asarray(base)
  fn = jax.jit(roi_spp, static_argnames="levels")
  rows = []
  if roi_pool is not None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    nchw = torch.from_numpy(base.transpose(0, 3, 1, 2).copy()).to(device)
    sync: Callable[[Any], Any] = (lambda out: torch.cuda.synchronize()) if device.type == "cuda" else (lambda out: out)
  for count in num_boxes:
    for kind in kinds:
      boxes = peer_boxes(rng, count, map_hw, kind)
      row = {"boxes": int(count), "kind": kind, "map": f"{height}x{width}x{channels}", "dtype": "float32",
             "levels": list(levels), "roi_spp_ms": None, "torchvision_ms": None, "torchvision_over_roi_spp": None,
             "identical": None, "min_bytes": (base.size + count * sum(n * n for n in levels) * channels) * 4,
             "note": ""}
      rows.append(row)
      if roi_pool is None:
        row["note"] = f"skipped: {reason}"
        continue
      b, v = boxes[None], np.ones((1, count), bool)
      ours = np.asarray(fn(features, b, v, levels=levels))[0]
      rois = torch.from_numpy(np.concatenate([np.zeros((count, 1)), boxes], 1).astype(np.float32)).to(device)

      def peer():
        with torch.no_grad():
          return [roi_pool(nchw, rois, (n, n), 1.0) for n in levels]

      row["identical"] = bool(np.array_equal(ours, roi_pool_to_roi_spp_layout(torch, peer())))
      del ours
      if not row["identical"]:
        row["note"] = "OUTPUT DIFFERS from torchvision roi_pool: no speed reported"
        continue
      row["roi_spp_ms"] = median_ms(lambda: fn(features, b, v, levels=levels), repeats, jax.block_until_ready)[0]
      row["torchvision_ms"] = median_ms(peer, repeats, sync)[0]
      row["torchvision_over_roi_spp"] = row["torchvision_ms"] / row["roi_spp_ms"]
      row["device"] = f"jax {jax.devices()[0].platform}, torchvision {device.type}"
  return rows


def nms_rows(num_boxes: Sequence[int] = (2000, 20000), threshold: float = 0.3, repeats: int = 5, seed: int = 0,
             ops: tuple | None = None) -> list[dict]:
  """``detection.boxes.nms`` and ``torchvision.ops.nms`` (CPU, float64) on the same random boxes.

  One dict per box count: boxes, threshold, kept, ours_ms, torchvision_ms,
  torchvision_over_ours, identical (same kept indices in the same order), note. ``ops``:
  (torch, nms) to use instead of torchvision's.
  """
  if ops is None:
    torch, tv_nms, reason = (lambda t: (t[0], t[2], t[3]))(torchvision_ops())
  else:
    (torch, tv_nms), reason = ops, ""
  rng = np.random.default_rng(seed)
  rows = []
  for count in num_boxes:
    boxes, scores = nms_boxes(rng, count)
    row = {"boxes": int(count), "threshold": threshold, "kept": None, "ours_ms": None, "torchvision_ms": None,
           "torchvision_over_ours": None, "identical": None, "note": ""}
    rows.append(row)
    if tv_nms is None:
      row["note"] = f"skipped: {reason}"
      continue
    ours = box_ops.nms(boxes, scores, threshold)
    tv_boxes = torch.from_numpy(boxes + np.array([0.0, 0.0, 1.0, 1.0]))
    tv_scores = torch.from_numpy(scores)
    theirs = tv_nms(tv_boxes, tv_scores, threshold).numpy()
    row["kept"] = int(len(ours))
    row["identical"] = bool(np.array_equal(ours, theirs))
    if not row["identical"]:
      row["note"] = "KEPT INDICES DIFFER from torchvision nms: no speed reported"
      continue
    row["ours_ms"] = median_ms(lambda: box_ops.nms(boxes, scores, threshold), repeats)[0]
    row["torchvision_ms"] = median_ms(lambda: tv_nms(tv_boxes, tv_scores, threshold), repeats)[0]
    row["torchvision_over_ours"] = row["torchvision_ms"] / row["ours_ms"]
  return rows


def _number(value, digits: int) -> str:
  return "" if value is None else f"{value:,.{digits}f}"


def format_roi_table(rows: Sequence[dict], bytes_per_s: float | None = None, bytes_label: str = "") -> str:
  """Markdown: roi_spp beside torchvision roi_pool per case, with the minimal-bytes fraction."""
  lines = ["| boxes | kind | roi_spp ms | torchvision roi_pool ms (4 calls) | torchvision / roi_spp | identical | "
           f"roi_spp GB/s (minimal bytes) | fraction {bytes_label} | note |",
           "|---:|---|---:|---:|---:|---|---:|---:|---|"]
  for r in rows:
    gbs = None if r["roi_spp_ms"] is None else r["min_bytes"] / (r["roi_spp_ms"] * 1e-3) / 1e9
    frac = None if gbs is None or not bytes_per_s else gbs * 1e9 / bytes_per_s
    lines.append(f"| {r['boxes']:,} | {r['kind']} | {_number(r['roi_spp_ms'], 2)} | {_number(r['torchvision_ms'], 2)} | "
                 f"{_number(r['torchvision_over_roi_spp'], 2)} | {'' if r['identical'] is None else r['identical']} | "
                 f"{_number(gbs, 2)} | {_number(frac, 3)} | {r['note']} |")
  lines += ["", "float32, one map, levels {6, 3, 2, 1}; torchvision roi_pool called once per level with the same boxes. "
            "small: 3x3 cells; random: uniform ends per side; large: 90-100 % of each side. identical: the outputs, "
            "rearranged to roi_spp's layout, are bit-identical (checked before timing; a row that differs gets no "
            "time). Minimal bytes: the map read once and the pooled output written once."]
  return "\n".join(lines)


def format_nms_table(rows: Sequence[dict]) -> str:
  """Markdown: the project's NMS beside torchvision's."""
  lines = ["| boxes | IoU threshold | kept | detection.boxes.nms ms | torchvision nms ms | torchvision / ours | "
           "identical | note |", "|---:|---:|---:|---:|---:|---:|---|---|"]
  for r in rows:
    lines.append(f"| {r['boxes']:,} | {r['threshold']} | {'' if r['kept'] is None else r['kept']} | "
                 f"{_number(r['ours_ms'], 2)} | {_number(r['torchvision_ms'], 2)} | "
                 f"{_number(r['torchvision_over_ours'], 2)} | {'' if r['identical'] is None else r['identical']} | "
                 f"{r['note']} |")
  lines += ["", "Random integer pixel boxes (8-250 px a side in a 375x500 image), distinct scores, float64 on the CPU; "
            "torchvision gets x2 + 1 and y2 + 1 so its IoU equals the VOC '+1' IoU exactly. identical: the same kept "
            "indices in the same order."]
  return "\n".join(lines)
