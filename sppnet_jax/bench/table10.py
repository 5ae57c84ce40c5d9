"""Table 10 at the paper's scale: about 2,000 selective-search windows per real photo, full-width ZF-5.

The photos are scikit-image's bundled colour photographs (``PHOTOS``); the windows are the
project's selective search in fast mode (``detection.proposals.selective_search``), the first
``max_windows`` of each image's list, as the paper took about 2,000 per VOC image. SPP 1-scale
(688), SPP 5-scale (480-1200) and R-CNN (warp 224) are timed by ``detection.timing`` on the same
images, windows and network; R-CNN's conv time is run on ``rcnn_windows`` windows per image and
scaled linearly to all of them (marked as extrapolated in the table).

Beside the table, in the same process: the machine's float32 matmul rate (``n x n``, n = 1,024
and 2,048, ``bench.hardware.measure_matmul_flops``), fc6 + fc7 alone over ``max_windows``
pooled windows (16-bit, as the detection cache holds them; median of 5 after a warm-up) with its
achieved FLOP/s and fraction of the faster matmul rate, and the same fraction for each row's fc
time (which for SPP includes pooling the windows).

Run from ``.venv`` or ``.venv-bench``::

    python -m sppnet_jax.bench.table10 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Colour photographs shipped inside scikit-image (no download): 512x512, 400x600 and 427x640.
PHOTOS = ("astronaut", "coffee", "rocket")


def photos(names: Sequence[str] = PHOTOS) -> list[np.ndarray]:
  """The named scikit-image photos as uint8 (H, W, 3)."""
  import skimage.data
  return [np.asarray(getattr(skimage.data, name)())[..., :3].astype(np.uint8) for name in names]


def windows_for(images: Sequence[np.ndarray], max_windows: int) -> tuple[list[np.ndarray], list[float]]:
  """Selective search (fast mode) on each image, the first ``max_windows`` boxes; and seconds per image."""
  from sppnet_jax.detection import proposals
  windows, seconds = [], []
  for image in images:
    start = time.perf_counter()
    boxes = proposals.selective_search(image)
    seconds.append(time.perf_counter() - start)
    windows.append(np.asarray(boxes[:max_windows], np.float32))
  return windows, seconds


def pooled_dim(model) -> int:
  """Length of one window's pooled vector: the last conv's channels times the pyramid's bins."""
  from sppnet_jax import models, ops
  channels = [layer.features for layer in model.layers if isinstance(layer, models.Conv)][-1]
  return ops.spp_output_dim(channels, model.levels)


def fc_flops(model, windows: float) -> float:
  """FLOPs of fc6 + fc7 over ``windows`` pooled vectors of ``model`` (2 per multiply-add)."""
  d, f = pooled_dim(model), model.fc_width
  return 2.0 * windows * (d * f + f * f)


def fc_rate(model, params, windows: int, repeats: int = 5) -> dict:
  """fc6 + fc7 alone over ``windows`` random 16-bit pooled vectors: median seconds and FLOP/s."""
  from sppnet_jax.detection import features
  from sppnet_jax.timing import median_ms
  pooled = np.random.default_rng(0).random((windows, pooled_dim(model))).astype(np.float16)
  ms, runs = median_ms(lambda: features.fc7_features(params["head"], pooled), repeats)
  return {"windows": windows, "seconds": ms / 1e3, "runs": runs, "flops_per_s": fc_flops(model, windows) / (ms / 1e3)}


def run(max_windows: int = 2000, rcnn_windows: int = 128, names: Sequence[str] = PHOTOS) -> dict:
  """Table 10 timings (``detection.timing.time_detection``) on the photos, with the search's own
  figures, the matmul rate and the fc layers' achieved rate."""
  from sppnet_jax import models
  from sppnet_jax.bench.hardware import measure_matmul_flops
  from sppnet_jax.detection import features, timing
  matmul = {n: measure_matmul_flops("float32", n) for n in (1024, 2048)}
  images = photos(names)
  windows, search_s = windows_for(images, max_windows)
  model = models.create_model("zf5", num_classes=21)
  params = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  result = timing.time_detection(model, params, images, windows, features.FeatureSettings(scales=(688,)),
                                 features.FeatureSettings(scales=features.PAPER_SCALES_5), warp_size=224,
                                 rcnn_batch=64, rcnn_max_windows=rcnn_windows)
  peak = max(matmul.values())
  fc_alone = fc_rate(model, params, max_windows)
  fc_alone["fraction_of_matmul"] = fc_alone["flops_per_s"] / peak
  for key in ("spp_1scale", "spp_5scale", "rcnn"):
    result[key]["fc_fraction_of_matmul"] = fc_flops(model, result["windows_per_image"]) / result[key]["fc"] / peak
  result.update(photos=list(names), image_hw=[list(im.shape[:2]) for im in images],
                windows_each=[len(w) for w in windows], max_windows=max_windows,
                selective_search_s_per_image=float(np.mean(search_s)),
                matmul_flops_per_s={str(n): v for n, v in matmul.items()}, fc_alone=fc_alone)
  return result


def format_report(result: dict) -> str:
  from sppnet_jax.detection import timing
  shapes = ", ".join(f"{n} {h}x{w} ({k} windows)" for n, (h, w), k in
                     zip(result["photos"], result["image_hw"], result["windows_each"]))
  return "\n".join([
      f"# Table 10 at about {result['max_windows']:,} windows per image", "",
      f"Photos (scikit-image): {shapes}. Windows: selective search, fast mode, the first {result['max_windows']:,} "
      f"of each image ({result['selective_search_s_per_image']:.1f} s per image for the search itself, not in the "
      "table). Full-width ZF-5, float32, random weights (timing does not depend on them).", "",
      timing.format_table(result), "",
      f"Matmul rate (float32, measured in this run): {result['matmul_flops_per_s']['1024'] / 1e9:.0f} GFLOP/s at "
      f"1,024 square, {result['matmul_flops_per_s']['2048'] / 1e9:.0f} at 2,048. fc6 + fc7 alone over "
      f"{result['fc_alone']['windows']:,} windows: {result['fc_alone']['seconds']:.2f} s, "
      f"{result['fc_alone']['flops_per_s'] / 1e9:.0f} GFLOP/s, {100 * result['fc_alone']['fraction_of_matmul']:.0f} % of "
      "the faster matmul rate. Each row's fc time as a fraction of that rate (SPP's includes pooling the windows): "
      + ", ".join(f"{k} {100 * result[k]['fc_fraction_of_matmul']:.0f} %" for k in ("spp_1scale", "spp_5scale", "rcnn"))
      + ".", ""])


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument("--max_windows", type=int, default=2000)
  parser.add_argument("--rcnn_windows", type=int, default=128)
  args = parser.parse_args(argv)
  result = run(args.max_windows, args.rcnn_windows)
  result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  text = format_report(result)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = f"table10_{jax.devices()[0].platform}_{result['date'][:10]}"
  (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
  (out / f"{stem}.md").write_text(text)
  print(text)
  return text


if __name__ == "__main__":
  main()
