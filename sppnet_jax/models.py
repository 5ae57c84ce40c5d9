"""The paper's four conv trunks (Table 1) with an SPP head or the no-SPP baseline head.

Every trunk is a tuple of layer specs; the same tuple builds the Flax module and gives the
receptive-field geometry (``geometry``) and map sizes (``conv_map_size``), so the two can
never disagree. Paddings are chosen so that floor-rounded (VALID) pooling gives the paper's
map sizes: 13x13 for ZF-5 and Convnet*-5 and 18x18 for Overfeat at 224, 10x10 for ZF-5 at
180 (Caffe and cuda-convnet rounded pooled sizes up; the released ZF-5 pads conv2 by 0 and
relies on that, here conv2 pads by 2 instead).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax import ops


@dataclasses.dataclass(frozen=True)
class Conv:
  features: int
  kernel: int
  stride: int = 1
  pad: int = 0


@dataclasses.dataclass(frozen=True)
class Pool:
  window: int
  stride: int


@dataclasses.dataclass(frozen=True)
class LRN:
  """Local response normalisation, Caffe conventions.

  ``within``: ``x * (1 + alpha / size**2 * sum_{size x size, zero padded} x**2) ** -beta``
  (the released ZF-5: size 3, alpha 5e-5, beta 0.75).
  ``across``: ``x * (1 + alpha / size * sum_{size channels} x**2) ** -beta`` (AlexNet-style).
  """
  kind: str
  size: int
  alpha: float
  beta: float = 0.75


Layer = Conv | Pool | LRN

_ZF_LRN = LRN("within", 3, 5e-5)
_ALEX_LRN = LRN("across", 5, 1e-4)

TRUNKS: dict[str, tuple[Layer, ...]] = {
    "zf5": (Conv(96, 7, 2, 1), _ZF_LRN, Pool(3, 2),
            Conv(256, 5, 2, 2), _ZF_LRN, Pool(3, 2),
            Conv(384, 3, 1, 1), Conv(384, 3, 1, 1), Conv(256, 3, 1, 1)),
    "convnet5": (Conv(96, 11, 4, 2), _ALEX_LRN,
                 Conv(256, 5, 1, 2), _ALEX_LRN, Pool(3, 2),
                 Conv(384, 3, 1, 1), Pool(3, 2),
                 Conv(384, 3, 1, 1), Conv(256, 3, 1, 1)),
    "overfeat5": (Conv(96, 7, 2, 0), Pool(3, 3), _ALEX_LRN,
                  Conv(256, 5, 1, 2), Pool(2, 2),
                  Conv(512, 3, 1, 1), Conv(512, 3, 1, 1), Conv(512, 3, 1, 1)),
    "overfeat7": (Conv(96, 7, 2, 0), Pool(3, 3), _ALEX_LRN,
                  Conv(256, 5, 1, 2), Pool(2, 2),
                  Conv(512, 3, 1, 1), Conv(512, 3, 1, 1), Conv(512, 3, 1, 1),
                  Conv(512, 3, 1, 1), Conv(512, 3, 1, 1)),
}

# No-SPP baselines: the pool5 (window, stride) that turns the 224-input map into 6x6.
BASELINE_POOL5 = {"zf5": (3, 2), "convnet5": (3, 2), "overfeat5": (3, 3), "overfeat7": (3, 3)}


def trunk_layers(name: str, width: float = 1.0, depth: int | None = None,
                 channels: Sequence[int] | None = None) -> tuple[Layer, ...]:
  """The layer specs of trunk ``name``, conv widths scaled by ``width``.

  ``depth`` keeps only the first ``depth`` conv layers (everything after the last kept conv
  is dropped): a slim, shallow version of the same code for tests and CPU runs.
  ``channels``, if given, sets every kept conv's width explicitly instead of ``width``
  (one entry per conv; kernels, strides and paddings stay the trunk's).
  """
  if name not in TRUNKS:
    raise ValueError(f"unknown trunk {name!r}; choose one of {sorted(TRUNKS)}.")
  if width <= 0:
    raise ValueError(f"width must be positive; got {width}.")
  num_convs = sum(isinstance(layer, Conv) for layer in TRUNKS[name])
  kept = num_convs if depth is None else min(depth, num_convs)
  if channels is not None and (len(channels) != kept or any(int(c) < 1 for c in channels)):
    raise ValueError(f"channels must give {kept} positive conv widths for {name!r}"
                     f"{'' if depth is None else f' at depth {depth}'}; got {tuple(channels)}.")
  layers, convs = [], 0
  for layer in TRUNKS[name]:
    if isinstance(layer, Conv):
      if depth is not None and convs == depth:
        break
      features = int(channels[convs]) if channels is not None else max(1, int(round(layer.features * width)))
      convs += 1
      layer = dataclasses.replace(layer, features=features)
    layers.append(layer)
  return tuple(layers)


def spatial_layers(layers: Sequence[Layer]) -> list[ops.geometry.SpatialLayer]:
  """(kernel, stride, pad) of each conv and pooling layer, for the geometry ops."""
  out = []
  for layer in layers:
    if isinstance(layer, Conv):
      out.append((layer.kernel, layer.stride, layer.pad))
    elif isinstance(layer, Pool):
      out.append((layer.window, layer.stride, 0))
  return out


def geometry(layers: Sequence[Layer]) -> ops.Geometry:
  return ops.trunk_geometry(spatial_layers(layers))


def conv_map_size(layers: Sequence[Layer], size: int) -> int:
  return ops.output_size(spatial_layers(layers), size)


def lrn(x: jax.Array, spec: LRN) -> jax.Array:
  if spec.kind == "within":
    return _lrn_within(x, spec)
  if spec.kind != "across":
    raise ValueError(f"LRN kind must be 'within' or 'across'; got {spec.kind!r}.")
  sq = jnp.square(x.astype(jnp.float32))
  half = spec.size // 2
  total = jax.lax.reduce_window(sq, 0.0, jax.lax.add, (1, 1, 1, spec.size), (1, 1, 1, 1),
                                ((0, 0), (0, 0), (0, 0), (half, half)))
  return (x * jnp.power(1.0 + spec.alpha / spec.size * total, -spec.beta).astype(x.dtype)).astype(x.dtype)


def _box_sum(t: jax.Array, size: int) -> jax.Array:
  """The zero-padded ``size`` x ``size`` window sum of an NHWC map: one fusion of the shifted views
  of a padded copy (XLA's CPU reduce-window took longer than the rest of the LRN)."""
  half, (h, w) = size // 2, t.shape[1:3]
  padded = jnp.pad(t, ((0, 0), (half, half), (half, half), (0, 0)))
  return sum(padded[:, i:i + h, j:j + w, :] for i in range(size) for j in range(size))


def _inverse_power(t: jax.Array, beta: float) -> jax.Array:
  """``t ** -beta``; for the paper's 0.75 as ``rsqrt(t) * sqrt(rsqrt(t))``, which is cheaper than a
  general power (a log and an exp per element) and equal to it within float rounding."""
  if beta == 0.75:
    r = jax.lax.rsqrt(t)
    return r * jnp.sqrt(r)
  return jnp.power(t, -beta)


def _lrn_within_parts(x: jax.Array, spec: LRN) -> tuple[jax.Array, jax.Array, jax.Array]:
  x32 = x.astype(jnp.float32)
  denominator = 1.0 + spec.alpha / spec.size**2 * _box_sum(jnp.square(x32), spec.size)
  scale = _inverse_power(denominator, spec.beta)
  return (x32 * scale).astype(x.dtype), denominator, scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _lrn_within(x: jax.Array, spec: LRN) -> jax.Array:
  """Within-channel LRN with its gradient written out: for ``y = x * d ** -beta`` with
  ``d = 1 + k * box(x**2)`` and ``k = alpha / size**2``, ``dx = g * d ** -beta - 2 * beta * k * x *
  box(g * y / d)`` (the window is symmetric, so the box sum is its own transpose). Autodiff of the
  same formula evaluated the power's derivative through a log and an exp and reduce-windows."""
  return _lrn_within_parts(x, spec)[0]


def _lrn_within_forward(x, spec):
  y, denominator, scale = _lrn_within_parts(x, spec)
  return y, (x, denominator, scale)


def _lrn_within_backward(spec, residuals, g):
  x, denominator, scale = residuals
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  spread = _box_sum(g32 * x32 * scale / denominator, spec.size)
  dx = g32 * scale - (2.0 * spec.beta * spec.alpha / spec.size**2) * x32 * spread
  return (dx.astype(x.dtype),)


_lrn_within.defvjp(_lrn_within_forward, _lrn_within_backward)


def _initializers(kind: str, bias: float):
  if kind == "paper":  # the released model: Gaussian std 0.01, constant biases
    return nn.initializers.normal(0.01), nn.initializers.constant(bias)
  if kind == "he":
    return nn.initializers.he_normal(), nn.initializers.zeros
  raise ValueError(f"initializer must be 'paper' or 'he'; got {kind!r}.")


# Bias constants of the released ZF-5 (conv1 0, conv2 1, conv3 0, conv4 1, conv5 1, fc 1).
_PAPER_CONV_BIAS = (0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0)


class Trunk(nn.Module):
  """Conv -> ReLU, LRN and max-pool layers in the order of ``layers``; NHWC."""
  layers: tuple[Layer, ...]
  initializer: str = "he"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, valid_hw: jax.Array | None = None) -> jax.Array:
    """Applies the layers. ``valid_hw`` (B, 2), if given, is each image's true (h, w) in a
    zero-padded batch: after every layer the cells outside the image's own extent are zeroed,
    so each image's valid map equals what it would be unpadded (zeros are exactly what the
    convolutions' own padding reads)."""
    conv_index = 0
    extents = None
    if valid_hw is not None:
      valid_hw = jnp.asarray(valid_hw, jnp.int32)
      x = _mask_to_extent(x, valid_hw)
      extents = ops.layer_shapes(spatial_layers(self.layers), valid_hw)
    for layer in self.layers:
      if isinstance(layer, Conv):
        w_init, b_init = _initializers(self.initializer, _PAPER_CONV_BIAS[conv_index])
        conv_index += 1
        x = nn.Conv(layer.features, (layer.kernel, layer.kernel), (layer.stride, layer.stride),
                    padding=[(layer.pad, layer.pad)] * 2, dtype=self.dtype, kernel_init=w_init,
                    bias_init=b_init, name=f"conv{conv_index}")(x)
        x = nn.relu(x)
      elif isinstance(layer, Pool):
        x = ops.pooling.max_pool(x, layer.window, layer.stride)
      else:
        x = lrn(x, layer)
      if extents is not None and not isinstance(layer, LRN):
        x = _mask_to_extent(x, next(extents))
    return x


def _mask_to_extent(x: jax.Array, valid_hw: jax.Array) -> jax.Array:
  rows = jnp.arange(x.shape[1])[None, :, None] < valid_hw[:, 0, None, None]
  cols = jnp.arange(x.shape[2])[None, None, :] < valid_hw[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], x, jnp.zeros((), x.dtype))


def map_extent(layers: Sequence[Layer], valid_hw: jax.Array) -> jax.Array:
  """Per-image (h, w) of the last conv map for per-image pixel extents (B, 2); traceable."""
  return ops.final_shape(spatial_layers(layers), jnp.asarray(valid_hw, jnp.int32))


class Head(nn.Module):
  """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> classifier."""
  num_classes: int
  fc_width: int = 4096
  dropout: float = 0.5
  initializer: str = "he"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_fc7: bool = False) -> jax.Array:
    for name in ("fc6", "fc7"):
      w_init, b_init = _initializers(self.initializer, 1.0)
      x = nn.relu(nn.Dense(self.fc_width, dtype=self.dtype, kernel_init=w_init, bias_init=b_init, name=name)(x))
      if name == "fc7" and return_fc7:
        return x
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    # The classifier starts near zero (Gaussian std 0.01, as the released model) under both
    # initialisers, so the first steps see near-uniform predictions.
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.normal(0.01), name="fc8")(x)
    return logits.astype(jnp.float32)


class SPPNet(nn.Module):
  """A trunk, then spatial pyramid pooling (``levels``) or the no-SPP pool5 (``levels=None``), then the fc head.

  ``apply(params, x)`` gives logits for any input at least ``min_input_size`` on a side when
  ``levels`` is set; the no-SPP network accepts only its training size.
  Methods for ``apply(..., method=...)``: ``conv_features`` (trunk only, for feature
  extraction and detection), ``pool`` (conv map to the fc6 input), ``classify`` (fc6 input
  to logits, or fc7 with ``return_fc7``).
  """
  layers: tuple[Layer, ...]
  num_classes: int = 1000
  levels: tuple[int, ...] | None = ops.DEFAULT_LEVELS
  baseline_pool: tuple[int, int] = (3, 2)
  fc_width: int = 4096
  dropout: float = 0.5
  initializer: str = "he"
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.levels is not None:
      ops.check_levels(self.levels)
    self.trunk = Trunk(self.layers, self.initializer, self.dtype)
    self.head = Head(self.num_classes, self.fc_width, self.dropout, self.initializer, self.dtype)

  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    return self.classify(self.pool(self.conv_features(images)), train)

  def conv_features(self, images: jax.Array, valid_hw: jax.Array | None = None) -> jax.Array:
    """The last conv map; with ``valid_hw`` (B, 2) padded images are treated as their own sizes."""
    check_images(images, self.layers)
    return self.trunk(images.astype(self.dtype), valid_hw)

  def pool(self, conv: jax.Array) -> jax.Array:
    if self.levels is not None:
      return ops.spp(conv, self.levels)
    window, stride = self.baseline_pool
    pooled = nn.max_pool(conv, (window, window), (stride, stride), "VALID")
    return pooled.reshape(pooled.shape[0], -1)

  def classify(self, pooled: jax.Array, train: bool = False, return_fc7: bool = False) -> jax.Array:
    return self.head(pooled, train, return_fc7)

  def padded(self, images: jax.Array, valid_hw: jax.Array, train: bool = False) -> jax.Array:
    """Logits of zero-padded images, each taken at its own size ``valid_hw`` (B, 2): the trunk
    masks every layer to the image's extent and SPP pools only that extent, so each row equals
    the unpadded image's logits. Needs an SPP network."""
    if self.levels is None:
      raise ValueError("padded inputs of different sizes need an SPP network; the no-SPP head takes only its "
                       "training size.")
    conv = self.conv_features(images, valid_hw)
    pooled = ops.padded_spp(conv, map_extent(self.layers, valid_hw), self.levels)
    return self.classify(pooled, train)


def min_image_size(layers: Sequence[Layer]) -> int:
  return ops.min_input_size(spatial_layers(layers))


def check_images(images, layers: Sequence[Layer]) -> None:
  """Clear errors for inputs the trunk cannot take."""
  if getattr(images, "ndim", None) != 4:
    raise ValueError(f"images must be (B, H, W, 3) NHWC; got shape {getattr(images, 'shape', None)}.")
  smallest = min_image_size(layers)
  if min(images.shape[1:3]) < smallest:
    raise ValueError(f"images of {images.shape[1]}x{images.shape[2]} are too small for this trunk: its last conv "
                     f"map would be empty. The smallest side that works is {smallest} pixels; resize the "
                     "images up or use a trunk with fewer strided layers.")


def create_model(name: str, num_classes: int = 1000, spp: bool = True, levels: Sequence[int] = ops.DEFAULT_LEVELS,
                 width: float = 1.0, depth: int | None = None, fc_width: int = 4096, dropout: float = 0.5,
                 initializer: str = "he", dtype=jnp.float32, channels: Sequence[int] | None = None) -> SPPNet:
  """The network ``name`` (zf5, convnet5, overfeat5, overfeat7), with SPP or the no-SPP baseline head."""
  layers = trunk_layers(name, width, depth, channels)
  return SPPNet(layers=layers, num_classes=num_classes, levels=ops.check_levels(levels) if spp else None,
                baseline_pool=BASELINE_POOL5[name], fc_width=fc_width, dropout=dropout, initializer=initializer,
                dtype=jnp.dtype(dtype))


def summary(model: SPPNet, image_size: int | tuple[int, int] = 224) -> str:
  """A table of the layers with their output shapes and parameter counts, for one image of ``image_size``."""
  h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
  images = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  rows, shape = [("input", (h, w, 3), 0)], (h, w, 3)
  conv_index = 0
  sizes = ops.layer_shapes(spatial_layers(model.layers), np.array((h, w)))
  for layer in model.layers:
    if isinstance(layer, Conv):
      conv_index += 1
      name = f"conv{conv_index}"
      shape = (*map(int, next(sizes)), layer.features)
      count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params["trunk"][name]))
      rows.append((f"{name} {layer.kernel}x{layer.kernel}/{layer.stride} pad {layer.pad}", shape, count))
    elif isinstance(layer, Pool):
      shape = (*map(int, next(sizes)), shape[2])
      rows.append((f"pool {layer.window}x{layer.window}/{layer.stride}", shape, 0))
    else:
      rows.append((f"lrn {layer.kind} {layer.size}", shape, 0))
  if model.levels is not None:
    rows.append((f"spp {list(model.levels)}", (ops.spp_output_dim(shape[2], model.levels),), 0))
  else:
    window, stride = model.baseline_pool
    side = [int(s) for s in ops.layer_output(np.array(shape[:2]), (window, stride, 0))]
    rows.append((f"pool5 {window}x{window}/{stride}", (side[0] * side[1] * shape[2],), 0))
  for name in ("fc6", "fc7", "fc8"):
    layer_params = params["head"][name]
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(layer_params))
    rows.append((name, (layer_params["kernel"].shape[1],), count))
  total = sum(c for _, _, c in rows)
  lines = [f"{'layer':<28}{'output':>18}{'params':>14}", "-" * 60]
  lines += [f"{n:<28}{'x'.join(map(str, s)):>18}{c:>14,}" for n, s, c in rows]
  lines += ["-" * 60, f"{'total':<28}{'':>18}{total:>14,}"]
  return "\n".join(lines)
