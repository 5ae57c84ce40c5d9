"""Top-1 / top-5 error under the paper's test views.

Views (paper section 4 / Table 3 and 4):
  ``crop``       the central crop of the image with short side ``short_side``;
  ``full``       the whole image with short side ``short_side``, aspect kept, one pass
                 through SPP. Images are bucketed and zero-padded to a few shapes and each
                 pools only its own valid extent, so shapes never recompile per image. A
                 no-SPP network cannot take other sizes: for it, ``full`` warps the whole
                 image to the crop size (the only way a fixed-input network sees it all);
  ``ten``        4 corner + centre crops of the whole image and their flips, softmax averaged;
  ``multiview``  Table 4: for every scale in ``eval.multiview_scales`` the image and its
                 flip go through the trunk once, and crop-size windows at the centre,
                 corners and edge midpoints are pooled from the feature maps (18 per scale,
                 duplicates dropped: 6 at the smallest scale, 96 in all), plus the two full
                 views; softmax averaged.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sppnet_jax import models, ops
from sppnet_jax.data import pipeline

VIEWS = ("crop", "full", "ten", "multiview")


@functools.partial(jax.jit, static_argnums=0)
def _crop_probs(model: models.SPPNet, params, images):
  return jax.nn.softmax(model.apply({"params": params}, images))


@functools.partial(jax.jit, static_argnums=0)
def _ten_view_probs(model: models.SPPNet, params, images):
  b, v = images.shape[:2]
  probs = jax.nn.softmax(model.apply({"params": params}, images.reshape(b * v, *images.shape[2:])))
  return probs.reshape(b, v, -1).mean(axis=1)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _full_probs(model: models.SPPNet, params, images, valid_hw, crop_size: int):
  variables = {"params": params}
  if model.levels is None:
    images = jax.vmap(lambda im, hw: _warp(im, hw, crop_size))(images, valid_hw)
    return jax.nn.softmax(model.apply(variables, images))
  conv = model.apply(variables, images, valid_hw, method=models.SPPNet.conv_features)
  pooled = ops.padded_spp(conv, models.map_extent(model.layers, valid_hw), model.levels)
  return jax.nn.softmax(model.apply(variables, pooled, method=models.SPPNet.classify))


def _warp(image, hw, size: int):
  """Resizes the valid [0, h) x [0, w) region of a padded image to size x size."""
  scale = jnp.array([size, size], jnp.float32) / hw.astype(jnp.float32)
  return jax.image.scale_and_translate(image, (size, size, 3), (0, 1), scale, jnp.zeros(2), "linear")


def _flip_valid(images, valid_hw):
  """Mirrors each image's valid columns [0, w) in place, leaving the padding where it is."""
  cols = jnp.arange(images.shape[2])
  w = valid_hw[:, 1:2]
  index = jnp.where(cols[None] < w, w - 1 - cols[None], cols[None])
  return jnp.take_along_axis(images, index[:, None, :, None], axis=2)


def window_grid(valid_hw: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
  """Crop-size windows at the centre, 4 corners and 4 edge midpoints of each image.

  Returns windows (B, 9, 4) [x1, y1, x2, y2] in pixels and a (B, 9) mask that drops windows
  identical to an earlier one (when a side equals the crop size only 3 positions differ).
  """
  valid_hw = np.asarray(valid_hw)
  b = valid_hw.shape[0]
  windows = np.zeros((b, 9, 4), np.float32)
  keep = np.zeros((b, 9), bool)
  for i, (h, w) in enumerate(valid_hw):
    ys = (0, (h - crop) // 2, h - crop)
    xs = (0, (w - crop) // 2, w - crop)
    seen = set()
    for j, (y, x) in enumerate((y, x) for y in ys for x in xs):
      windows[i, j] = (x, y, x + crop - 1, y + crop - 1)
      keep[i, j] = (y, x) not in seen
      seen.add((y, x))
  return windows, keep


@functools.partial(jax.jit, static_argnums=0)
def _window_probs_sum(model: models.SPPNet, params, images, valid_hw, windows, keep):
  """Sum of softmax over the kept windows of the image and of its flip."""
  variables = {"params": params}
  map_hw = models.map_extent(model.layers, valid_hw)
  geometry = models.geometry(model.layers)
  total = 0.0
  for flipped in (False, True):
    x = _flip_valid(images, valid_hw) if flipped else images
    conv = model.apply(variables, x, valid_hw, method=models.SPPNet.conv_features)
    boxes = ops.project_boxes(windows, geometry, map_hw)
    pooled = ops.roi_spp(conv, boxes, keep, model.levels)
    b, r = pooled.shape[:2]
    probs = jax.nn.softmax(model.apply(variables, pooled.reshape(b * r, -1), method=models.SPPNet.classify))
    total = total + (probs.reshape(b, r, -1) * keep[..., None]).sum(axis=1)
  return total


def _errors(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
  top5 = np.argsort(-probs, axis=-1)[:, :5]
  top1_wrong = (top5[:, 0] != labels) & mask
  top5_wrong = ~(top5 == labels[:, None]).any(-1) & mask
  return int(top1_wrong.sum()), int(top5_wrong.sum()), int(mask.sum())


def _summary(top1: int, top5: int, n: int) -> dict:
  if n == 0:
    raise ValueError("the evaluation split is empty.")
  return {"top1_error": 100.0 * top1 / n, "top5_error": 100.0 * top5 / n, "num_examples": n}


def evaluate_params(model: models.SPPNet, params, source, *, view: str, config: ml_collections.ConfigDict,
                    mean: np.ndarray) -> dict:
  """Top-1/top-5 error (%) of ``params`` on ``source`` under ``view``."""
  if view not in VIEWS:
    raise ValueError(f"unknown view {view!r}; choose from {VIEWS}.")
  d, e = config.data, config.eval
  if view == "multiview":
    return _multiview(model, params, source, config, mean)
  batches = pipeline.eval_batches(source, view=view, batch_size=e.batch_size, crop_size=d.crop_size,
                                  short_side=d.short_side, mean=mean, bucket=e.bucket)
  top1 = top5 = n = 0
  for batch in batches:
    images = jnp.asarray(batch["image"])
    if view == "crop":
      probs = _crop_probs(model, params, images)
    elif view == "ten":
      probs = _ten_view_probs(model, params, images)
    else:
      probs = _full_probs(model, params, images, jnp.asarray(batch["valid_hw"]), d.crop_size)
    counts = _errors(np.asarray(probs), np.asarray(batch["label"]), np.asarray(batch["mask"]))
    top1, top5, n = top1 + counts[0], top5 + counts[1], n + counts[2]
  return _summary(top1, top5, n)


def _multiview(model, params, source, config, mean) -> dict:
  if model.levels is None:
    raise ValueError("the multiview protocol pools windows from feature maps, which needs an SPP network.")
  d, e = config.data, config.eval
  probs: dict[int, np.ndarray] = {}
  labels: dict[int, int] = {}
  views = np.zeros(len(source))

  def add(index, label, values, count):
    for i, l, v, c in zip(index, label, values, count):
      probs[int(i)] = probs.get(int(i), 0.0) + v
      labels[int(i)] = int(l)
      views[int(i)] += c

  for scale in e.multiview_scales:
    for batch in pipeline.eval_batches(source, view="full", batch_size=e.batch_size, crop_size=d.crop_size,
                                       short_side=scale, mean=mean, bucket=e.bucket):
      windows, keep = window_grid(batch["valid_hw"], d.crop_size)
      keep &= np.asarray(batch["mask"])[:, None]
      total = _window_probs_sum(model, params, jnp.asarray(batch["image"]), jnp.asarray(batch["valid_hw"]),
                                jnp.asarray(windows), jnp.asarray(keep))
      m = np.asarray(batch["mask"])
      add(batch["index"][m], batch["label"][m], np.asarray(total)[m], 2 * keep.sum(1)[m])
  for batch in pipeline.eval_batches(source, view="full", batch_size=e.batch_size, crop_size=d.crop_size,
                                     short_side=d.short_side, mean=mean, bucket=e.bucket):
    m = np.asarray(batch["mask"])
    images, hw = jnp.asarray(batch["image"]), jnp.asarray(batch["valid_hw"])
    full = _full_probs(model, params, images, hw, d.crop_size) + _full_probs(model, params, _flip_valid(images, hw), hw,
                                                                           d.crop_size)
    add(batch["index"][m], batch["label"][m], np.asarray(full)[m], np.full(m.sum(), 2))
  order = sorted(probs)
  averaged = np.stack([probs[i] / views[i] for i in order])
  result = _summary(*_errors(averaged, np.array([labels[i] for i in order]), np.ones(len(order), bool)))
  result["views_per_image"] = float(views[order].mean())
  return result
