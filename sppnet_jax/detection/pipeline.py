"""The SPP-net detection system (paper section 4 / the released code), end to end.

``train_and_evaluate_detection(config, workdir)``:

1. **Trunk.** A trained classification run (``config.trunk.workdir``, loaded with
   ``train.load_run``) or, if none is given, a freshly initialised slim trunk (reported as such:
   its features are random, only the fine-tuned fc layers learn).
2. **Proposals** per image: ``proposals.selective_search`` (fast mode) or a precomputed file
   (``config.proposals.file``, ``proposals.load_precomputed`` format, one entry per image in
   split order), clipped, sanitised and capped at ``max_per_image``.
3. **Feature cache.** Per image, the windows (training images: GT boxes first, then the
   proposals) and their pooled conv5 vectors (``features.window_features``) are written to
   ``workdir/cache/<key>/<split>/<index>.npz``; ``<key>`` hashes everything the features depend
   on, so a rerun reuses every finished image and a changed trunk or scale set never reads stale
   features.
4. **Fine-tuning** of fc6, fc7 and a new (K+1)-way fc8 on the cached pooled features, conv frozen:
   windows with IoU >= 0.5 with a (non-difficult) GT are positives of its class, windows with max
   IoU in [0.1, 0.5) background; mini-batches of ``batch_size`` with ``fg_fraction`` positives;
   SGD with momentum, weight decay on kernels, step learning rate; dropout as in training. Saved
   to ``workdir/head.npz``.
5. **SVMs** (``svm.train_svms``) on fine-tuned fc7: positives = GT boxes, negatives mined
   (IoU < 0.3). Saved to ``workdir/svms.npz``.
6. **Box regression** (``bbox_regression.fit``) on pooled conv5 of windows with IoU > 0.5.
   Saved to ``workdir/bbox.npz``.
7. **Test**: SVM scores of every proposal, per-class regression and clipping, per-class NMS at
   0.3, at most 100 detections per class per image, VOC07 11-point AP
   (``voc_eval.evaluate_detections``), both with and without box regression. Written to
   ``workdir/metrics.json`` (and detections to ``workdir/detections.npz``).

Every stage is skipped on rerun if its output exists and the config is unchanged.
``detect_image(workdir, image_path, out_png)`` runs the trained system on one image and draws it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import pathlib
import time
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util

from sppnet_jax import models
from sppnet_jax.detection import bbox_regression, boxes as box_ops, data as det_data, features as feats
from sppnet_jax.detection import svm as svm_lib, voc_eval

# ------------------------------------------------------------------------------------- config


def detection_config(dataset: str = "synthetic", trunk_workdir: str = "", scales: Sequence[int] = (688,),
                     num_train: int | None = None, num_test: int | None = None) -> ml_collections.ConfigDict:
  """The detection config (paper settings unless noted; the experiment files adjust it).

  Args:
    dataset: 'synthetic' (built-in scenes) or 'voc2007' (TFDS).
    trunk_workdir: a classification workdir whose trunk and fc6/fc7 are used; '' initialises a
      fresh trunk from ``config.trunk`` (random features; said so in the output).
    scales: image short sides; (688,) is the paper's 1-scale, (480, 576, 688, 864, 1200) 5-scale.
    num_train, num_test: cap the number of images (None: the whole split).
  """
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.train_split = "train" if dataset == "synthetic" else "train+validation"
  c.test_split = "test"
  c.num_train = ml_collections.FieldReference(num_train, field_type=int)
  c.num_test = ml_collections.FieldReference(num_test, field_type=int)
  c.seed = 0

  c.trunk = ml_collections.ConfigDict()
  c.trunk.workdir = trunk_workdir
  c.trunk.name = "zf5"  # used only without a workdir
  c.trunk.width = 1.0
  c.trunk.depth = ml_collections.FieldReference(None, field_type=int)
  c.trunk.fc_width = 4096
  c.trunk.seed = 0

  c.features = ml_collections.ConfigDict()
  c.features.scales = tuple(scales)
  c.features.target_side = 224.0
  c.features.rule = "area"
  c.features.size_multiple = 64
  c.features.window_batch = 256
  c.features.levels = (6, 3, 2, 1)

  c.proposals = ml_collections.ConfigDict()
  c.proposals.file = ""  # precomputed proposals for the train split ('' = selective search)
  c.proposals.test_file = ""  # and for the test split
  c.proposals.max_side = ml_collections.FieldReference(None, field_type=int)  # search on a downscaled copy
  c.proposals.max_per_image = 2000
  c.proposals.min_box_size = 20
  c.proposals.ks = (50, 100)
  c.proposals.strategies = ("CTSF", "TSF")

  c.finetune = ml_collections.ConfigDict()
  c.finetune.steps = 300000
  c.finetune.lr = 1e-4
  c.finetune.lr_boundaries = (250000,)  # paper: 1e-4 for 250k mini-batches, then 1e-5 for 50k
  c.finetune.lr_decay = 0.1
  c.finetune.momentum = 0.9
  c.finetune.weight_decay = 5e-4
  c.finetune.batch_size = 128
  c.finetune.fg_fraction = 0.25
  c.finetune.fg_iou = 0.5
  c.finetune.bg_iou_low = 0.1
  c.finetune.bg_iou_high = 0.5
  c.finetune.dropout = 0.5
  c.finetune.fc8_std = 0.01
  c.finetune.log_every = 1000

  c.svm = ml_collections.ConfigDict()
  c.svm.C = 0.001
  c.svm.positive_weight = 2.0
  c.svm.bias_multiplier = 10.0
  c.svm.negative_iou = 0.3
  c.svm.retrain_every = 2000
  c.svm.target_norm = 20.0

  c.bbox = ml_collections.ConfigDict()
  c.bbox.enabled = True
  c.bbox.lam = 4000.0
  c.bbox.min_overlap = 0.5

  c.test = ml_collections.ConfigDict()
  c.test.nms = 0.3
  c.test.max_per_class = 100
  c.test.score_threshold = -1e9  # keep everything (VOC AP uses the whole ranking)
  return c


# ------------------------------------------------------------------------------------- trunk


@dataclasses.dataclass
class Trunk:
  """A network whose trunk and fc6/fc7 detection uses, with its input settings."""
  model: models.SPPNet
  params: Any
  settings: feats.FeatureSettings
  description: str
  key: str  # identifies the trunk weights for cache keys


def load_trunk(config: ml_collections.ConfigDict) -> Trunk:
  """The trunk of ``config.trunk`` (a classification workdir, or a fresh random one)."""
  f = config.features
  common = dict(scales=tuple(int(s) for s in f.scales), target_side=float(f.target_side), rule=f.rule,
                size_multiple=int(f.size_multiple), window_batch=int(f.window_batch), levels=tuple(f.levels))
  if config.trunk.workdir:
    from sppnet_jax import train  # lazy: pulls in orbax and grain
    run_config, model, params, mean = train.load_run(config.trunk.workdir)
    if model.levels is None:
      raise ValueError(f"{config.trunk.workdir} holds a no-SPP network; detection needs an SPP trunk.")
    if tuple(model.levels) != common["levels"]:
      raise ValueError(f"config.features.levels {common['levels']} differ from the trunk's pyramid "
                       f"{tuple(model.levels)}: fc6 expects the trunk's; set features.levels to match.")
    if not isinstance(mean, str):  # a mean image: its per-channel mean applies to any window
      mean = np.asarray(mean, np.float32)
      mean = tuple(float(x) for x in (mean.reshape(-1, 3).mean(0) if mean.size >= 3 else [float(mean)] * 3))
    settings = feats.FeatureSettings(mean=mean, **common)
    digest = hashlib.sha1(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(params["trunk"]))).hexdigest()
    return Trunk(model, params, settings, f"trained trunk from {config.trunk.workdir} ({run_config.model.name})",
                 digest[:12])
  t = config.trunk
  model = models.create_model(t.name, num_classes=2, width=t.width, depth=t.get("depth"), fc_width=t.fc_width,
                              levels=tuple(f.levels))
  size = max(models.min_image_size(model.layers), 64)
  params = model.init(jax.random.key(int(t.seed)), jnp.zeros((1, size, size, 3)))["params"]
  desc = (f"RANDOMLY INITIALISED {t.name} trunk (width {t.width}, fc {t.fc_width}, seed {t.seed}): no "
          "classification workdir was given, so conv features are random and only the fine-tuned fc layers learn")
  return Trunk(model, params, feats.FeatureSettings(**common), desc, f"random-{t.name}-{t.width}-{t.get('depth')}-"
               f"{t.fc_width}-{t.seed}")


def cache_key(config: ml_collections.ConfigDict, trunk: Trunk) -> str:
  """Hash of everything the cached window features depend on."""
  parts = {"trunk": trunk.key, "features": config.features.to_dict(), "proposals": config.proposals.to_dict(),
           "dataset": config.dataset, "seed": config.seed, "mean": trunk.settings.mean}
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- proposals and cache


def split_cache_dir(workdir: str | os.PathLike, config: ml_collections.ConfigDict, trunk: Trunk, kind: str) -> pathlib.Path:
  """``workdir/cache/<key>/<split name>``: the feature cache of the train (``kind='train'``) or test split."""
  split = config.train_split if kind == "train" else config.test_split
  safe = "".join(ch if ch.isalnum() or ch in "+-_." else "_" for ch in str(split))
  return pathlib.Path(workdir) / "cache" / cache_key(config, trunk) / f"{kind}-{safe}"


def _proposal_lists(config: ml_collections.ConfigDict, split_kind: str) -> list[np.ndarray] | None:
  path = config.proposals.file if split_kind == "train" else config.proposals.test_file
  if not path:
    return None
  from sppnet_jax.detection import proposals
  boxes, _ = proposals.load_precomputed(path)
  return boxes


def image_proposals(image: np.ndarray, config: ml_collections.ConfigDict,
                    precomputed: np.ndarray | None = None) -> np.ndarray:
  """Sanitised proposals of one image (selective search unless ``precomputed`` is given), at most
  ``max_per_image``, in rank order."""
  h, w = image.shape[:2]
  p = config.proposals
  if precomputed is None:
    from sppnet_jax.detection import proposals
    raw = proposals.selective_search(image, ks=tuple(p.ks), strategies=tuple(p.strategies),
                                     min_box_size=int(p.min_box_size), seed=int(config.seed),
                                     max_side=p.get("max_side"))
  else:
    raw = precomputed
  boxes, _ = feats.sanitize_windows(raw, h, w)
  return boxes[:int(p.max_per_image)]


def _atomic_savez(path: pathlib.Path, **arrays) -> None:
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def cache_split(config: ml_collections.ConfigDict, trunk: Trunk, source, directory: pathlib.Path,
                with_gt_windows: bool, precomputed: list[np.ndarray] | None = None,
                log: Callable[[str], None] = print) -> list[pathlib.Path]:
  """Computes (or reuses) the per-image feature cache of a split; returns the file paths in order.

  Each file holds ``windows`` (R, 4), ``num_gt`` (the first ``num_gt`` windows are the GT boxes
  on training images), ``pool5`` (R, D), ``scale_index`` (R,), ``gt_boxes``, ``gt_labels``
  (1..K), ``gt_difficult``, ``image_hw``, ``id``.
  """
  directory.mkdir(parents=True, exist_ok=True)
  if precomputed is not None and len(precomputed) < len(source):
    raise ValueError(f"the precomputed proposal file has {len(precomputed)} images but the split has "
                     f"{len(source)}; give one entry per image in split order.")
  paths, computed, start = [], 0, time.time()
  for i in range(len(source)):
    path = directory / f"{i:06d}.npz"
    paths.append(path)
    if path.exists():
      continue
    ex = source[i]
    props = image_proposals(ex["image"], config, None if precomputed is None else precomputed[i])
    gt = ex["boxes"].astype(np.float32)
    windows = np.concatenate([gt, props]) if with_gt_windows else props
    wf = feats.window_features(trunk.model, trunk.params, ex["image"], windows, trunk.settings, with_fc7=False)
    _atomic_savez(path, windows=windows, num_gt=np.int64(len(gt) if with_gt_windows else 0), pool5=wf.pool5,
                  scale_index=wf.scale_index, gt_boxes=gt, gt_labels=ex["labels"], gt_difficult=ex["difficult"],
                  image_hw=np.asarray(ex["image"].shape[:2]), id=np.asarray(ex["id"]))
    computed += 1
    if computed % 10 == 0:
      log(f"  cached {computed} images of {directory.name} ({(time.time() - start) / computed:.2f} s/image)")
  log(f"  {directory.name}: {computed} images computed, {len(source) - computed} reused from {directory}")
  return paths


def load_cached(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------------- fine-tuning


def window_labels(windows: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_difficult: np.ndarray,
                  fg_iou: float = 0.5, bg_low: float = 0.1, bg_high: float = 0.5) -> np.ndarray:
  """Fine-tuning label of each window: class 1..K (IoU >= fg_iou with a non-difficult GT of it),
  0 (background: max IoU in [bg_low, bg_high)) or -1 (unused)."""
  keep = ~np.asarray(gt_difficult, bool)
  gt_boxes, gt_labels = gt_boxes[keep], gt_labels[keep]
  out = np.full(len(windows), -1, np.int64)
  if len(windows) == 0:
    return out
  if len(gt_boxes) == 0:
    return out  # no overlap information: without GT every window has IoU 0 < bg_low
  iou = box_ops.iou_matrix(windows, gt_boxes)
  best = iou.argmax(1)
  top = iou[np.arange(len(windows)), best]
  out[(top >= bg_low) & (top < bg_high)] = 0
  fg = top >= fg_iou
  out[fg] = gt_labels[best[fg]]
  return out


def _head_module(num_classes: int, fc_width: int, dropout: float, dtype) -> models.Head:
  return models.Head(num_classes=num_classes, fc_width=fc_width, dropout=dropout, dtype=dtype)


def init_finetune_head(trunk_head: Any, num_classes: int, fc8_std: float, seed: int) -> dict:
  """fc6/fc7 copied from the trunk's head, a new ``num_classes``-way fc8 ~ N(0, fc8_std^2), bias 0."""
  fc_width = int(trunk_head["fc7"]["kernel"].shape[1])
  kernel = fc8_std * jax.random.normal(jax.random.key(seed), (fc_width, num_classes), jnp.float32)
  return {"fc6": trunk_head["fc6"], "fc7": trunk_head["fc7"],
          "fc8": {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}}


def make_finetune_step(head: models.Head, tx: optax.GradientTransformation) -> Callable:
  """A jitted SGD step on (params, opt_state, features (N, D), labels (N,), key)."""

  def loss_fn(params, x, y, key):
    logits = head.apply({"params": params}, x, True, rngs={"dropout": key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits.argmax(-1) == y).mean()

  @jax.jit
  def step(params, opt_state, x, y, key):
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  return step


def finetune_head(pool5: np.ndarray, labels: np.ndarray, trunk_head: Any, num_classes: int,
                  config: ml_collections.ConfigDict, log: Callable[[str], None] = print,
                  writer=None) -> tuple[dict, dict]:
  """Fine-tunes fc6, fc7 and a new (num_classes)-way fc8 on pooled features.

  Args:
    pool5: (N, D) pooled features of the usable windows; labels: (N,) in 0..K-1 (0 = background).
    trunk_head: the trunk's head params (fc6, fc7 are the starting point).
    num_classes: K+1. config: the detection config (``config.finetune``).

  Returns ``(params, stats)``.
  """
  f = config.finetune
  fg_rows, bg_rows = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
  if len(fg_rows) == 0:
    raise ValueError("no window overlaps a ground-truth box by IoU >= 0.5: cannot fine-tune. Check the proposals "
                     "(recall) and the GT boxes, or add more training images.")
  if len(bg_rows) == 0:
    raise ValueError("no background window (max IoU in [0.1, 0.5)) in the training set: cannot fine-tune. Use more "
                     "proposals per image or more images.")
  fc_width = int(trunk_head["fc7"]["kernel"].shape[1])
  head = _head_module(num_classes, fc_width, float(f.dropout), jnp.float32)
  params = init_finetune_head(trunk_head, num_classes, float(f.fc8_std), int(config.seed))
  schedule = optax.piecewise_constant_schedule(float(f.lr), {int(b): float(f.lr_decay) for b in f.lr_boundaries})
  kernels = lambda p: traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in traverse_util.flatten_dict(p)})
  tx = optax.chain(optax.masked(optax.add_decayed_weights(float(f.weight_decay)), kernels),
                   optax.sgd(schedule, momentum=float(f.momentum)))
  opt_state = tx.init(params)
  step = make_finetune_step(head, tx)
  n_fg = max(1, int(round(f.batch_size * f.fg_fraction)))
  n_bg = int(f.batch_size) - n_fg
  rng = np.random.default_rng(int(config.seed))
  key = jax.random.key(int(config.seed) + 1)
  losses, accs = [], []
  start = time.time()
  for t in range(int(f.steps)):
    rows = np.concatenate([rng.choice(fg_rows, n_fg), rng.choice(bg_rows, n_bg)])
    key, sub = jax.random.split(key)
    params, opt_state, loss, acc = step(params, opt_state, jnp.asarray(pool5[rows]), jnp.asarray(labels[rows]), sub)
    losses.append(float(loss))
    accs.append(float(acc))
    if not np.isfinite(losses[-1]):
      raise FloatingPointError(f"fine-tuning loss became {losses[-1]} at step {t}; lower finetune.lr.")
    if (t + 1) % int(f.log_every) == 0 or t + 1 == int(f.steps):
      window = slice(-int(f.log_every), None)
      log(f"  fine-tune step {t + 1}/{f.steps}: loss {np.mean(losses[window]):.4f} "
          f"batch acc {np.mean(accs[window]):.3f} ({(time.time() - start) / (t + 1):.3f} s/step)")
      if writer is not None:
        writer.write(t + 1, {"finetune/loss": np.mean(losses[window]), "finetune/acc": np.mean(accs[window])})
  stats = {"steps": int(f.steps), "final_loss": float(np.mean(losses[-50:])) if losses else float("nan"),
           "fg_windows": int(len(fg_rows)), "bg_windows": int(len(bg_rows))}
  return jax.device_get(params), stats


def save_tree(path: pathlib.Path, tree: Any) -> None:
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(tree)).items()}
  _atomic_savez(path, **flat)


def load_tree(path: pathlib.Path) -> dict:
  with np.load(path) as z:
    return traverse_util.unflatten_dict({tuple(k.split("/")): z[k] for k in z.files})


def save_dataclass(path: pathlib.Path, obj: Any) -> None:
  arrays = {}
  for field in dataclasses.fields(obj):
    value = getattr(obj, field.name)
    if isinstance(value, dict):
      for k, v in value.items():
        arrays[f"{field.name}.{k}"] = np.asarray(v)
    else:
      arrays[field.name] = np.asarray(value)
  _atomic_savez(path, **arrays)


def load_dataclass(path: pathlib.Path, cls):
  with np.load(path) as z:
    kwargs: dict[str, Any] = {}
    for k in z.files:
      if "." in k:
        name, sub = k.split(".", 1)
        kwargs.setdefault(name, {})[sub] = z[k]
      else:
        v = z[k]
        kwargs[k] = float(v) if v.shape == () and v.dtype.kind == "f" else v
  return cls(**kwargs)


# ------------------------------------------------------------------------------------- test time


def detect(pool5: np.ndarray, windows: np.ndarray, image_hw: Sequence[int], head_params: Any,
           svms: svm_lib.LinearSVMs, regressor: bbox_regression.BoxRegressor | None,
           config: ml_collections.ConfigDict, window_batch: int = 256) -> dict[str, np.ndarray]:
  """Detections of one image from its windows' pooled features.

  SVM scores on fine-tuned fc7, per-class box regression (if ``regressor``), clipping,
  per-class NMS (``config.test.nms``) and at most ``config.test.max_per_class`` per class.
  Returns ``{'boxes' (M, 4), 'scores' (M,), 'labels' (M,) in 1..K}``.
  """
  h, w = int(image_hw[0]), int(image_hw[1])
  num_classes = svms.weights.shape[1]
  out = {"boxes": [], "scores": [], "labels": []}
  if len(windows):
    fc7 = feats.fc7_features(head_params, pool5, window_batch)
    scores = svm_lib.score(fc7, svms)
    boxes_k = (bbox_regression.apply(regressor, pool5, windows) if regressor is not None
               else np.repeat(np.asarray(windows, np.float64)[:, None], num_classes, 1))
    for c in range(num_classes):
      b = box_ops.clip_boxes(boxes_k[:, c], h, w)
      s = scores[:, c]
      sel = np.flatnonzero(s > config.test.score_threshold)
      keep = sel[box_ops.nms(b[sel], s[sel], float(config.test.nms), int(config.test.max_per_class))]
      out["boxes"].append(b[keep])
      out["scores"].append(s[keep])
      out["labels"].append(np.full(len(keep), c + 1, np.int64))
  if not out["boxes"]:
    return {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, np.int64)}
  return {k: np.concatenate(v) for k, v in out.items()}


def evaluate(detections: Sequence[dict], cached: Sequence[dict], class_names: Sequence[str]) -> dict:
  """VOC07 AP per class and mAP (labels shifted to 0-based for ``voc_eval``)."""
  dets = [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in detections]
  gts = [{"boxes": c["gt_boxes"], "labels": c["gt_labels"] - 1, "difficult": c["gt_difficult"]} for c in cached]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    res = voc_eval.evaluate_detections(dets, gts, len(class_names), class_names)
  return {"mAP": res["mAP"], "ap": {k: float(v) for k, v in res["ap_by_name"].items()},
          "npos": {n: int(x) for n, x in zip(class_names, res["npos"])}}


# ------------------------------------------------------------------------------------- the whole system


def _sources(config: ml_collections.ConfigDict):
  train_src = det_data.get_detection_source(config.dataset, config.train_split, config.get("num_train"),
                                            int(config.seed), config.get("data_dir"))
  test_src = det_data.get_detection_source(config.dataset, config.test_split, config.get("num_test"),
                                           int(config.seed), config.get("data_dir"))
  return train_src, test_src


def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  path = workdir / "config.json"
  new = json.loads(config.to_json_best_effort(sort_keys=True))
  if path.exists():
    old = json.loads(path.read_text())
    old_trunk = (old.get("trunk") or {}).get("workdir")
    if old_trunk and not os.path.isabs(old_trunk):  # written before trunk paths were stored resolved
      old["trunk"]["workdir"] = str(pathlib.Path(old_trunk).expanduser().resolve())
    if old != new:
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      stale = [workdir / n for n in ("head.npz", "svms.npz", "bbox.npz", "metrics.json")]
      for p in stale:  # cached features are keyed separately and stay valid
        p.unlink(missing_ok=True)
      print(f"config changed ({', '.join(changed)}): retraining the head, SVMs and regressors "
            "(cached features are reused where still valid).")
  path.write_text(json.dumps(new, indent=2, sort_keys=True))


def _with_resolved_trunk(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``trunk.workdir`` made absolute (a copy when it changes), so the detection workdir's
  config.json names its trunk wherever it is used from; a trunk workdir that is not there is an error."""
  if not config.trunk.workdir:
    return config
  resolved = pathlib.Path(config.trunk.workdir).expanduser().resolve()
  if not (resolved / "config.json").is_file():
    raise FileNotFoundError(f"trunk workdir not found: {config.trunk.workdir} (config.trunk.workdir, resolved to "
                            f"{resolved}, has no config.json); train it first with 'sppnet train'.")
  if str(resolved) == config.trunk.workdir:
    return config
  config = copy.deepcopy(config)
  config.trunk.workdir = str(resolved)
  return config


def train_and_evaluate_detection(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                                 log: Callable[[str], None] = print) -> dict:
  """Runs the whole detection system (see the module docstring); returns the metrics dict."""
  workdir = pathlib.Path(workdir)
  config = _with_resolved_trunk(config)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_config(config, workdir)
  t0 = time.time()
  trunk = load_trunk(config)
  log(f"trunk: {trunk.description}")
  train_src, test_src = _sources(config)
  names = det_data.class_names(config.dataset)
  num_fg = len(names)
  key = cache_key(config, trunk)
  cache_dir = workdir / "cache" / key
  log(f"feature cache: {cache_dir}")
  train_paths = cache_split(config, trunk, train_src, split_cache_dir(workdir, config, trunk, "train"), True,
                            _proposal_lists(config, "train"), log)
  test_paths = cache_split(config, trunk, test_src, split_cache_dir(workdir, config, trunk, "test"), False,
                           _proposal_lists(config, "test"), log)
  t_cache = time.time() - t0

  # Fine-tuning.
  head_path = workdir / "head.npz"
  ft_stats: dict[str, Any] = {}
  if head_path.exists():
    head = load_tree(head_path)
    log(f"fine-tuned head reused from {head_path}")
  else:
    xs, ys = [], []
    f = config.finetune
    for p in train_paths:
      c = load_cached(p)
      lab = window_labels(c["windows"], c["gt_boxes"], c["gt_labels"], c["gt_difficult"], f.fg_iou, f.bg_iou_low,
                          f.bg_iou_high)
      rows = np.flatnonzero(lab >= 0)
      xs.append(c["pool5"][rows])
      ys.append(lab[rows])
    from sppnet_jax.metrics_io import MetricWriter
    writer = MetricWriter(workdir)
    try:
      head, ft_stats = finetune_head(np.concatenate(xs), np.concatenate(ys), trunk.params["head"], num_fg + 1,
                                     config, log, writer)
    finally:
      writer.close()
    save_tree(head_path, head)
  batch = trunk.settings.window_batch

  def svm_image(p: pathlib.Path) -> Callable[[], svm_lib.ImageFeatures]:
    def load() -> svm_lib.ImageFeatures:
      c = load_cached(p)
      g = int(c["num_gt"])
      fc7 = feats.fc7_features(head, c["pool5"], batch)
      return svm_lib.ImageFeatures(fc7[g:], c["windows"][g:], c["gt_boxes"], c["gt_labels"] - 1, c["gt_difficult"],
                                   fc7[:g])
    return load

  svm_path = workdir / "svms.npz"
  if svm_path.exists():
    svms = load_dataclass(svm_path, svm_lib.LinearSVMs)
  else:
    s = config.svm
    svms = svm_lib.train_svms([svm_image(p) for p in train_paths], num_fg, C=float(s.C),
                              positive_weight=float(s.positive_weight), bias_multiplier=float(s.bias_multiplier),
                              negative_iou=float(s.negative_iou), retrain_every=int(s.retrain_every),
                              target_norm=float(s.target_norm), seed=int(config.seed))
    save_dataclass(svm_path, svms)
  log(f"SVMs: positives per class {svms.stats.get('positives', np.array([])).tolist()}")

  regressor = None
  if config.bbox.enabled:
    reg_path = workdir / "bbox.npz"
    if reg_path.exists():
      regressor = load_dataclass(reg_path, bbox_regression.BoxRegressor)
    else:
      fx, fw, ft, fl = [], [], [], []
      for p in train_paths:
        c = load_cached(p)
        rows, tgt, lab = bbox_regression.select_training_windows(c["windows"], c["gt_boxes"], c["gt_labels"] - 1,
                                                                 c["gt_difficult"], float(config.bbox.min_overlap))
        fx.append(c["pool5"][rows]), fw.append(c["windows"][rows]), ft.append(tgt), fl.append(lab)
      regressor = bbox_regression.fit(np.concatenate(fx), np.concatenate(fw), np.concatenate(ft), np.concatenate(fl),
                                      num_fg, lam=float(config.bbox.lam))
      save_dataclass(reg_path, regressor)

  # Test.
  t1 = time.time()
  cached_test = [load_cached(p) for p in test_paths]
  dets, dets_bb = [], []
  for c in cached_test:
    dets.append(detect(c["pool5"], c["windows"], c["image_hw"], head, svms, None, config, batch))
    if regressor is not None:
      dets_bb.append(detect(c["pool5"], c["windows"], c["image_hw"], head, svms, regressor, config, batch))
  res = evaluate(dets, cached_test, names)
  metrics = {"dataset": config.dataset, "trunk": trunk.description, "trunk_is_random": not config.trunk.workdir,
             "scales": list(trunk.settings.scales), "num_train_images": len(train_paths),
             "num_test_images": len(test_paths), "ftfc7": res,
             "mAP": res["mAP"], "finetune": ft_stats, "cache_dir": str(cache_dir),
             "seconds": {"features": t_cache, "test_scoring": time.time() - t1, "total": time.time() - t0}}
  if regressor is not None:
    res_bb = evaluate(dets_bb, cached_test, names)
    metrics["ftfc7_bb"] = res_bb
    metrics["mAP"] = res_bb["mAP"]
  final = dets_bb if regressor is not None else dets
  _atomic_savez(workdir / "detections.npz", **{f"{i:06d}/{k}": v for i, d in enumerate(final) for k, v in d.items()})
  (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))
  log(f"VOC07 mAP: ftfc7 {100 * res['mAP']:.1f}" + (f", ftfc7 bb {100 * metrics['ftfc7_bb']['mAP']:.1f}"
                                                     if regressor is not None else "") + f" ({len(test_paths)} images)")
  return metrics


# ------------------------------------------------------------------------------------- one image


def load_system(workdir: str | os.PathLike):
  """(config, trunk, head params, SVMs, regressor or None, class names) of a trained workdir."""
  workdir = pathlib.Path(workdir)
  for name in ("config.json", "head.npz", "svms.npz"):
    if not (workdir / name).exists():
      raise FileNotFoundError(f"{workdir} is not a trained detection workdir (no {name}); run "
                              "'sppnet detect --config ... --workdir DIR' first.")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  trunk = load_trunk(config)
  head = load_tree(workdir / "head.npz")
  svms = load_dataclass(workdir / "svms.npz", svm_lib.LinearSVMs)
  reg_path = workdir / "bbox.npz"
  regressor = load_dataclass(reg_path, bbox_regression.BoxRegressor) if reg_path.exists() else None
  return config, trunk, head, svms, regressor, det_data.class_names(config.dataset)


def select_drawn(scores: np.ndarray, top_k: int | None = 10,
                 score_threshold: float | None = None) -> tuple[np.ndarray, str]:
  """Which detections to draw, best first, and a sentence saying how many and why not more.

  The ``top_k`` best scores (``None``: no cap) among those above ``score_threshold``
  (``None``: no threshold); ties keep the detection order.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  if top_k is not None and top_k < 0:
    raise ValueError(f"top_k must be >= 0 or None; got {top_k}")
  order = np.argsort(-scores, kind="stable")
  above = order if score_threshold is None else order[scores[order] > score_threshold]
  shown = above if top_k is None else above[:top_k]
  n = len(scores)
  if n == 0:
    return shown, "no detections (no proposal window scored), so nothing was drawn"
  limits = []
  if score_threshold is not None and len(above) < n:
    limits.append(f"{len(above)} score above score_threshold={score_threshold:g}")
  if top_k is not None and len(above) > top_k:
    limits.append(f"top_k={top_k}")
  why = f" ({'; '.join(limits)})" if limits else ""
  if len(shown):
    why += f", scores {scores[shown[0]]:.3g} to {scores[shown[-1]]:.3g}"
  return shown, f"{n} detections; drew {len(shown)}{why}"


def draw_detections(image: np.ndarray, det: dict, names: Sequence[str], shown: Sequence[int],
                    out_png: str | os.PathLike) -> None:
  """Draws the boxes ``shown`` of ``det`` on ``image``, each labelled with its class and score, into ``out_png``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(image.shape[1] / 100, image.shape[0] / 100), dpi=100)
  ax.imshow(image)
  ax.set_axis_off()
  colours = plt.get_cmap("tab20")
  for i in shown:
    x1, y1, x2, y2 = det["boxes"][i]
    c = colours(int(det["labels"][i]) % 20)
    ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1 + 1, y2 - y1 + 1, fill=False, edgecolor=c, linewidth=2))
    ax.text(x1, y1 - 2, f"{names[det['labels'][i] - 1]} {det['scores'][i]:.2f}", color="white", fontsize=8,
            bbox=dict(facecolor=c, alpha=0.8, pad=1, edgecolor="none"))
  fig.subplots_adjust(0, 0, 1, 1)
  fig.savefig(out_png)
  plt.close(fig)


def detect_image(workdir: str | os.PathLike, image_path: str | os.PathLike, out_png: str | os.PathLike,
                 score_threshold: float | None = None, proposals: np.ndarray | None = None,
                 top_k: int | None = 10) -> dict:
  """Detects objects in one image file with a trained workdir and draws them into ``out_png``.

  The ``top_k`` best-scoring detections (above ``score_threshold`` when one is given)
  are drawn with their class and SVM score (:func:`select_drawn`). Returns the
  detections (``boxes``, ``scores``, ``labels`` 1..K, ``names``), ``drawn`` (their
  indices, best first) and ``summary`` (how many were drawn, why not more, and where).
  """
  from sppnet_jax.data import sources
  if not os.path.isfile(image_path):
    raise FileNotFoundError(f"file not found: {os.fspath(image_path)}")
  config, trunk, head, svms, regressor, names = load_system(workdir)
  image = det_data.check_image(sources.decode_image_file(image_path), os.fspath(image_path))
  props = image_proposals(image, config, proposals)
  wf = feats.window_features(trunk.model, trunk.params, image, props, trunk.settings, with_fc7=False)
  det = detect(wf.pool5, props, image.shape[:2], head, svms, regressor, config, trunk.settings.window_batch)
  shown, summary = select_drawn(det["scores"], top_k, score_threshold)
  draw_detections(image, det, names, shown, out_png)
  return {**det, "names": [names[k - 1] for k in det["labels"]], "drawn": shown,
          "summary": f"{summary}; drawn into {os.fspath(out_png)}"}


__all__ = ["detection_config", "train_and_evaluate_detection", "detect_image", "select_drawn", "draw_detections",
           "detect", "evaluate", "finetune_head", "window_labels", "load_trunk", "cache_split", "load_system", "Trunk"]
