"""Input-pipeline benchmark: host images/s per core, before and after on-device augmentation,
with 0, 1 and 2 grain workers; pipeline efficiency of the slim training; and a projection of
the host cores an H100 needs.

``sppnet bench-input [--out DIR] [--quick]`` (``python -m sppnet_jax.bench.input``). The
images are photo-like JPEGs (500x375 or 375x500, quality 90) cut from the photographs bundled
with scikit-image, each with its own crop, flip and colour gain, written once to
``DIR/photos``. The rates are taken over whole batches after a warm-up, and "per core" divides
by the CPU time every process of the pipeline spent (the training process and its grain
workers, from ``psutil``), so a pipeline that keeps two cores busy is not counted as one.

* before: the host transform as it was (decode, resize, crop, flip, colour noise, mean image,
  float32 out: ``augment.train_example``);
* after: the host decodes, cuts the crop's source pixels onto a uint8 canvas and draws the
  flip and noise (``device_augment.draws``); resampling and the float work run in the jitted
  step.

The two paths alternate within each round (for every worker count), and the speed-up is the
geometric mean of the rounds' after/before ratios of images per core-second with its 95 % t
interval (``stats.ratio_interval``): the CPU's speed drifts between minutes, so only ratios
taken side by side are compared.

Efficiency: end-to-end training images/s (the slim single-size config, its own in-memory
data, through ``global_batch`` and the compiled step) divided by the step alone on one
resident batch, timed back to back in each of 5 repeats (geometric mean of the ratios, 95 %
interval); with the slim config's host augmentation and with ``data.device_augment``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Any

import numpy as np

__all__ = ["make_photos", "pipeline_rate", "rates", "speedups", "efficiency", "projection", "run", "main"]

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "cat")


def make_photos(folder: pathlib.Path, n: int, seed: int = 0, classes: int = 4) -> pathlib.Path:
  """``n`` JPEGs (quality 90) in ``folder/c<k>/``: 500x375 (one in four 375x500) crops of the
  scikit-image photographs, each with its own window, flip and per-channel gain."""
  import skimage.data
  from PIL import Image

  folder = pathlib.Path(folder)
  if len(list(folder.glob("c*/*.jpg"))) == n:
    return folder
  rng = np.random.default_rng(seed)
  photos = [np.asarray(getattr(skimage.data, name)()) for name in PHOTOS]
  for k in range(n):
    photo = photos[k % len(photos)]
    out_w, out_h = (375, 500) if k % 4 == 3 else (500, 375)
    h, w = photo.shape[:2]
    scale = rng.uniform(0.6, 1.0) * min(h / out_h, w / out_w)
    ch, cw = int(out_h * scale), int(out_w * scale)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = Image.fromarray(photo[top:top + ch, left:left + cw]).resize((out_w, out_h), Image.BILINEAR)
    x = np.asarray(window, np.float32) * rng.uniform(0.85, 1.15, 3)
    x = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
      x = x[:, ::-1]
    path = folder / f"c{k % classes}" / f"img{k:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(x)).save(path, quality=90)
  return folder


def _cpu_seconds(process) -> float:
  """CPU time of ``process`` and its live children (grain workers)."""
  total = 0.0
  for p in [process, *process.children(recursive=True)]:
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except Exception:  # a child that just ended
      pass
  return total


@dataclasses.dataclass(frozen=True)
class Rate:
  images_per_s: float
  images_per_core_s: float
  cpu_seconds: float
  images: int


def pipeline_rate(source, *, worker_count: int, on_device: bool, batch_size: int = 32, batches: int = 12,
                  warmup: int = 2, crop_size: int = 224, short_side: int = 256, mean=None) -> Rate:
  """Images/s and images per CPU-second of one epoch's training batches (after ``warmup`` batches)."""
  import psutil

  from sppnet_jax.data import pipeline

  me = psutil.Process()
  it = pipeline.train_batches(source, batch_size=batch_size, seed=0, epoch=0, crop_size=crop_size,
                              short_side=short_side, pca_std=0.1, mean=mean, worker_count=worker_count,
                              on_device=on_device)
  for _ in range(warmup):
    next(it)
  cpu0, t0 = _cpu_seconds(me), time.perf_counter()
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - t0, _cpu_seconds(me) - cpu0
  del it
  n = batches * batch_size
  return Rate(n / wall, n / max(cpu, 1e-9), cpu, n)


def efficiency(repeats: int = 5, steps: int = 32, device_augment: bool = False) -> dict[str, Any]:
  """End-to-end ÷ step-only training images/s of the slim single-size config, with its host
  augmentation or (``device_augment``) uint8 canvases finished in the step: each repeat times
  the two back to back, and the efficiency is the geometric mean of the repeats' ratios with its
  95 % interval."""
  import jax

  from sppnet_jax import configs, state as state_lib, stats, train, workdir as workdir_lib
  from sppnet_jax.data import pipeline, sources

  config = configs.synthetic("single")
  config.data.device_augment = device_augment
  t, d = config.train, config.data
  source = workdir_lib.config_source(d, "train")
  model = state_lib.build_model(config, sources.num_classes(d.name))
  tx = state_lib.make_optimizer(config)
  mesh = train.make_mesh()
  state = train._replicated(state_lib.init_state(model, tx, d.crop_size, t.seed), mesh)
  steps_fn, names = train.compiled_steps(config, model, tx, state, mesh, "per_image")
  step = steps_fn[(d.crop_size, d.crop_size)]
  key = jax.device_put(jax.random.key(0), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

  def batches(epoch):
    return pipeline.train_batches(source, batch_size=t.batch_size, seed=t.seed, epoch=epoch, crop_size=d.crop_size,
                                  short_side=d.short_side, pca_std=d.pca_std, mean="per_image", worker_count=0,
                                  on_device=device_augment)

  for _ in batches(0):  # renders every example into the in-memory cache, as the first epoch of a run does
    pass
  inputs = train.global_batch(next(batches(1)), mesh, names)
  state, _ = step(state, *inputs, key)
  jax.block_until_ready(state)
  end_to_end, step_only = [], []
  for r in range(repeats):
    t0 = time.perf_counter()
    for i, batch in enumerate(batches(2 + r)):
      if i == steps:
        break
      state, metrics = step(state, *train.global_batch(batch, mesh, names), key)
    jax.block_until_ready(state)
    end_to_end.append(steps * t.batch_size / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, *inputs, key)
    jax.block_until_ready(state)
    step_only.append(steps * t.batch_size / (time.perf_counter() - t0))
  ratio = stats.ratio_interval([a / b for a, b in zip(end_to_end, step_only)])
  return {"device_augment": device_augment, "end_to_end_images_per_s": float(np.median(end_to_end)),
          "step_only_images_per_s": float(np.median(step_only)), "efficiency": ratio.mean,
          "efficiency_low": ratio.low, "efficiency_high": ratio.high,
          "runs": {"end_to_end": end_to_end, "step_only": step_only}, "steps": steps, "batch_size": t.batch_size}


def projection(per_core: float, mfu: float = 0.4) -> list[dict[str, Any]]:
  """Host cores per H100 SXM for ImageNet training at the paper's 224 crops (a projection):
  images/s the GPU would take at ``mfu`` of its dense BF16 peak, divided by ``per_core``."""
  from sppnet_jax import models
  from sppnet_jax.bench import hardware

  peak = 1979e12 / 2  # dense BF16, H100 SXM spec sheet
  rows = []
  for name in ("zf5", "overfeat7"):
    model = models.create_model(name, num_classes=1000)
    flops = hardware.train_step_flops(model, (224, 224), 1)
    images_per_s = mfu * peak / flops
    rows.append({"model": name, "train_gflops_per_image": flops / 1e9, "gpu_images_per_s": images_per_s,
                 "cores": images_per_s / per_core, "epoch_minutes": 1_281_167 / images_per_s / 60, "mfu": mfu})
  return rows


def rates(source, *, rounds: int, batches: int, mean, worker_counts=(0, 1, 2)) -> list[dict[str, Any]]:
  """Every (round, worker count, path) rate, the paths alternating within a round."""
  rows = []
  for r in range(rounds):
    for workers in worker_counts:
      for on_device in (False, True):
        rate = pipeline_rate(source, worker_count=workers, on_device=on_device, batches=batches, mean=mean)
        rows.append({"round": r, "path": "after" if on_device else "before", "workers": workers,
                     **dataclasses.asdict(rate)})
        print(f"round {r} workers={workers} {rows[-1]['path']:6s}: {rate.images_per_s:7.1f} images/s, "
              f"{rate.images_per_core_s:7.1f} per core-second", flush=True)
  return rows


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Per worker count: median rates of each path and the after/before ratio of images per
  core-second over the rounds (geometric mean, 95 % interval)."""
  from sppnet_jax import stats

  out = []
  for workers in sorted({r["workers"] for r in rows}):
    per = {path: {r["round"]: r for r in rows if r["workers"] == workers and r["path"] == path}
           for path in ("before", "after")}
    rounds = sorted(per["before"].keys() & per["after"].keys())
    ratio = stats.ratio_interval([per["after"][k]["images_per_core_s"] / per["before"][k]["images_per_core_s"]
                                  for k in rounds])
    out.append({"workers": workers, "rounds": len(rounds),
                **{f"{path}_per_core_s": float(np.median([per[path][k]["images_per_core_s"] for k in rounds]))
                   for path in ("before", "after")},
                **{f"{path}_images_per_s": float(np.median([per[path][k]["images_per_s"] for k in rounds]))
                   for path in ("before", "after")},
                "speedup": ratio.mean, "speedup_low": ratio.low, "speedup_high": ratio.high})
  return out


def run(out: str | pathlib.Path, quick: bool = False) -> dict[str, Any]:
  from sppnet_jax import timing
  from sppnet_jax.data import sources

  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  n = 160 if quick else 480
  source = sources.ImageFolderSource(make_photos(out / f"photos_{n}", n))
  mean = np.full((224, 224, 3), 117.0, np.float32)  # a mean image: the paper's normalisation
  rows = rates(source, rounds=2 if quick else 5, batches=3 if quick else 12, mean=mean)
  summary = speedups(rows)
  for s in summary:
    print(f"workers={s['workers']}: per core-second {s['before_per_core_s']:.0f} before, {s['after_per_core_s']:.0f} "
          f"after: {s['speedup']:.2f}x [{s['speedup_low']:.2f}, {s['speedup_high']:.2f}] over {s['rounds']} rounds",
          flush=True)
  eff = [efficiency(repeats=2 if quick else 5, steps=8 if quick else 32, device_augment=on) for on in (False, True)]
  for e in eff:
    print(f"efficiency ({'device' if e['device_augment'] else 'host'} augmentation): {e['efficiency']:.3f} "
          f"[{e['efficiency_low']:.3f}, {e['efficiency_high']:.3f}] (medians {e['end_to_end_images_per_s']:.0f} / "
          f"{e['step_only_images_per_s']:.0f} images/s)", flush=True)
  best_after = max(s["after_per_core_s"] for s in summary)
  result = {"environment": timing.environment(), "input": rows, "speedups": summary, "efficiency": eff,
            "projection": projection(best_after), "images": n}
  (out / "input.json").write_text(json.dumps(result, indent=2))
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/input")
  parser.add_argument("--quick", action="store_true")
  args = parser.parse_args(argv)
  print(json.dumps(run(args.out, args.quick), indent=2))


if __name__ == "__main__":
  main()
