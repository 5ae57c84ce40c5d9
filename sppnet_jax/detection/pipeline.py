"""The SPP-net detection system (paper section 4 / the released code), end to end.

``train_and_evaluate_detection(config, workdir)`` runs these stages; each names its output and is
skipped when that output exists. A changed config is refused while an output that depends on a
changed field exists (``TRAINED_OUTPUTS``), unless ``start_over`` (``sppnet detect --start_over``),
which removes just those outputs: a new ``svm.C`` or ``test.nms`` keeps the fine-tuned head, and the
cached features, keyed by what they depend on, always stay valid. The config is validated in full
(:func:`~sppnet_jax.detection.config.validate_detection_config`), and the trunk, the data and any
proposal files are checked, before anything is written:

=============  ==========================================  =====================================
stage          output                                      room
=============  ==========================================  =====================================
features       ``cache/<key>/{train,test}-<split>/*.npz``   :mod:`~sppnet_jax.detection.cache`
head           ``system/head``                             :mod:`~sppnet_jax.detection.finetune`
svms           ``system/svms``                             :mod:`~sppnet_jax.detection.svm`
bbox           ``system/bbox``                             :mod:`~sppnet_jax.detection.bbox_regression`
test           ``metrics.json``, ``detections.npz``        :mod:`~sppnet_jax.detection.system`
=============  ==========================================  =====================================

The config is :func:`~sppnet_jax.detection.config.detection_config`; the trunk comes from
:mod:`~sppnet_jax.detection.trunk`; the trained parts together are a
:class:`~sppnet_jax.detection.system.DetectionSystem` (``DetectionSystem.restore(workdir).detect(image)``);
drawing is in :mod:`~sppnet_jax.detection.visualize`. Every stage reads the feature cache one image
(or one pool of images, or one read of ``svm.read_images``) at a time, and the SVMs' hard-negative
caches are capped (``svm.max_negatives``), so memory does not grow with the number of images.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from sppnet_jax import run_files, workdir as workdir_lib
from sppnet_jax.detection import bbox_regression, cache, data as det_data, finetune
from sppnet_jax.detection import svm as svm_lib, system as system_lib
from sppnet_jax.detection import features as feats
from sppnet_jax.detection.config import detection_config, validate_detection_config, with_resolved_trunk
from sppnet_jax.detection.trunk import load_trunk
from sppnet_jax.detection.visualize import detect_image, draw_detections, select_drawn

_TEST_FIELDS = ("test", "test_split", "num_test")
# Each trained output with the config fields (or sections) it does not depend on; every other field
# may change it. The cached features are keyed by what they depend on (cache.cache_key) and never go stale.
TRAINED_OUTPUTS: dict[str, tuple[str, ...]] = {
    f"{system_lib.SYSTEM_DIR}/finetune": ("svm", "bbox", *_TEST_FIELDS),  # fine-tuning checkpoints
    f"{system_lib.SYSTEM_DIR}/head": ("svm", "bbox", *_TEST_FIELDS),
    f"{system_lib.SYSTEM_DIR}/svms": ("bbox", *_TEST_FIELDS),
    f"{system_lib.SYSTEM_DIR}/bbox": ("finetune", "svm", *_TEST_FIELDS),  # regresses from pool5, not the head
    "metrics.json": (),
    "detections.npz": (),
}


def stale_outputs(changed: Sequence[str]) -> list[str]:
  """The trained outputs (``TRAINED_OUTPUTS``) that depend on any of the dotted config fields ``changed``."""
  def depends(output: str, field: str) -> bool:
    return not any(field == f or field.startswith(f + ".") for f in TRAINED_OUTPUTS[output])
  return [out for out in TRAINED_OUTPUTS if any(depends(out, field) for field in changed)]


def _start_over_hint(stale: Sequence[str], kept: Sequence[str]) -> str:
  """How to go on in a workdir whose outputs ``stale`` a changed config makes stale."""
  keeps = ", ".join(["the cached features", *kept])
  return (f"To use this config here, rerun with --start_over (start_over=True in Python): it removes and redoes "
          f"{', '.join(stale)} and keeps {keeps}.")


def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path, start_over: bool = False) -> None:
  """Writes ``config.json`` under the project's one policy (``workdir.write_config``): a changed
  config is refused while the workdir holds a trained output that depends on a changed field
  (:func:`stale_outputs`), unless ``start_over``, which removes those outputs. Outputs the change
  does not touch are kept (a new ``svm.C`` keeps the fine-tuned head), and so are the cached features."""
  path = workdir / "config.json"
  if path.exists():  # written before trunk paths were stored resolved: the same trunk, not a change
    old = workdir_lib.read_config(workdir)
    trunk = (old.get("trunk") or {}).get("workdir")
    if trunk and not os.path.isabs(trunk):
      old["trunk"]["workdir"] = str(pathlib.Path(trunk).expanduser().resolve())
      run_files.write_json(path, old, indent=2, sort_keys=True)
  changed = workdir_lib.check_config(config, workdir, has_outputs=lambda w: False)
  present = [name for name in TRAINED_OUTPUTS if (workdir / name).exists()]
  stale = [name for name in stale_outputs(changed) if name in present]
  workdir_lib.write_config(config, workdir, has_outputs=lambda w: bool(stale), start_over=start_over,
                           hint=_start_over_hint(stale, [name for name in present if name not in stale]))
  for name in stale:
    p = workdir / name
    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def _precomputed_proposals(config: ml_collections.ConfigDict, sources: dict) -> dict:
  """The precomputed proposals of the train and test splits (None where there are none), read and
  checked against the splits' sizes (``sources``: kind -> source) before anything is written."""
  out = {}
  for kind, source in sources.items():
    out[kind] = cache.precomputed_proposals(config, kind)
    cache.check_precomputed(out[kind], len(source), kind)
  return out


def stage(name: str, output: pathlib.Path, run: Callable[[], Any], load: Callable[[], Any],
          log: Callable[[str], None]) -> Any:
  """``load()`` if ``output`` exists, else ``run()`` (which writes ``output``)."""
  if output.exists():
    log(f"{name}: reused {output}")
    return load()
  start = time.time()
  value = run()
  log(f"{name}: wrote {output} ({time.time() - start:.1f} s; peak memory so far {peak_rss_gib():.2f} GiB)")
  return value


def peak_rss_gib() -> float:
  """This process's peak resident set size so far (``getrusage``), in GiB."""
  import resource
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
  return peak / (2**30 if sys.platform == "darwin" else 2**20)


def _sources(config: ml_collections.ConfigDict):
  get = lambda split, n: det_data.get_detection_source(config.dataset, split, n, int(config.seed),
                                                       config.get("data_dir"))
  return get(config.train_split, config.get("num_train")), get(config.test_split, config.get("num_test"))


class CachedFc7Images:
  """The SVM training images of a cached split, read ``read_images`` files at a time: the fine-tuned
  fc7 of a read's windows is computed in one batched call, then each image is yielded as an
  ``svm.ImageFeatures`` (proposals as windows, GT boxes' fc7 as ``gt_features``). Sized and
  iterable any number of times; holds one read's features at a time (each image's arrays are its
  own copies)."""

  def __init__(self, paths, head, window_batch: int, read_images: int):
    if read_images < 1:
      raise ValueError(f"svm.read_images must be >= 1; got {read_images}.")
    self.paths, self.head, self.window_batch, self.read_images = list(paths), head, window_batch, read_images

  def __len__(self) -> int:
    return len(self.paths)

  def __iter__(self):
    for start in range(0, len(self.paths), self.read_images):
      cached = [cache.read(p) for p in self.paths[start:start + self.read_images]]
      fc7 = feats.fc7_features(self.head, np.concatenate([c["pool5"] for c in cached]), self.window_batch)
      ends = np.cumsum([len(c["pool5"]) for c in cached])
      for c, rows in zip(cached, np.split(fc7, ends[:-1])):
        g = int(c["num_gt"])
        # Copies, not views of the read's fc7: an image kept by the consumer (the SVMs' feature-scale
        # sample) must not keep its whole read alive.
        yield svm_lib.ImageFeatures(rows[g:].copy(), c["windows"][g:], c["gt_boxes"], c["gt_labels"],
                                    c["gt_difficult"], rows[:g].copy())


def _bbox_images(paths):
  def image(p: pathlib.Path):
    return lambda: tuple(cache.read_fields(p, ("pool5", "windows", "gt_boxes", "gt_labels", "gt_difficult")).values())
  return (image(p) for p in paths)


def train_and_evaluate_detection(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                                 log: Callable[[str], None] = print, start_over: bool = False) -> dict:
  """Runs every stage of the module docstring that has no output yet; returns the metrics dict.

  A workdir whose trained outputs depend on a field this config changes is refused
  (``workdir.ConfigChangedError``) unless ``start_over``, which redoes just those outputs (the
  feature cache is reused). Fine-tuning checkpoints to ``system/finetune`` and resumes from it;
  SIGTERM or a first Ctrl-C during it saves and returns
  ``{'preempted': True, 'stage': 'head', 'global_step': ...}`` (rerun to resume).
  """
  workdir = pathlib.Path(workdir)
  t0 = time.time()
  # Everything a config can be refused for is checked before anything is written: the trunk's
  # workdir first (nothing else matters without it), then every field, the data and the proposal files.
  config = with_resolved_trunk(config)
  validate_detection_config(config)
  train_src, test_src = _sources(config)
  proposals = _precomputed_proposals(config, {"train": train_src, "test": test_src})
  trunk = load_trunk(config)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_config(config, workdir, start_over)
  log(f"trunk: {trunk.description}")
  names = det_data.class_names(config.dataset)
  log(f"feature cache: {workdir / 'cache' / cache.cache_key(config, trunk)}")
  train_paths = cache.cache_split(config, trunk, train_src, cache.split_dir(workdir, config, trunk, "train"), True,
                                  proposals["train"], log)
  test_paths = cache.cache_split(config, trunk, test_src, cache.split_dir(workdir, config, trunk, "test"), False,
                                 proposals["test"], log)
  del proposals  # only the cache stage reads them
  t_cache = time.time() - t0
  log(f"features: {t_cache:.1f} s; peak memory so far {peak_rss_gib():.2f} GiB")
  part = lambda p: system_lib.part_path(workdir, p)
  ft_stats: dict[str, Any] = {}

  def run_head():
    # Checkpoints beside the parts: a changed config is refused while they exist, start_over removes them.
    head, stats = finetune.finetune_from_cache(train_paths, trunk.params["head"], len(names), config, log,
                                               metrics_dir=workdir,
                                               checkpoint_dir=workdir / system_lib.SYSTEM_DIR / "finetune")
    ft_stats.update(stats)
    system_lib.save_part(workdir, "head", head)
    return head

  try:
    head = stage("head", part("head"), run_head, lambda: system_lib.load_part(workdir, "head"), log)
  except finetune.Stopped as stopped:  # SIGTERM or Ctrl-C: the step reached is saved
    log(str(stopped))
    return {"preempted": True, "stage": "head", "global_step": stopped.step, "message": str(stopped)}
  batch = trunk.settings.window_batch
  s = config.svm

  def run_svms():
    images = CachedFc7Images(train_paths, head, batch, int(s.read_images))
    svms = svm_lib.train_svms(images, len(names), C=float(s.C), positive_weight=float(s.positive_weight),
                              bias_multiplier=float(s.bias_multiplier), negative_iou=float(s.negative_iou),
                              retrain_every=int(s.retrain_every), max_negatives=s.max_negatives,
                              target_norm=float(s.target_norm), seed=int(config.seed), log=log,
                              class_names=names)
    system_lib.save_part(workdir, "svms", svms)
    return svms

  svms = stage("svms", part("svms"), run_svms, lambda: system_lib.load_part(workdir, "svms"), log)
  log(f"SVMs: positives per class {svms.stats.get('positives', [])}")

  regressor = None
  if config.bbox.enabled:
    b = config.bbox

    def run_bbox():
      reg = bbox_regression.fit_from_images(_bbox_images(train_paths), len(names), float(b.min_overlap),
                                            b.get("max_per_class"), lam=float(b.lam))
      system_lib.save_part(workdir, "bbox", reg)
      return reg

    regressor = stage("bbox", part("bbox"), run_bbox, lambda: system_lib.load_part(workdir, "bbox"), log)

  system = system_lib.DetectionSystem(head, svms, regressor, names, config, trunk)

  def run_test():
    t1 = time.time()
    res = system_lib.evaluate(system, system_lib.cached_test_images(test_paths))
    metrics = {"dataset": config.dataset, "trunk": trunk.description, "trunk_is_random": not config.trunk.workdir,
               "scales": list(trunk.settings.scales), "num_train_images": len(train_paths),
               "num_test_images": len(test_paths), "ftfc7": res["ftfc7"], "mAP": res["ftfc7"]["mAP"],
               "finetune": ft_stats, "cache_dir": str(workdir / "cache" / cache.cache_key(config, trunk)),
               "seconds": {"features": t_cache, "test_scoring": time.time() - t1, "total": time.time() - t0}}
    if "ftfc7_bb" in res:
      metrics["ftfc7_bb"] = res["ftfc7_bb"]
      metrics["mAP"] = res["ftfc7_bb"]["mAP"]
    final = res.get("detections_bb", res["detections"])
    # The final mAP's 95 % percentile-bootstrap interval over the test images (seeded).
    metrics["mAP_interval"] = list(system_lib.bootstrap_map(final, res["gts"], names,
                                                            trained=system.svms.trained))
    run_files.write_npz(workdir / "detections.npz",
                       **{f"{i:06d}/{k}": v for i, d in enumerate(final) for k, v in d.items()})
    run_files.write_json(workdir / "metrics.json", metrics, indent=2, sort_keys=True, default=float)
    return metrics

  metrics = stage("test", workdir / "metrics.json", run_test,
                  lambda: json.loads((workdir / "metrics.json").read_text()), log)
  log(f"VOC07 mAP: ftfc7 {100 * metrics['ftfc7']['mAP']:.1f}" +
      (f", ftfc7 bb {100 * metrics['ftfc7_bb']['mAP']:.1f}" if "ftfc7_bb" in metrics else "") +
      f" ({metrics['num_test_images']} images)")
  note = system_lib.left_out_note(metrics["ftfc7"])
  if note:
    log(note)
  return metrics


__all__ = ["detection_config", "train_and_evaluate_detection", "detect_image", "select_drawn", "draw_detections",
           "stage"]
