"""Receptive-field geometry of a conv trunk and projection of image windows onto its map.

Coordinates: image pixels are 0-based and pixel ``i`` has its centre at ``i``; a window
``[x1, y1, x2, y2]`` covers pixels ``x1..x2`` and ``y1..y2`` (inclusive). Feature-map
cells are 0-based integers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# (kernel, stride, pad) of one conv or pooling layer; pad is applied on both sides.
SpatialLayer = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Where the cells of the last map of a trunk sit in the image.

  Attributes:
    stride: pixels between neighbouring cells (the product of the layer strides).
    receptive_field: side of the square of input pixels one cell sees.
    offset: pixel position of the receptive-field centre of cell 0; cell ``u`` is centred
      at ``offset + stride * u``.
  """
  stride: int
  receptive_field: int
  offset: float


def trunk_geometry(layers: Sequence[SpatialLayer]) -> Geometry:
  """Composes the (kernel, stride, pad) of each spatial layer, first to last."""
  stride, field, offset = 1, 1, 0.0
  for kernel, step, pad in layers:
    offset += stride * ((kernel - 1) / 2 - pad)
    field += (kernel - 1) * stride
    stride *= step
  return Geometry(stride=stride, receptive_field=field, offset=offset)


def layer_output(size: Any, layer: SpatialLayer) -> Any:
  """Side(s) after one (kernel, stride, pad) layer, floor rounding as conv/pooling do.

  ``size`` is an int or an integer array of sides (numpy or jax, traceable): elementwise.
  """
  kernel, stride, pad = layer
  return (size + 2 * pad - kernel) // stride + 1


def layer_shapes(layers: Sequence[SpatialLayer], size: Any) -> Iterator[Any]:
  """The one layer-shape iterator: yields the side(s) after each layer in turn, first to last.

  ``size`` as in :func:`layer_output` (e.g. ``np.array((h, w))`` or per-image extents (B, 2)).
  Used by the trunk's padding masks, the model summary, the FLOP counts and :func:`output_size`.
  """
  for layer in layers:
    size = layer_output(size, layer)
    yield size


def final_shape(layers: Sequence[SpatialLayer], size: Any) -> Any:
  """The side(s) after all the layers (``size`` itself when there are none)."""
  for size in layer_shapes(layers, size):
    pass
  return size


def output_size(layers: Sequence[SpatialLayer], size: int) -> int:
  """Map side after the layers (floor rounding, as VALID conv/pooling); <= 0 when too small."""
  for size in layer_shapes(layers, size):
    if size < 1:
      return size
  return size


def min_input_size(layers: Sequence[SpatialLayer], min_output: int = 1) -> int:
  """The smallest input side for which the last map is at least ``min_output`` cells."""
  size = 1
  while output_size(layers, size) < min_output:
    size += 1
  return size


def project_boxes(windows: jax.Array, geometry: Geometry, map_hw: jax.Array) -> jax.Array:
  """Projects pixel windows onto feature-map cells (the paper's appendix rule).

  The left/top edge goes to the first cell whose receptive-field centre lies strictly
  inside the window, the right/bottom edge to the last such cell:
  ``left = floor((x1 - offset) / S) + 1`` and ``right = ceil((x2 - offset) / S) - 1``.
  With ``offset = 0`` this is the paper's ``floor(x/S) + 1`` and ``ceil(x/S) - 1``. A
  window too small to contain any centre collapses to the one cell nearest its centre.
  The result is clamped to the map.

  Args:
    windows: (..., R, 4) float windows [x1, y1, x2, y2] in pixels.
    geometry: the trunk's geometry.
    map_hw: (..., 2) (height, width) of each image's valid map, broadcast against the
      leading dimensions of ``windows`` (pass a (B, 2) array for (B, R, 4) windows).

  Returns:
    (..., R, 4) int32 boxes [x1, y1, x2, y2] in cells, inclusive, for ``roi_spp``.
  """
  if not isinstance(windows, jax.core.Tracer):
    w = np.asarray(windows, np.float64)
    if w.shape[-1:] != (4,):
      raise ValueError(f"windows must be (..., 4) [x1, y1, x2, y2]; got shape {w.shape}.")
    if not np.isfinite(w).all():
      raise ValueError("windows contain NaN or inf; drop those proposals before projecting them.")
    if ((w[..., 2] < w[..., 0]) | (w[..., 3] < w[..., 1])).any():
      raise ValueError("windows are inverted somewhere (x2 < x1 or y2 < y1); expected [x1, y1, x2, y2].")
  windows = jnp.asarray(windows, jnp.float32)
  map_hw = jnp.asarray(map_hw, jnp.int32)[..., None, :]
  s, o = float(geometry.stride), float(geometry.offset)

  def axis(lo, hi, size):
    first = jnp.floor((lo - o) / s) + 1
    last = jnp.ceil((hi - o) / s) - 1
    nearest = jnp.floor(((lo + hi) / 2 - o) / s + 0.5)
    empty = first > last
    first = jnp.where(empty, nearest, first)
    last = jnp.where(empty, nearest, last)
    limit = (size - 1).astype(jnp.float32)
    return jnp.clip(first, 0, limit), jnp.clip(last, 0, limit)

  x1, x2 = axis(windows[..., 0], windows[..., 2], map_hw[..., 1])
  y1, y2 = axis(windows[..., 1], windows[..., 3], map_hw[..., 0])
  return jnp.stack([x1, y1, x2, y2], axis=-1).astype(jnp.int32)
