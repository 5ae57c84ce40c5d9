"""``sppnet bench``: the benchmark suite, written as JSON and Markdown with device, versions and date.

Sections (each figure a median over >= 5 runs after warm-up, unless the row says otherwise):
  1. pooling: ``roi_spp`` / ``spp`` against a per-box torch adaptive-pooling loop and the
     naive masked-max JAX version (``bench.pooling``); the library's achieved bytes/s under
     the minimal-bytes model as a fraction of the peak bandwidth; then ``roi_spp`` beside
     torchvision's ``roi_pool`` (64 to 20,000 boxes; small, random and large) and
     ``detection.boxes.nms`` beside torchvision's ``nms`` (2,000 and 20,000 boxes), each pair
     checked to give identical outputs before it is timed (``bench.torchvision_peer``; needs
     torchvision, i.e. run from ``.venv-bench``);
  2. training step: ZF-5 and Overfeat-7 SPP networks at 224 and 180 (batch 128 on a GPU,
     a small batch on a CPU), float32 and bfloat16 - images/s, compile time, TFLOP/s and
     MFU, each JAX row next to the PyTorch peer's (``bench.torch_peer``);
  3. detection: per-image conv / fc / total time of SPP 1-scale, SPP 5-scale and R-CNN on
     the same images and trunk (``detection.timing``);
  4. input pipeline: images/s on one core decoding a JPEG and applying the training
     augmentation at 224.
Peaks (``bench.hardware``): spec-sheet figures on a known GPU, else a matmul and a streaming
pass measured at the start of the run; every fraction names its denominator.
What a section cannot measure on this machine is listed under ``skipped`` with the reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax import models
from sppnet_jax.bench import hardware, pooling, torchvision_peer
from sppnet_jax.timing import environment, median_ms


def _torch_peer():
  """The torch peer module, or None when torch is not installed."""
  try:
    from sppnet_jax.bench import torch_peer
  except ImportError:
    return None
  return torch_peer


def _with_flops(row: dict, model: models.SPPNet, peaks: hardware.Peaks) -> dict:
  """Adds GFLOP per step, achieved TFLOP/s and MFU (against the peak of the row's dtype) to a timed row."""
  flops = hardware.train_step_flops(model, (row["input"], row["input"]), row["batch"])
  achieved = flops / (row["step_ms"] * 1e-3)
  return dict(row, gflop_per_step=flops / 1e9, tflops_per_s=achieved / 1e12,
              mfu=hardware.utilisation(achieved, peaks.flops_per_s.get(row["dtype"])),
              mfu_of=peaks.flops_label.get(row["dtype"]))


def _torch_row(peer, model: models.SPPNet, jax_row: dict, peaks: hardware.Peaks, repeats: int,
               compile_model: bool) -> dict:
  """The torch peer's row for the JAX row's model, dtype, input and batch, with the JAX / torch speed ratio."""
  keys = {k: jax_row[k] for k in ("model", "dtype", "input", "batch")}
  if peer is None:
    return dict(keys, framework="torch", note="skipped: torch not installed")
  timed = peer.train_step_benchmark(model, jax_row["dtype"], jax_row["input"], jax_row["batch"], repeats,
                                    compile_model)
  parts = ["torch.compile" if compile_model else "eager, no torch.compile", "channels_last"]
  parts += ["bfloat16 autocast"] if jax_row["dtype"] == "bfloat16" else []
  row = dict(keys, framework="torch", step_ms=timed["step_ms"], images_per_s=timed["images_per_s"],
             compile_s=timed["compile_s"], note=", ".join(parts))
  return dict(_with_flops(row, model, peaks), jax_over_torch=jax_row["images_per_s"] / timed["images_per_s"])


def train_step_benchmark(quick: bool, peaks: hardware.Peaks, torch_compile: bool, repeats: int = 5) -> list[dict]:
  """Images/s, TFLOP/s and MFU of a full SGD step (forward, backward, update) of the SPP networks.

  Each JAX row is followed by the torch peer's row (``bench.torch_peer``) for the same model,
  dtype, input and batch; ``jax_over_torch`` on it is JAX images/s over torch images/s.
  ``compile_s``: JAX's ahead-of-time compile; torch's first step (compiling included with
  ``torch_compile``, else eager warm-up).
  """
  from sppnet_jax.bench import train_step
  peer = _torch_peer()
  on_gpu = jax.devices()[0].platform == "gpu"
  batch = 128 if on_gpu else (4 if quick else 8)
  nets = ("zf5", "overfeat7") if (on_gpu or not quick) else ("zf5",)
  rows = []
  for name in nets:
    for dtype in ("float32", "bfloat16"):
      model = models.create_model(name, dtype=dtype)
      for size in (224, 180):
        run, compile_s = train_step.jax_runner(model, size, batch)
        seconds = median_ms(run, repeats)[0] / 1e3
        jax_row = _with_flops({"model": name, "dtype": dtype, "input": size, "batch": batch, "framework": "jax",
                               "step_ms": 1e3 * seconds, "images_per_s": batch / seconds, "compile_s": compile_s,
                               "note": "jit"}, model, peaks)
        rows += [jax_row, _torch_row(peer, model, jax_row, peaks, repeats, torch_compile)]
  return rows


def pooling_bandwidth(rows: Sequence[dict], peaks: hardware.Peaks) -> list[dict]:
  """Achieved bytes/s of the library's timed ``roi_spp`` and ``spp`` rows under the minimal-bytes
  model (``pooling.minimal_bytes``: maps read once, output written once) and its fraction of the
  peak bandwidth."""
  out = []
  for row in rows:
    if row["ms"] is None or row.get("min_bytes") is None:
      continue
    achieved = row["min_bytes"] / (row["ms"] * 1e-3)
    out.append({"op": row["op"], "dtype": row["dtype"], "shape": row["shape"], "boxes": row["boxes"], "ms": row["ms"],
                "min_mb": row["min_bytes"] / 1e6, "gb_per_s": achieved / 1e9,
                "bandwidth_fraction": hardware.utilisation(achieved, peaks.bytes_per_s), "of": peaks.bytes_label})
  return out


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

  seconds = median_ms(run, 5)[0] / 1e3
  return {"images_per_s_per_core": n / seconds, "images": n, "source_short_side": "300-500"}


def proposals_benchmark(num_images: int, max_sides: Sequence[int | None] = (None, 250)) -> list[dict]:
  """Selective search (fast mode) on the built-in detection test scenes: boxes and seconds per
  image (mean over the images, one run each) and recall of all GT boxes at IoU 0.5 and 0.7, at
  full resolution and on downscaled copies (``max_side``, as the slim detection config)."""
  from sppnet_jax.detection import proposals
  from sppnet_jax.detection.data import get_detection_source
  source = get_detection_source("synthetic", "test", num_examples=num_images, seed=0)
  examples = [source[i] for i in range(num_images)]
  rows = []
  for max_side in max_sides:
    boxes, seconds = [], []
    for example in examples:
      start = time.perf_counter()
      boxes.append(proposals.selective_search(example["image"], max_side=max_side))
      seconds.append(time.perf_counter() - start)
    gt = [e["boxes"] for e in examples]
    rows.append({"max_side": max_side, "images": num_images, "image_hw": [list(e["image"].shape[:2]) for e in examples],
                 "boxes_per_image": float(np.mean([len(b) for b in boxes])), "seconds_per_image": float(np.mean(seconds)),
                 "gt_boxes": int(sum(len(g) for g in gt)), "recall_0.5": proposals.recall(boxes, gt, 0.5),
                 "recall_0.7": proposals.recall(boxes, gt, 0.7)})
  return rows


def format_proposals_table(rows: Sequence[dict]) -> str:
  lines = ["| search on | images | GT boxes | boxes / image | s / image | recall IoU 0.5 | recall IoU 0.7 |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    where = "full image" if r["max_side"] is None else f"copy with long side {r['max_side']}"
    lines.append(f"| {where} | {r['images']} | {r['gt_boxes']} | {r['boxes_per_image']:.0f} | "
                 f"{r['seconds_per_image']:.2f} | {r['recall_0.5']:.3f} | {r['recall_0.7']:.3f} |")
  return "\n".join(lines)


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


def torchvision_benchmark(quick: bool, repeats: int = 5) -> dict:
  """roi_spp against torchvision roi_pool and NMS against torchvision nms (``bench.torchvision_peer``),
  with torch on 2 threads at most. quick: 64 and 2,000 boxes and NMS on 2,000."""
  try:
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
  except ImportError:
    pass
  counts = (64, 2000) if quick else (64, 300, 2000, 20000)
  return {"roi_spp": torchvision_peer.roi_spp_rows(num_boxes=counts, repeats=repeats),
          "nms": torchvision_peer.nms_rows(num_boxes=(2000,) if quick else (2000, 20000), repeats=repeats)}


def torchvision_section(result: dict, peaks: hardware.Peaks) -> list[str]:
  """Markdown lines of the torchvision comparison."""
  tv = result["torchvision"]
  return ["### roi_spp and torchvision roi_pool, same boxes", "",
          torchvision_peer.format_roi_table(tv["roi_spp"], peaks.bytes_per_s, peaks.bytes_label), "",
          "### NMS and torchvision nms, same boxes", "", torchvision_peer.format_nms_table(tv["nms"]), ""]


def run_torchvision_suite(out_dir: str, quick: bool = False) -> str:
  """Only the torchvision comparison (with the environment and the measured bandwidth), written as
  ``bench_torchvision_<device>_<date>.{json,md}`` into ``out_dir``; returns the Markdown. The full
  suite (``run_suite``) has the same rows."""
  env = environment()
  on_gpu = jax.devices()[0].platform == "gpu"
  peaks = hardware.device_peaks()
  result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "environment": env, "peaks": dataclasses.asdict(peaks),
                  "torchvision": torchvision_benchmark(quick)}
  env = environment()  # torch's thread count as used
  result["environment"] = env
  lines = [f"# sppnet bench, torchvision rows — {result['date']}", "", "```", json.dumps(env, indent=2), "```", "",
           format_peaks(peaks), ""] + torchvision_section(result, peaks)
  text = "\n".join(lines)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  stem = f"bench_torchvision_{'gpu' if on_gpu else 'cpu'}_{result['date'][:10]}"
  (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
  (out / f"{stem}.md").write_text(text)
  return text


def _number(value, digits: int) -> str:
  return "" if value is None else f"{value:.{digits}f}"


def format_train_table(rows: Sequence[dict], peaks: hardware.Peaks) -> str:
  """Markdown table of the training-step rows and the FLOP convention."""
  utilisation = "fraction of measured matmul peak" if peaks.measured else "MFU (of spec peak)"
  lines = ["| model | dtype | input | batch | framework | ms / step | images/s | compile s | GFLOP / step | "
           f"TFLOP/s | {utilisation} | JAX / torch | note |",
           "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    lines.append(f"| {r['model']} | {r['dtype']} | {r['input']} | {r['batch']} | {r['framework']} | "
                 f"{_number(r.get('step_ms'), 1)} | {_number(r.get('images_per_s'), 1)} | "
                 f"{_number(r.get('compile_s'), 1)} | {_number(r.get('gflop_per_step'), 1)} | "
                 f"{_number(r.get('tflops_per_s'), 4)} | {_number(r.get('mfu'), 3)} | "
                 f"{_number(r.get('jax_over_torch'), 2)} | {r.get('note', '')} |")
  labels = "; ".join(f"{dtype} rows: fraction {label}" for dtype, label in peaks.flops_label.items())
  lines += ["", "FLOPs per step: conv and fc multiply-adds x 2 for the forward pass, x 3 for forward + backward "
            "(``bench.hardware``); ReLU, LRN, pooling, loss and update not counted. "
            f"{utilisation}: achieved FLOP/s over the peak of the row's dtype ({labels}). JAX / torch: JAX "
            "images/s over the torch peer's, same model, dtype, input and batch (above 1: JAX faster). "
            "compile s: JAX's ahead-of-time compile; torch's first step."]
  return "\n".join(lines)


def format_bandwidth_table(rows: Sequence[dict]) -> str:
  """Markdown table of the pooling ops' achieved bandwidth under the minimal-bytes model."""
  header = f"fraction {rows[0]['of']}" if rows else "fraction of bandwidth"
  lines = [f"| op | dtype | input | boxes | ms | minimal MB | GB/s | {header} |",
           "|---|---|---|---|---:|---:|---:|---:|"]
  lines += [f"| {r['op']} | {r['dtype']} | {r['shape']} | {r['boxes']} | {r['ms']:.2f} | {r['min_mb']:.2f} | "
            f"{r['gb_per_s']:.2f} | {_number(r['bandwidth_fraction'], 4)} |" for r in rows]
  if rows:
    lines += ["", "Minimal bytes: the conv map(s) read once and the pooled output written once. The GB/s column "
              "of the table above counts roi_spp's own algorithm's bytes instead."]
  return "\n".join(lines)


def format_peaks(peaks: hardware.Peaks) -> str:
  flops = ", ".join(f"{dtype} {value / 1e12:.3f} TFLOP/s" for dtype, value in peaks.flops_per_s.items())
  return f"Peaks ({peaks.source}; device {peaks.device}): {flops}; {peaks.bytes_per_s / 1e9:.1f} GB/s."


def skipped_entries(on_gpu: bool, peaks: hardware.Peaks, torch_compile: bool) -> list[str]:
  """What this run could not measure, with the reason."""
  skipped = []
  reason = torchvision_peer.torchvision_ops()[3]
  if reason:
    skipped.append(f"torchvision roi_pool and nms rows: {reason}")
  if peaks.measured:
    skipped.append(f"MFU and bandwidth against spec-sheet peaks: need a GPU in hardware.SPEC_SHEETS (this device: "
                   f"{peaks.device}); the fractions here are of peaks measured in this run")
  if _torch_peer() is None:
    skipped.append("PyTorch training-step peer: torch not installed")
  elif not torch_compile:
    skipped.append("torch.compile for the torch peer: off in this run, the peer runs eager (the default in quick "
                   "mode; compiling ZF-5 took about a minute per shape on a 2-core CPU; --torch_compile turns it on)")
  return skipped


def run_suite(out_dir: str, quick: bool = False, torch_compile: bool | None = None) -> str:
  """Runs every section, writes ``bench_<device>_<date>.{json,md}`` into ``out_dir``; returns the Markdown.

  ``torch_compile``: compile the torch peer's step; None compiles except with ``quick``.
  """
  env = environment()
  on_gpu = jax.devices()[0].platform == "gpu"
  torch_compile = (not quick) if torch_compile is None else torch_compile
  peaks = hardware.device_peaks()
  result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "environment": env, "peaks": dataclasses.asdict(peaks),
                  "skipped": skipped_entries(on_gpu, peaks, torch_compile)}
  result["pooling"] = pooling.run_pooling_benchmark(num_boxes=(64, 2000) if not quick else (64,),
                                                    dtypes=("float32", "bfloat16") if not quick else ("float32",))
  result["pooling_bandwidth"] = pooling_bandwidth(result["pooling"], peaks)
  result["torchvision"] = torchvision_benchmark(quick)
  result["train_step"] = train_step_benchmark(quick, peaks, torch_compile)
  result["input_pipeline"] = input_pipeline_benchmark(16 if quick else 64)
  result["detection"] = detection_benchmark(quick)
  result["proposals"] = proposals_benchmark(4 if quick else 20)

  from sppnet_jax.detection import timing
  ip = result["input_pipeline"]
  lines = [f"# sppnet bench — {result['date']}", "", "```", json.dumps(env, indent=2), "```", "",
           format_peaks(peaks), "",
           "## 1. Pooling", "", pooling.format_table(result["pooling"]), "",
           "### Achieved bandwidth (minimal bytes)", "", format_bandwidth_table(result["pooling_bandwidth"]), "",
           *torchvision_section(result, peaks),
           "## 2. Training step (forward + backward + SGD update), JAX and the PyTorch peer", "",
           format_train_table(result["train_step"], peaks), "",
           "## 3. Detection (per image)", "", timing.format_table(result["detection"]), "",
           "### Selective search on the built-in detection scenes", "", format_proposals_table(result["proposals"]), "",
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
