"""The training augmentation split between host and accelerator: the host decodes and cuts, the
device resamples and does the float work.

The host does what needs the decoded image: it draws the example's crop window (the window of
``augment.train_crop``: a crop of the image resized to its short side), flip and colour-noise
coefficients from the same generator and in the same order as the host transform
(``augment.train_example``), so the randomness stays a function of (seed, epoch, example). It
then cuts the source pixels under the crop (with the resampling kernel's margin) onto a fixed
uint8 canvas of ``canvas_side(crop_size)`` = 2 x crop_size (:func:`crop_region`), and never
resamples. What crosses to the device is that canvas with its ``window`` (where the crop lies
on it, 6 float32), ``flip`` (bool) and ``alpha`` (3 float32).

:func:`finish_batch`, traced into the jitted train step, resamples each canvas to the crop
(:func:`resample_crops`: Pillow's antialiased bilinear filter, the weights Pillow computes, in
float32 without Pillow's rounding to uint8), resizes the crop to the input size (the 224 -> 180
of multi-size training), flips, adds the PCA colour shift and normalises (mean image, constant
or per image).

A source whose crop covers more than a canvas (a short side above about 1.97 x ``short_side``:
above 506 pixels at the paper's crop 224 and short side 256) is resampled on the host as
before (Pillow, rounded to uint8) and its canvas holds the finished crop. Either way the crop
is the crop of the resized image to within Pillow's rounding.

Whole-image training (:func:`finish_full_batch`): the host resizes each image to its drawn
short side and pads it into its bucket as uint8, as the host transform does before its float
work; the step flips the valid columns, adds the colour shift and normalises over the valid
pixels.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sppnet_jax.data import augment

__all__ = ["canvas_side", "crop_region", "draws", "flip_and_alpha", "resample_crops", "finish_batch", "finish_full_batch",
           "device_mean", "WINDOW_FIELDS"]

# The columns of a window: the crop's top-left corner in canvas pixels (fractional), canvas
# pixels per crop pixel along y and x, and the canvas rows and columns holding the image.
WINDOW_FIELDS = ("top", "left", "step_y", "step_x", "height", "width")


def canvas_side(crop_size: int) -> int:
  """The side of the square uint8 canvas that carries a crop's source pixels to the device."""
  return 2 * int(crop_size)


def _taps(canvas: int, crop_size: int) -> int:
  """Source pixels read per output pixel: a crop that fits the canvas has a step below
  canvas / crop, so its triangle covers fewer than 2 * canvas / crop + 1 pixels."""
  return 2 * math.ceil(canvas / crop_size) + 2


def _span(start: float, step: float, crop_size: int, size: int) -> tuple[int, int]:
  """[lo, hi): the source pixels with non-zero weight in Pillow's bilinear resampling of the
  ``crop_size`` outputs whose first centre is ``start + step / 2``, clipped to ``size``."""
  support = max(step, 1.0)
  lo = math.floor(start + 0.5 * step - support - 0.5)
  hi = math.floor(start + (crop_size - 0.5) * step + support - 0.5) + 2
  return max(lo, 0), min(hi, size)


def crop_region(image: np.ndarray, rng: np.random.Generator, *, crop_size: int, short_side: int,
                positions: str) -> tuple[np.ndarray, np.ndarray]:
  """(canvas uint8 (C, C, 3), window float32 (6,)): the source pixels under the crop of
  ``augment.train_crop`` (the same draw, the same window) and where the crop lies among them
  (:data:`WINDOW_FIELDS`); C = :func:`canvas_side`. Rows and columns past ``height``/``width``
  are zero and carry no weight."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
  if short_side < crop_size:
    raise ValueError(f"short_side ({short_side}) must be >= crop_size ({crop_size})")
  big_h, big_w = image.shape[:2]
  h, w = augment.short_side_shape(big_h, big_w, short_side)
  if positions == "five":
    top, left = augment.five_crop_offsets(h, w, crop_size)[int(rng.integers(5))]
  elif positions == "random":
    top, left = augment.random_crop_offset(h, w, crop_size, rng)
  else:
    raise ValueError(f"positions must be 'five' or 'random', got {positions!r}")
  # Pillow's resize of the whole image maps output pixel o to source centre (o + 0.5) * scale.
  sy, sx = big_h / h, big_w / w
  y0, x0 = top * sy, left * sx
  (ylo, yhi), (xlo, xhi) = _span(y0, sy, crop_size, big_h), _span(x0, sx, crop_size, big_w)
  side = canvas_side(crop_size)
  canvas = np.zeros((side, side, 3), np.uint8)
  if yhi - ylo <= side and xhi - xlo <= side:
    canvas[:yhi - ylo, :xhi - xlo] = image[ylo:yhi, xlo:xhi]
    return canvas, np.array([y0 - ylo, x0 - xlo, sy, sx, yhi - ylo, xhi - xlo], np.float32)
  # A source too large for the canvas: the host resamples the crop (Pillow, rounded to uint8)
  # and the device passes it through (one source pixel per crop pixel).
  box = (x0, y0, x0 + crop_size * sx, y0 + crop_size * sy)
  canvas[:crop_size, :crop_size] = Image.fromarray(image).resize((crop_size, crop_size), Image.BILINEAR, box=box)
  return canvas, np.array([0, 0, 1, 1, crop_size, crop_size], np.float32)


def draws(image: np.ndarray, rng: np.random.Generator, *, crop_size: int, short_side: int, positions: str,
          pca_std: float) -> tuple[np.ndarray, np.ndarray, bool, np.ndarray]:
  """(canvas, window, flip, alpha): the host half of ``augment.train_example`` with the same
  draws (the crop by :func:`crop_region`)."""
  canvas, window = crop_region(image, rng, crop_size=crop_size, short_side=short_side, positions=positions)
  return (canvas, window, *flip_and_alpha(rng, pca_std))


def flip_and_alpha(rng: np.random.Generator, pca_std: float) -> tuple[bool, np.ndarray]:
  """The flip and colour-noise draws of ``augment.random_flip`` then ``augment.pca_color_noise``."""
  if pca_std < 0:
    raise ValueError(f"pca std must be >= 0, got {pca_std}")
  flip = bool(rng.random() < 0.5)
  alpha = rng.normal(0.0, pca_std, size=3).astype(np.float32) if pca_std > 0 else np.zeros(3, np.float32)
  return flip, alpha


def _axis_weights(start: jax.Array, step: jax.Array, valid: jax.Array, crop_size: int, taps: int):
  """(index, weight), each (crop_size, taps): Pillow's normalised bilinear weights along one axis
  (triangle of half-width max(step, 1) source pixels, clipped to the ``valid`` pixels)."""
  support = jnp.maximum(step, 1.0)
  centre = start + (jnp.arange(crop_size, dtype=jnp.float32) + 0.5) * step
  first = jnp.floor(centre - support + 0.5)
  index = first[:, None] + jnp.arange(taps, dtype=jnp.float32)
  weight = jnp.maximum(1.0 - jnp.abs((index + 0.5 - centre[:, None]) / support), 0.0)
  weight = jnp.where((index >= 0) & (index < valid), weight, 0.0)
  weight = weight / jnp.sum(weight, axis=1, keepdims=True)
  return index.astype(jnp.int32), weight


def resample_crops(canvases: jax.Array, windows: jax.Array, crop_size: int) -> jax.Array:
  """float32 (B, crop_size, crop_size, 3) crops from uint8 canvases (B, C, C, 3) and their windows
  (B, 6): separable, a gather of ``taps`` rows then columns per output pixel."""
  side = canvases.shape[1]
  taps = _taps(side, crop_size)

  def one(canvas, window):
    top, left, step_y, step_x, height, width = (window[i] for i in range(6))
    iy, wy = _axis_weights(top, step_y, height, crop_size, taps)
    ix, wx = _axis_weights(left, step_x, width, crop_size, taps)
    x = canvas.astype(jnp.float32)
    rows = jnp.einsum("ot,otwc->owc", wy, x[jnp.clip(iy, 0, side - 1)])
    return jnp.einsum("pt,optc->opc", wx, rows[:, jnp.clip(ix, 0, side - 1)])

  return jax.vmap(one)(canvases, windows)


def device_mean(mean: Any, size: int | None = None) -> np.ndarray | str:
  """The mean for an input of ``size``: ``augment.PER_IMAGE``, or a float32 array that broadcasts
  against (size, size, 3) (a mean image resized as the host does, (3,), or a scalar). A mean
  image needs ``size``; the others do not depend on it."""
  if size is None and np.ndim(mean) == 3:
    raise ValueError("a mean image is resized to the input, so device_mean needs its size")
  m = augment.DEFAULT_MEAN if mean is None else augment.mean_for_size(mean, size, size)
  return m if isinstance(m, str) else np.asarray(m, np.float32)


def _colour_and_normalise(x: jax.Array, alpha: jax.Array, mean: Any, mask: jax.Array | None = None) -> jax.Array:
  """The PCA colour shift, then the normalisation; per-image statistics over ``mask`` (B, H, W, 1)."""
  shift = 255.0 * jnp.einsum("ij,bj->bi", jnp.asarray(augment.IMAGENET_EIGVEC),
                             alpha * jnp.asarray(augment.IMAGENET_EIGVAL))
  x = x + shift[:, None, None, :]
  if not isinstance(mean, str):
    return (x - jnp.asarray(mean)) / jnp.float32(augment.NORM_SCALE)
  if mask is None:
    m = x.mean(axis=(1, 2), keepdims=True)
    var = jnp.maximum((x * x).mean(axis=(1, 2), keepdims=True) - m * m, 0.0)
  else:
    count = jnp.maximum(jnp.sum(mask, axis=(1, 2), keepdims=True), 1.0)  # an all-padding row stays finite
    m = jnp.sum(x * mask, axis=(1, 2), keepdims=True) / count
    var = jnp.maximum(jnp.sum(x * x * mask, axis=(1, 2), keepdims=True) / count - m * m, 0.0)
  return (x - m) / jnp.maximum(jnp.sqrt(var), augment.PER_IMAGE_MIN_STD)


def finish_full_batch(images: jax.Array, valid_hw: jax.Array, flip: jax.Array, alpha: jax.Array,
                      mean: Any) -> jax.Array:
  """Whole-image training: normalised float32 inputs (B, H, W, 3) from uint8 images resized on
  the host and zero-padded to the bucket (B, H, W, 3), each valid over its ``valid_hw``: the
  flip mirrors the valid columns only, per-image statistics cover the valid pixels only, and
  the padding stays zero, as in the host transform. ``mean``: a scalar, a (3,) mean or
  ``augment.PER_IMAGE`` (static)."""
  x = images.astype(jnp.float32)
  _, h, w, _ = x.shape
  columns = jnp.arange(w)
  source = jnp.where(flip[:, None], valid_hw[:, 1:2] - 1 - columns, columns)
  x = jax.vmap(lambda image, cols: image[:, cols])(x, jnp.clip(source, 0, w - 1))
  mask = ((jnp.arange(h)[None, :, None] < valid_hw[:, 0, None, None])
          & (columns[None, None, :] < valid_hw[:, 1, None, None]))[..., None].astype(jnp.float32)
  return _colour_and_normalise(x, alpha, mean, mask) * mask


def finish_batch(canvases: jax.Array, windows: jax.Array, flip: jax.Array, alpha: jax.Array, mean: Any,
                 crop_size: int, size: int) -> jax.Array:
  """Normalised float32 inputs (B, size, size, 3) from the host's uint8 canvases (B, C, C, 3)
  and windows (B, 6) (:func:`crop_region`).

  ``mean`` from :func:`device_mean` (static: a string, or an array closed over as a constant).
  """
  x = resample_crops(canvases, windows, crop_size)
  b, h, w, c = x.shape
  if size != crop_size:
    x = jax.image.resize(x, (b, size, size, c), method="linear", antialias=True)
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  return _colour_and_normalise(x, alpha, mean)
