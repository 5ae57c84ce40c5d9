"""Fixed-length features of a trained classification network, layer by layer (paper section 5).

Layers (:data:`LAYERS`), all taken after the layer's ReLU where it has one:

  ``conv4``, ``conv5``, ... (``conv<k>``)  the k-th conv map, flattened; fixed-size (crop) views only;
  ``pool5``   the paper's "pool5/7 (6x6)": the finest pyramid level of an SPP network (6x6 bins),
              or the no-SPP network's pool5 (3x3/2 max-pool of the last conv map);
  ``spp``     every bin of the pyramid (SPP networks only);
  ``fc6``, ``fc7``  the head's hidden layers (no dropout).

Views: ``crop`` resizes the short side to ``crop_short_side`` and takes the central ``size`` x
``size`` crop; ``full`` resizes the short side to ``size`` and keeps the whole image. Full images
go through the network in padded shape buckets (two fixed canvases per size, landscape and
portrait, as in the full-view evaluation), the trunk masked to each image's extent and SPP pooled
over it, so a row equals the unpadded image's features and a dataset costs a few compiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sppnet_jax import compiler, models, ops, run_files, views
from sppnet_jax.data import augment, pipeline

LAYERS = ("conv4", "conv5", "pool5", "spp", "fc6", "fc7")
VIEWS = ("crop", "full")
_CONV = re.compile(r"conv([1-9][0-9]*)$")


@dataclasses.dataclass(frozen=True)
class FeatureView:
  """Where features are taken: ``view`` ('crop' or 'full'), ``size`` (crop edge, or the full
  image's short side), ``crop_short_side`` (short side before a crop; default ``size``) and the
  input normalisation ``mean`` (as :func:`sppnet_jax.data.augment.normalize` takes it)."""
  view: str
  size: int
  mean: Any
  crop_short_side: int | None = None
  batch_size: int = 32
  bucket: int = 32
  max_aspect: float = 2.0

  def __post_init__(self):
    if self.view not in VIEWS:
      raise ValueError(f"unknown feature view {self.view!r}; use one of {VIEWS}.")
    if int(self.size) < 1:
      raise ValueError(f"the view size must be a positive number of pixels; got {self.size}.")

  @property
  def short_side(self) -> int:
    return int(self.crop_short_side or self.size) if self.view == "crop" else int(self.size)

  def prepare(self, image: np.ndarray) -> np.ndarray:
    if self.view == "crop":
      return augment.normalize(augment.center_crop_view(image, int(self.size), self.short_side), self.mean)
    return augment.normalize(augment.full_view(image, int(self.size)), self.mean)


def check_layers(model: models.SPPNet, layers: Sequence[str], view: str) -> tuple[str, ...]:
  """``layers`` as a tuple, or a ValueError saying which layer this network and view cannot give."""
  layers = tuple(layers)
  if not layers:
    raise ValueError(f"no layers requested; choose from {LAYERS} (conv<k> for any conv layer).")
  num_convs = sum(isinstance(layer, models.Conv) for layer in model.layers)
  for name in layers:
    match = _CONV.match(name)
    if match:
      if not 1 <= int(match.group(1)) <= num_convs:
        raise ValueError(f"layer {name!r}: this trunk has conv1..conv{num_convs}.")
      if view != "crop":
        raise ValueError(f"layer {name!r} gives a map whose size follows the image, so it has a fixed length only "
                         "in the crop view; drop it from the full-view layers (the paper's tables do the same).")
    elif name not in LAYERS:
      raise ValueError(f"unknown layer {name!r}; choose from {LAYERS} (conv<k> for any conv layer).")
    if name == "spp" and model.levels is None:
      raise ValueError("layer 'spp' needs an SPP network; this one has the no-SPP pool5 head.")
  if view == "full" and model.levels is None:
    raise ValueError("the full view gives images of different sizes, which only an SPP network can pool to a "
                     "fixed length; use the crop view for the no-SPP network.")
  return layers


def _check_fixed_size(model: models.SPPNet, params: Any, layers: Sequence[str], view: FeatureView) -> None:
  """The no-SPP head takes one input size only: say so before a shape error deep inside fc6."""
  if model.levels is None and {"fc6", "fc7"} & set(layers):
    window, stride = model.baseline_pool
    side = (models.conv_map_size(model.layers, int(view.size)) - window) // stride + 1
    channels = [layer.features for layer in model.layers if isinstance(layer, models.Conv)][-1]
    expected = params["head"]["fc6"]["kernel"].shape[0]
    if side < 1 or side * side * channels != expected:
      raise ValueError(f"the no-SPP network's fc6 takes {expected} inputs, but a {view.size}x{view.size} crop gives "
                       f"a pool5 of {max(side, 0)}x{max(side, 0)}x{channels}; take its crop at the size it was "
                       "trained on (data.crop_size of its workdir).")


def _conv_prefix(model: models.SPPNet, k: int) -> tuple[models.Layer, ...]:
  """The trunk's layers up to and including its k-th conv (and that conv's ReLU)."""
  seen = 0
  for i, layer in enumerate(model.layers):
    seen += isinstance(layer, models.Conv)
    if seen == k:
      return tuple(model.layers[:i + 1])
  raise ValueError(f"the trunk has fewer than {k} conv layers.")


def _dense_relu(params: Any, x: jax.Array, dtype) -> jax.Array:
  return nn.relu(nn.Dense(params["kernel"].shape[1], dtype=dtype).apply({"params": params}, x))


@compiler.jit(static_argnums=(0, 3))
def layer_features(model: models.SPPNet, params: Any, images: jax.Array, layers: tuple[str, ...],
                   valid_hw: jax.Array | None = None) -> dict[str, jax.Array]:
  """Features ``{layer: (B, D) float32}`` of a batch. ``valid_hw`` (B, 2), given for a padded
  batch of full images, makes each row equal the unpadded image's features."""
  variables = {"params": params}
  conv = model.apply(variables, images, valid_hw, method=models.SPPNet.conv_features)
  if valid_hw is None:
    pool = lambda levels: ops.spp(conv, levels)
  else:
    extent = models.map_extent(model.layers, valid_hw)
    pool = lambda levels: ops.padded_spp(conv, extent, levels)
  pooled = model.apply(variables, conv, method=models.SPPNet.pool) if valid_hw is None else pool(model.levels)
  out = {}
  for name in layers:
    match = _CONV.match(name)
    if match:
      prefix = _conv_prefix(model, int(match.group(1)))
      if len(prefix) == len(model.layers):
        x = conv
      else:
        trunk = models.Trunk(prefix, model.initializer, model.dtype)
        convs = {f"conv{i}": params["trunk"][f"conv{i}"] for i in range(1, int(match.group(1)) + 1)}
        x = trunk.apply({"params": convs}, images.astype(model.dtype))
    elif name == "pool5":
      x = pooled if model.levels is None else pool((max(model.levels),))
    elif name == "spp":
      x = pooled
    elif name == "fc6":
      x = _dense_relu(params["head"]["fc6"], pooled, model.dtype)
    else:  # fc7
      x = model.apply(variables, pooled, return_fc7=True, method=models.SPPNet.classify)
    out[name] = x.reshape(x.shape[0], -1).astype(jnp.float32)
  return out


class _ImagesOnly:
  """A source's images with a dummy label, for the evaluation batcher (targets are read apart)."""

  def __init__(self, source: Sequence[dict[str, Any]]):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._source[index]["image"], "label": 0}


def extract(model: models.SPPNet, params: Any, source: Sequence[dict[str, Any]], layers: Sequence[str],
            view: FeatureView, progress: bool = False) -> dict[str, np.ndarray]:
  """Features ``{layer: (N, D) float32}`` of every image of ``source``, in source order."""
  layers = check_layers(model, layers, view.view)
  _check_fixed_size(model, params, layers, view)
  images = _ImagesOnly(source)
  if view.view == "crop":
    batches = pipeline.eval_batches(images, prepare=view.prepare, batch_size=view.batch_size)
  else:
    batches = pipeline.eval_batches(images, prepare=view.prepare, batch_size=view.batch_size, bucket=view.bucket,
                                    canvases=views.canvases(view.short_side, view.bucket, view.max_aspect))
  parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
  order = []
  with tqdm.tqdm(total=len(source), unit="img", desc=f"features {view.view} {view.size}", disable=not progress,
                 dynamic_ncols=True) as bar:
    for batch in batches:
      hw = jnp.asarray(batch["valid_hw"]) if view.view == "full" else None
      feats = layer_features(model, params, jnp.asarray(batch["image"]), layers, hw)
      mask = np.asarray(batch["mask"])
      order.append(batch["index"][mask])
      for name in layers:
        parts[name].append(np.asarray(feats[name])[mask])
      bar.update(int(mask.sum()))
  if not order:
    raise ValueError("the source is empty: there are no images to extract features from.")
  index = np.concatenate(order)
  inverse = np.argsort(index, kind="stable")
  out = {name: np.concatenate(parts[name])[inverse] for name in layers}
  for name, x in out.items():
    if not np.isfinite(x).all():
      raise FloatingPointError(f"layer {name!r} gave non-finite features: the trunk's parameters or its input "
                               "normalisation are broken (check the trunk's workdir and the view's mean).")
  return out


def cache_key(**fields: Any) -> str:
  """A short stable hash of what determines a feature file (trunk, checkpoint, data, view)."""
  text = json.dumps(fields, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_extract(path: pathlib.Path, key: str, compute, layers: Sequence[str]) -> dict[str, np.ndarray]:
  """Features from ``path`` when it holds ``key`` and every layer; otherwise ``compute()``, saved
  there in float16 (float32 for a layer whose values float16 cannot hold)."""
  path = pathlib.Path(path)
  if path.exists():
    with np.load(path) as f:
      if str(f["key"]) == key and all(name in f.files for name in layers):
        return {name: f[name].astype(np.float32) for name in layers}
  feats = compute()
  half = np.finfo(np.float16).max
  stored = {name: x.astype(np.float16) if np.abs(x).max(initial=0.0) < half else x for name, x in feats.items()}
  path.parent.mkdir(parents=True, exist_ok=True)
  run_files.write_npz(path, key=np.array(key), **stored)
  return {name: stored[name].astype(np.float32) for name in layers}
