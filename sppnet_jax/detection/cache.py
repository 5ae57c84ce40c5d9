"""The per-image feature cache: proposals, windows and their pooled conv5 vectors in 16 bits.

``workdir/cache/<key>/<kind>-<split>/<index>.npz``, one file per image, written atomically:

* ``windows`` (R, 4) float32: on training images the GT boxes first (``num_gt`` of them), then the
  proposals; on test images the proposals only;
* ``pool5`` (R, D) **float16** pooled conv5 (half the bytes of float32; conv5 after ReLU and max
  pooling is non-negative, and a value beyond float16's range is an error naming the image);
* ``scale_index`` (R,), ``gt_boxes`` (G, 4), ``gt_labels`` (G,) in 0..K-1, ``gt_difficult`` (G,),
  ``image_hw`` (2,), ``id``.

``<key>`` hashes everything the features depend on (trunk weights, feature and proposal settings,
dataset, seed, mean, the cache format), so a rerun reuses every finished image and a changed trunk
never reads stale features. Readers take one image at a time (:func:`read`, :func:`read_fields`
reads only the named arrays), so no stage holds a split's features at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np

from sppnet_jax import run_files
from sppnet_jax.detection import features as feats
from sppnet_jax.detection.trunk import Trunk

# 3: selective search's texture responses in float32, one code per opposite-orientation pair
# (a few proposals move); 2: pool5 in float16, labels 0..K-1; 1: float32, labels 1..K.
CACHE_FORMAT = 3
FEATURE_DTYPE = np.float16


def cache_key(config: ml_collections.ConfigDict, trunk: Trunk) -> str:
  """Hash of everything the cached window features depend on."""
  parts = {"trunk": trunk.key, "features": config.features.to_dict(), "proposals": config.proposals.to_dict(),
           "dataset": config.dataset, "seed": config.seed, "mean": trunk.settings.mean, "format": CACHE_FORMAT}
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_dir(workdir: str | os.PathLike, config: ml_collections.ConfigDict, trunk: Trunk,
              kind: str) -> pathlib.Path:
  """``workdir/cache/<key>/<kind>-<split name>``: the cache of the train (``kind='train'``) or test split."""
  if kind not in ("train", "test"):
    raise ValueError(f"kind must be 'train' or 'test'; got {kind!r}.")
  split = config.train_split if kind == "train" else config.test_split
  safe = "".join(ch if ch.isalnum() or ch in "+-_." else "_" for ch in str(split))
  return pathlib.Path(workdir) / "cache" / cache_key(config, trunk) / f"{kind}-{safe}"


def precomputed_proposals(config: ml_collections.ConfigDict, kind: str) -> list[np.ndarray] | None:
  """The precomputed proposal boxes of a split (``config.proposals.file`` / ``test_file``), or None."""
  path = config.proposals.file if kind == "train" else config.proposals.test_file
  if not path:
    return None
  from sppnet_jax.detection import proposals
  boxes, _ = proposals.load_precomputed(path)
  return boxes


def check_precomputed(precomputed: Sequence[np.ndarray] | None, num_images: int, kind: str) -> None:
  """Refuses a precomputed proposal list (``kind``: 'train' or 'test') shorter than its split."""
  if precomputed is not None and len(precomputed) < num_images:
    field = "proposals.file" if kind == "train" else "proposals.test_file"
    raise ValueError(f"the precomputed proposal file ({field}) has {len(precomputed)} images but the {kind} split "
                     f"has {num_images}; give one entry per image in split order.")


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


def to_feature_dtype(pool5: np.ndarray, where: str) -> np.ndarray:
  """``pool5`` in the cache's 16-bit dtype; ValueError naming ``where`` if a value does not fit."""
  out = np.asarray(pool5).astype(FEATURE_DTYPE)
  if not np.isfinite(out).all():
    top = float(np.nanmax(np.abs(np.asarray(pool5, np.float64)))) if np.size(pool5) else 0.0
    raise ValueError(f"{where}: pooled features reach {top:g}, beyond float16's range "
                     f"({float(np.finfo(FEATURE_DTYPE).max):g}); the trunk's activations are not normalised.")
  return out


def cache_split(config: ml_collections.ConfigDict, trunk: Trunk, source, directory: pathlib.Path,
                with_gt_windows: bool, precomputed: Sequence[np.ndarray] | None = None,
                log: Callable[[str], None] = print) -> list[pathlib.Path]:
  """Computes (or reuses) the cache of a split, one image at a time; returns the file paths in order."""
  check_precomputed(precomputed, len(source), "train" if with_gt_windows else "test")
  directory.mkdir(parents=True, exist_ok=True)
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
    run_files.write_npz(path, windows=windows, num_gt=np.int64(len(gt) if with_gt_windows else 0),
                 pool5=to_feature_dtype(wf.pool5, f"image {ex['id']!r}"), scale_index=wf.scale_index, gt_boxes=gt,
                 gt_labels=ex["labels"], gt_difficult=ex["difficult"], image_hw=np.asarray(ex["image"].shape[:2]),
                 id=np.asarray(ex["id"]))
    computed += 1
    if computed % 10 == 0:
      log(f"  cached {computed} images of {directory.name} ({(time.time() - start) / computed:.2f} s/image)")
  log(f"  {directory.name}: {computed} images computed, {len(source) - computed} reused from {directory}")
  return paths


def read(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of one cached image."""
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def read_fields(path: pathlib.Path, names: Sequence[str]) -> dict[str, np.ndarray]:
  """Only the named arrays of one cached image (an ``.npz`` member is read only when asked for)."""
  with np.load(path) as z:
    return {k: z[k] for k in names}


def gt_of(cached: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The ground truth of a cached image in ``voc_eval``'s form."""
  return {"boxes": cached["gt_boxes"], "labels": cached["gt_labels"], "difficult": cached["gt_difficult"]}
