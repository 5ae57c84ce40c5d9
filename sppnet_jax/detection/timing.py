"""Per-image detection timing, SPP-net (1 and 5 scales) vs R-CNN, as in the paper's Table 10.

For the same images, windows and network:

* **SPP conv**: the trunk at every scale of the setting (resize, normalise, pad, conv5).
* **SPP fc**: projection + pyramid pooling of every window at its scale, then fc6/fc7.
* **R-CNN conv**: crop + warp of every window to ``warp_size`` and the trunk + pooling on it.
* **R-CNN fc**: fc6/fc7 of every window.

Times are wall-clock after a warm-up run of the same image (so compilation is excluded), with
``block_until_ready``; image resizing on the host is inside the SPP conv time. On a CPU, R-CNN on
all windows takes minutes per image, so only ``rcnn_max_windows`` windows are run and the conv
time is **extrapolated** linearly to all windows (R-CNN's cost is exactly linear in the number of
windows, batch padding aside); such numbers are marked as extrapolated in the table.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np

from sppnet_jax import models
from sppnet_jax.timing import environment
from sppnet_jax.detection import features as feats
from sppnet_jax.detection import rcnn

# The paper's Table 10 (ZF-5, GPU, seconds per image; mean over 100 VOC images).
PAPER_TABLE10 = {
    "spp_1scale": {"conv": 0.053, "fc": 0.089, "total": 0.142, "speedup": 102.0},
    "spp_5scale": {"conv": 0.293, "fc": 0.089, "total": 0.382, "speedup": 38.0},
    "rcnn": {"conv": 14.37, "fc": 0.089, "total": 14.46, "speedup": 1.0},
}


def _block(x: Any) -> Any:
  return jax.block_until_ready(x)


def _spp_once(model, params, image, windows, settings) -> tuple[float, float]:
  idx = feats.select_scales(windows, image.shape[:2], settings.scales, settings.target_side, settings.rule)
  t0 = time.perf_counter()
  maps = feats.conv_maps(model, params, image, settings)
  _block([m.conv for m in maps if m is not None])
  t1 = time.perf_counter()
  pooled = feats.pool_from_maps(model, maps, image.shape[:2], windows, idx, settings)
  feats.fc7_features(params["head"], pooled, dtype=model.dtype)
  t2 = time.perf_counter()
  return t1 - t0, t2 - t1


def _rcnn_once(model, params, image, windows, settings, warp_size, batch) -> tuple[float, float, np.ndarray]:
  t0 = time.perf_counter()
  wf = rcnn.rcnn_window_features(model, params, image, windows, settings, warp_size, batch, with_fc7=False)
  t1 = time.perf_counter()
  return t1 - t0, 0.0, wf.pool5


def time_detection(model: models.SPPNet, params: Any, images: Sequence[np.ndarray],
                   windows: Sequence[np.ndarray], settings_1: feats.FeatureSettings,
                   settings_5: feats.FeatureSettings, warp_size: int = 224, rcnn_batch: int = 32,
                   rcnn_max_windows: int | None = None) -> dict[str, Any]:
  """Mean per-image conv, fc and total seconds of SPP 1-scale, SPP 5-scale and R-CNN.

  Args:
    model, params: the network (its trunk and fc6/fc7 are used by all three).
    images: uint8 (H, W, 3) images; windows: their (R_i, 4) pixel windows.
    settings_1, settings_5: the 1-scale and 5-scale feature settings.
    warp_size, rcnn_batch: R-CNN warp side and windows per compiled batch.
    rcnn_max_windows: run R-CNN on at most this many windows per image and extrapolate its
      conv time to all of them (None: run all).

  Returns a dict with ``spp_1scale``, ``spp_5scale``, ``rcnn`` (each ``conv``, ``fc``,
  ``total``, ``speedup`` vs R-CNN, ``conv_speedup``), ``rcnn_extrapolated`` (bool),
  ``windows_per_image``, ``rcnn_windows_run``, ``images`` and ``environment``.
  """
  if len(images) != len(windows) or not len(images):
    raise ValueError(f"need one window array per image and at least one image; got {len(images)} images and "
                     f"{len(windows)} window arrays.")
  rows = {k: {"conv": [], "fc": []} for k in ("spp_1scale", "spp_5scale", "rcnn")}
  extrapolated, run_counts = False, []
  for image, w in zip(images, windows):
    w = np.asarray(w, np.float32).reshape(-1, 4)
    for key, settings in (("spp_1scale", settings_1), ("spp_5scale", settings_5)):
      _spp_once(model, params, image, w, settings)  # warm-up (compiles this bucket)
      conv, fc = _spp_once(model, params, image, w, settings)
      rows[key]["conv"].append(conv)
      rows[key]["fc"].append(fc)
    cap = len(w) if rcnn_max_windows is None else min(len(w), int(rcnn_max_windows))
    # Run a whole number of batches so the per-window cost is not inflated by padding.
    cap = max(min(len(w), -(-cap // rcnn_batch) * rcnn_batch), min(len(w), 1))
    sub = w[:cap]
    _rcnn_once(model, params, image, sub[:rcnn_batch], settings_1, warp_size, rcnn_batch)  # warm-up
    conv, _, pool5 = _rcnn_once(model, params, image, sub, settings_1, warp_size, rcnn_batch)
    run_counts.append(cap)
    if cap < len(w):
      extrapolated = True
      conv *= len(w) / cap
    # fc time on all windows: tile the pooled vectors of the windows that were run.
    all_pool5 = np.resize(pool5, (len(w), pool5.shape[1])) if len(pool5) else pool5
    feats.fc7_features(params["head"], all_pool5[:feats.FC_BATCH], dtype=model.dtype)
    t0 = time.perf_counter()
    feats.fc7_features(params["head"], all_pool5, dtype=model.dtype)
    rows["rcnn"]["conv"].append(conv)
    rows["rcnn"]["fc"].append(time.perf_counter() - t0)
  out: dict[str, Any] = {}
  for key, r in rows.items():
    conv, fc = float(np.mean(r["conv"])), float(np.mean(r["fc"]))
    out[key] = {"conv": conv, "fc": fc, "total": conv + fc}
  for key in out:
    out[key]["speedup"] = out["rcnn"]["total"] / out[key]["total"]
    out[key]["conv_speedup"] = out["rcnn"]["conv"] / out[key]["conv"]
  out.update(rcnn_extrapolated=extrapolated, windows_per_image=float(np.mean([len(w) for w in windows])),
             rcnn_windows_run=float(np.mean(run_counts)), images=len(images),
             scales_1=list(settings_1.scales), scales_5=list(settings_5.scales), warp_size=int(warp_size),
             environment=environment())
  return out


def format_table(result: dict[str, Any]) -> str:
  """Markdown table: measured seconds per image beside the paper's Table 10 (GPU, ZF-5)."""
  ext = " (extrapolated)" if result.get("rcnn_extrapolated") else ""
  cols = [("spp_1scale", f"SPP 1-scale {result.get('scales_1')}"), ("spp_5scale", f"SPP 5-scale {result.get('scales_5')}"),
          ("rcnn", f"R-CNN warp {result.get('warp_size')}")]
  lines = ["| | " + " | ".join(f"{name} measured | paper" for _, name in cols) + " |",
           "|---|" + "---|---|" * len(cols)]
  for row, label in (("conv", "conv time (s)"), ("fc", "fc time (s)"), ("total", "total (s)"),
                     ("speedup", "speed-up vs R-CNN"), ("conv_speedup", "conv speed-up vs R-CNN")):
    cells = []
    for key, _ in cols:
      v = result[key][row]
      paper = PAPER_TABLE10[key].get(row)
      if row == "conv_speedup":
        paper = {"spp_1scale": 270.0, "spp_5scale": 49.0, "rcnn": 1.0}[key]
      mark = ext if key == "rcnn" and row in ("conv", "total") else ""
      if row.endswith("speedup"):
        mark = " (uses extrapolated R-CNN)" if ext and key != "rcnn" else ""
        cells.append(f"{v:.1f}x{mark} | {paper:g}x")
      else:
        cells.append(f"{v:.4f}{mark} | {paper:g}")
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  env = result.get("environment", {})
  lines.append("")
  lines.append(f"Measured: mean over {result.get('images')} images, {result.get('windows_per_image'):.0f} windows per "
               f"image; R-CNN run on {result.get('rcnn_windows_run'):.0f} windows per image"
               + (" and its conv time scaled linearly to all windows" if ext else "") + ". "
               f"Device: {env.get('jax_device')} x{env.get('jax_devices')} ({env.get('cpu')}); jax {env.get('jax')}, flax {env.get('flax')}. "
               "Paper: GPU (GTX Titan), Caffe, ZF-5, ~2,000 windows, mean over 100 VOC images.")
  return "\n".join(lines)
