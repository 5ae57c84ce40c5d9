"""Test views, in one registry: how an image becomes network input, how inputs are batched,
and how the network scores them.

A view is a :class:`View`: ``prepare`` (host: uint8 image -> normalised float32 input),
``bucketed`` (fixed-shape batches, or shape buckets with ``valid_hw``) and ``scores``
(device: a batch -> class probabilities (B, K)); a view that needs more than one pass per
image (``multiview``) gives its own ``run`` instead. ``eval.views`` names registry entries;
:func:`register` adds one.

Every view is taken at a test size (:class:`ViewSpec`). ``size`` is the crop edge; the image
is first resized to short side ``size * short_side / crop_size`` (256 for 224 in the
paper, 128 for 112 in the slim configs), so at ``size == crop_size`` the views are the
paper's and at other sizes the objects are scaled by ``size / crop_size``:

  ``crop``       the centre ``size`` x ``size`` crop;
  ``full``       the whole image, aspect kept, one pass through SPP (padded into two fixed
                 shapes per test size, landscape and portrait, each image pooled over its own
                 extent, so nothing recompiles per image);
  ``ten``        4 corner + centre crops and their flips, softmax averaged;
  ``multiview``  Table 4: for every scale in ``eval.multiview_scales`` (short sides) the
                 image and its flip go through the trunk once and crop-size windows at the
                 centre, corners and edge midpoints are pooled from the maps (18 per scale,
                 duplicates dropped), plus the two full views at the training short side;
                 softmax averaged. Each pass pads its images into two fixed shapes per scale
                 (:func:`canvases`, long side up to ``eval.max_aspect`` times the
                 short side), so the whole protocol compiles a fixed number of times.

A no-SPP network takes only ``crop_size`` inputs: its ``crop``/``ten`` inputs of another
size and its ``full`` input are warped (resized, aspect not kept) to ``crop_size`` on the
device; results say so with ``warped: True``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sppnet_jax import compiler, models, ops
from sppnet_jax.data import augment, pipeline


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  """Where a view is taken: the network's training crop and short side, the test size, the
  input normalisation and the batching."""
  crop_size: int
  short_side: int
  size: int
  mean: Any
  batch_size: int = 64
  bucket: int = 32
  multiview_scales: tuple[int, ...] = ()
  max_aspect: float = 2.0
  progress: bool = False

  @property
  def test_short_side(self) -> int:
    return int(round(self.size * self.short_side / self.crop_size))


def spec_from_config(config, mean, size: int | None = None) -> ViewSpec:
  d, e = config.data, config.eval
  return ViewSpec(crop_size=d.crop_size, short_side=d.short_side, size=d.crop_size if size is None else int(size),
                  mean=mean, batch_size=e.batch_size, bucket=e.bucket,
                  multiview_scales=tuple(e.get("multiview_scales", ())),
                  max_aspect=float(e.get("max_aspect", 2.0)), progress=bool(e.get("progress_bar", False)))


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Per-example class probabilities of one view, in source-index order."""
  index: np.ndarray
  label: np.ndarray
  probs: np.ndarray
  warped: bool = False

  @property
  def top1_wrong(self) -> np.ndarray:
    return np.argmax(self.probs, -1) != self.label

  @property
  def top5_wrong(self) -> np.ndarray:
    top5 = np.argsort(-self.probs, axis=-1)[:, :5]
    return ~(top5 == self.label[:, None]).any(-1)


Runner = Callable[["View", models.SPPNet, Any, Any, ViewSpec], Predictions]


@dataclasses.dataclass(frozen=True)
class View:
  name: str
  prepare: Callable[[np.ndarray, ViewSpec], np.ndarray] | None = None
  bucketed: bool = False
  scores: Callable[[models.SPPNet, Any, dict, ViewSpec], jax.Array] | None = None
  run: Runner | None = None

  def predict(self, model: models.SPPNet, params, source, spec: ViewSpec) -> Predictions:
    return (self.run or _run_batched)(self, model, params, source, spec)


VIEWS: dict[str, View] = {}


def register(view: View) -> View:
  VIEWS[view.name] = view
  return view


def get_view(name: str) -> View:
  if name not in VIEWS:
    raise ValueError(f"unknown view {name!r}; choose from {sorted(VIEWS)}.")
  return VIEWS[name]


def _batches(view: View, source, spec: ViewSpec) -> Iterator[dict]:
  """Fixed-shape batches, or for a bucketed (whole-image) view the two :func:`canvases` of its
  test short side, so every test size compiles at most twice."""
  if not view.bucketed:
    return pipeline.eval_batches(source, prepare=functools.partial(view.prepare, spec=spec),
                                 batch_size=spec.batch_size)
  return pipeline.eval_batches(source, prepare=functools.partial(view.prepare, spec=spec), batch_size=spec.batch_size,
                               bucket=spec.bucket, canvases=canvases(spec.test_short_side, spec.bucket, spec.max_aspect))


def _collect(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], warped: bool) -> Predictions:
  if not parts:
    raise ValueError("the evaluation split is empty.")
  index, label, probs = (np.concatenate(x) for x in zip(*parts))
  order = np.argsort(index, kind="stable")
  return Predictions(index[order], label[order], probs[order], warped)


def _run_batched(view: View, model, params, source, spec: ViewSpec) -> Predictions:
  parts = []
  for batch in _batches(view, source, spec):
    probs = np.asarray(view.scores(model, params, batch, spec))
    m = np.asarray(batch["mask"])
    parts.append((batch["index"][m], batch["label"][m], probs[m]))
  warped = model.levels is None and (view.bucketed or spec.size != spec.crop_size)
  return _collect(parts, warped)


# --- device scoring -------------------------------------------------------------------------

@compiler.jit(static_argnums=(0, 3))
def _square_probs(model: models.SPPNet, params, images, net_size: int):
  """Softmax of square inputs, warped to ``net_size`` first when the network is fixed-size."""
  if model.levels is None and images.shape[1] != net_size:
    images = jax.image.resize(images, (images.shape[0], net_size, net_size, 3), "linear")
  return jax.nn.softmax(model.apply({"params": params}, images))


@compiler.jit(static_argnums=(0, 4))
def _full_probs(model: models.SPPNet, params, images, valid_hw, crop_size: int):
  variables = {"params": params}
  if model.levels is None:
    images = jax.vmap(lambda im, hw: _warp(im, hw, crop_size))(images, valid_hw)
    return jax.nn.softmax(model.apply(variables, images))
  return jax.nn.softmax(model.apply(variables, images, valid_hw, method=models.SPPNet.padded))


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


# --- the paper's views ------------------------------------------------------------------------

def _prepare_crop(image: np.ndarray, spec: ViewSpec) -> np.ndarray:
  return augment.normalize(augment.center_crop_view(image, spec.size, spec.test_short_side), spec.mean)


def _prepare_ten(image: np.ndarray, spec: ViewSpec) -> np.ndarray:
  return np.stack([augment.normalize(v, spec.mean) for v in augment.ten_view(image, spec.size, spec.test_short_side)])


def _prepare_full(image: np.ndarray, spec: ViewSpec) -> np.ndarray:
  return augment.normalize(augment.full_view(image, spec.test_short_side), spec.mean)


def _score_crop(model, params, batch, spec: ViewSpec):
  return _square_probs(model, params, jnp.asarray(batch["image"]), spec.crop_size)


def _score_ten(model, params, batch, spec: ViewSpec):
  images = jnp.asarray(batch["image"])
  b, v = images.shape[:2]
  probs = _square_probs(model, params, images.reshape(b * v, *images.shape[2:]), spec.crop_size)
  return probs.reshape(b, v, -1).mean(axis=1)


def _score_full(model, params, batch, spec: ViewSpec):
  return _full_probs(model, params, jnp.asarray(batch["image"]), jnp.asarray(batch["valid_hw"]), spec.crop_size)


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


@compiler.jit(static_argnums=0)
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


def canvases(short: int, bucket: int, max_aspect: float) -> tuple[tuple[int, int], tuple[int, int]]:
  """The two fixed batch shapes of a whole-image pass at short side ``short``: landscape and
  portrait, the long side room for ``max_aspect`` (rounded up to ``bucket``)."""
  side, long = pipeline.bucket_shape(short, int(np.ceil(short * max_aspect)), bucket)
  return (side, long), (long, side)


def _run_multiview(view: View, model, params, source, spec: ViewSpec) -> Predictions:
  if model.levels is None:
    raise ValueError("the multiview protocol pools windows from feature maps, which needs an SPP network.")
  full = VIEWS["full"]
  n = len(source)
  probs = None
  views = np.zeros(n)
  labels = np.zeros(n, np.int32)

  def add(batch, values, count):
    nonlocal probs
    m = np.asarray(batch["mask"])
    index = batch["index"][m]
    if probs is None:
      probs = np.zeros((n, values.shape[-1]), np.float64)
    np.add.at(probs, index, np.asarray(values)[m])
    np.add.at(views, index, count[m])
    labels[index] = batch["label"][m]

  bar = tqdm.tqdm(total=n * (len(spec.multiview_scales) + 1), unit="img", desc="multiview", disable=not spec.progress,
                  dynamic_ncols=True)
  with bar:
    for scale in spec.multiview_scales:
      # Two fixed shapes per scale (landscape, portrait): one compile each, whatever the images.
      for batch in pipeline.eval_batches(source, prepare=functools.partial(_prepare_full_at, short=scale,
                                                                           mean=spec.mean),
                                         batch_size=spec.batch_size, bucket=spec.bucket,
                                         canvases=canvases(scale, spec.bucket, spec.max_aspect)):
        windows, keep = window_grid(batch["valid_hw"], spec.crop_size)
        keep &= np.asarray(batch["mask"])[:, None]
        total = _window_probs_sum(model, params, jnp.asarray(batch["image"]), jnp.asarray(batch["valid_hw"]),
                                  jnp.asarray(windows), jnp.asarray(keep))
        add(batch, total, 2 * keep.sum(1))
        bar.update(int(np.sum(batch["mask"])))
    for batch in _batches(full, source, spec):
      images, hw = jnp.asarray(batch["image"]), jnp.asarray(batch["valid_hw"])
      both = (_full_probs(model, params, images, hw, spec.crop_size)
              + _full_probs(model, params, _flip_valid(images, hw), hw, spec.crop_size))
      add(batch, both, np.full(len(batch["mask"]), 2))
      bar.update(int(np.sum(batch["mask"])))
  seen = views > 0
  return Predictions(np.flatnonzero(seen).astype(np.int32), labels[seen], probs[seen] / views[seen, None])


def _prepare_full_at(image: np.ndarray, short: int, mean) -> np.ndarray:
  return augment.normalize(augment.full_view(image, short), mean)


register(View("crop", _prepare_crop, False, _score_crop))
register(View("full", _prepare_full, True, _score_full))
register(View("ten", _prepare_ten, False, _score_ten))
register(View("multiview", run=_run_multiview))
