"""Table 10 at the paper's scale: about 2,000 selective-search windows per real photo, full-width ZF-5.

The photos are scikit-image's bundled colour photographs (``PHOTOS``); the windows are the
project's selective search in fast mode (``detection.proposals.selective_search``), the first
``max_windows`` of each image's list, as the paper took about 2,000 per VOC image. SPP 1-scale
(688), SPP 5-scale (480-1200) and R-CNN (warp 224) are timed by ``detection.timing`` on the same
images, windows and network; R-CNN's conv time is run on ``rcnn_windows`` windows per image and
scaled linearly to all of them (marked as extrapolated in the table).

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


def run(max_windows: int = 2000, rcnn_windows: int = 128, names: Sequence[str] = PHOTOS) -> dict:
  """Table 10 timings (``detection.timing.time_detection``) on the photos, with the search's own figures."""
  from sppnet_jax import models
  from sppnet_jax.detection import features, timing
  images = photos(names)
  windows, search_s = windows_for(images, max_windows)
  model = models.create_model("zf5", num_classes=21)
  params = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  result = timing.time_detection(model, params, images, windows, features.FeatureSettings(scales=(688,)),
                                 features.FeatureSettings(scales=features.PAPER_SCALES_5), warp_size=224,
                                 rcnn_batch=64, rcnn_max_windows=rcnn_windows)
  result.update(photos=list(names), image_hw=[list(im.shape[:2]) for im in images],
                windows_each=[len(w) for w in windows], max_windows=max_windows,
                selective_search_s_per_image=float(np.mean(search_s)))
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
      timing.format_table(result), ""])


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
