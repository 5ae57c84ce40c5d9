"""``sppnet bench``: the benchmark suite, written as JSON and Markdown with device, versions and date.

Sections (each figure a median over >= 5 runs after warm-up, unless the row says otherwise):
  1. pooling: ``roi_spp`` / ``spp`` against a per-box torch adaptive-pooling loop and the
     naive masked-max JAX version (``bench.pooling``); torchvision's roi_pool on a GPU;
  2. training step: ZF-5 and Overfeat-7 SPP networks at 224 and 180 (batch 128 on a GPU,
     a small batch on a CPU), float32 and bfloat16 - images/s and compile time;
  3. detection: per-image conv / fc / total time of SPP 1-scale, SPP 5-scale and R-CNN on
     the same images and trunk (``detection.timing``);
  4. input pipeline: images/s on one core decoding a JPEG and applying the training
     augmentation at 224.
What a section cannot measure on this machine is listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import datetime
import io
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax import models
from sppnet_jax.bench import pooling


def train_step_benchmark(quick: bool, repeats: int = 5) -> list[dict]:
  """Images/s of a full SGD step (forward, backward, update) of the SPP networks."""
  import optax

  from sppnet_jax import train
  on_gpu = jax.devices()[0].platform == "gpu"
  batch = 128 if on_gpu else (4 if quick else 8)
  nets = ("zf5", "overfeat7") if (on_gpu or not quick) else ("zf5",)
  rows = []
  for name in nets:
    for dtype in ("float32", "bfloat16"):
      model = models.create_model(name, dtype=dtype)
      tx = optax.trace(decay=0.9)
      state = train.init_state(model, tx, 224, 0)
      step = jax.jit(train.make_train_step(model, tx), donate_argnums=0)
      for size in (224, 180):
        images = jnp.zeros((batch, size, size, 3), jnp.float32)
        labels = jnp.zeros((batch,), jnp.int32)
        start = time.perf_counter()
        compiled = step.lower(state, images, labels, jnp.float32(0.01), jax.random.key(0)).compile()
        compile_s = time.perf_counter() - start
        holder = {"state": state}

        def run():
          holder["state"], metrics = compiled(holder["state"], images, labels, jnp.float32(0.01), jax.random.key(0))
          jax.block_until_ready(metrics["loss"])

        seconds = pooling.median_ms(run, repeats)[0] / 1e3
        state = holder["state"]
        rows.append({"model": name, "dtype": dtype, "input": size, "batch": batch, "step_ms": 1e3 * seconds,
                     "images_per_s": batch / seconds, "compile_s": compile_s})
  return rows


def input_pipeline_benchmark(n: int = 64) -> dict:
  """Images/s on one core: JPEG decode + the paper's training augmentation at 224."""
  from PIL import Image

  from sppnet_jax.data import augment, sources, synthetic
  data = synthetic.SyntheticClassification("train", n, seed=0, min_side=300, max_side=500)
  jpegs = []
  for i in range(n):
    buffer = io.BytesIO()
    Image.fromarray(data[i]["image"]).save(buffer, format="JPEG", quality=90)
    jpegs.append(buffer.getvalue())
  rng = np.random.default_rng(0)

  def run():
    for blob in jpegs:
      image = sources.to_rgb_uint8(np.asarray(Image.open(io.BytesIO(blob))))
      augment.train_example(image, rng, crop_size=224, short_side=256)

  seconds = pooling.median_ms(run, 5)[0] / 1e3
  return {"images_per_s_per_core": n / seconds, "images": n, "source_short_side": "300-500"}


def detection_benchmark(quick: bool) -> dict:
  from sppnet_jax.detection import features, proposals, timing
  from sppnet_jax.detection.data import get_detection_source
  source = get_detection_source("synthetic", "test", num_examples=2, seed=0)
  examples = [source[i] for i in range(1 if quick else 2)]
  images = [e["image"] for e in examples]
  windows = [proposals.selective_search(im)[:2000] for im in images]
  model = models.create_model("zf5", num_classes=21)
  params = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  on_gpu = jax.devices()[0].platform == "gpu"
  return timing.time_detection(model, params, images, windows, features.FeatureSettings(scales=(688,)),
                               features.FeatureSettings(scales=features.PAPER_SCALES_5), warp_size=224,
                               rcnn_batch=64, rcnn_max_windows=None if on_gpu else 32)


def run_suite(out_dir: str, quick: bool = False) -> str:
  """Runs every section, writes ``bench_<device>_<date>.{json,md}`` into ``out_dir``; returns the Markdown."""
  env = pooling.environment()
  on_gpu = jax.devices()[0].platform == "gpu"
  result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "environment": env, "skipped": []}
  if not on_gpu:
    result["skipped"] += ["torchvision.ops.roi_pool rows: need a GPU", "model FLOPs utilisation and memory-bandwidth "
                          "fractions: need a GPU's peak figures", "PyTorch training-step peer: not implemented yet"]
  result["pooling"] = pooling.run_pooling_benchmark(num_boxes=(64, 2000) if not quick else (64,),
                                                    dtypes=("float32", "bfloat16") if not quick else ("float32",))
  result["train_step"] = train_step_benchmark(quick)
  result["input_pipeline"] = input_pipeline_benchmark(16 if quick else 64)
  result["detection"] = detection_benchmark(quick)

  from sppnet_jax.detection import timing
  lines = [f"# sppnet bench — {result['date']}", "", "```", json.dumps(env, indent=2), "```", "",
           "## 1. Pooling", "", pooling.format_table(result["pooling"]), "",
           "## 2. Training step (forward + backward + SGD update)", "",
           "| model | dtype | input | batch | ms / step | images/s | compile s |", "|---|---|---|---|---:|---:|---:|"]
  lines += [f"| {r['model']} | {r['dtype']} | {r['input']} | {r['batch']} | {r['step_ms']:.1f} | "
            f"{r['images_per_s']:.1f} | {r['compile_s']:.1f} |" for r in result["train_step"]]
  ip = result["input_pipeline"]
  lines += ["", "## 3. Detection (per image)", "", timing.format_table(result["detection"]), "",
            "## 4. Input pipeline", "",
            f"JPEG decode + crop/flip/PCA/normalise at 224: {ip['images_per_s_per_core']:.0f} images/s on one core.", ""]
  if result["skipped"]:
    lines += ["## Skipped", ""] + [f"- {s}" for s in result["skipped"]] + [""]
  text = "\n".join(lines)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stem = f"bench_{'gpu' if on_gpu else 'cpu'}_{result['date'][:10]}"
  (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
  (out / f"{stem}.md").write_text(text)
  return text
