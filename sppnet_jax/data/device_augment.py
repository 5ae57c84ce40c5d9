"""The float part of the training augmentation, on the accelerator.

The host does what needs the compressed file or the whole image: decode, and the crop of the
short-side-resized image (:func:`crop_of_resized`, which resamples only the crop's pixels), and draws the example's flip and colour-noise
coefficients from the same generator and in the same order as the host transform
(``augment.train_example``): so the randomness stays a function of (seed, epoch, example).
What crosses to the device is the uint8 crop (a quarter of the float32 bytes) with
``flip`` (bool) and ``alpha`` (3 float32 per example). :func:`finish_batch`, traced into the
jitted train step, then resizes the crop to the input size (the 224 -> 180 of multi-size
training, bilinear and anti-aliased like Pillow's, without the host's rounding to uint8),
flips, adds the PCA colour shift and normalises (mean image, constant or per image).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sppnet_jax.data import augment

__all__ = ["crop_of_resized", "draws", "finish_batch", "device_mean"]


def crop_of_resized(image: np.ndarray, rng: np.random.Generator, *, crop_size: int, short_side: int,
                    positions: str) -> np.ndarray:
  """``augment.train_crop`` (the same draw, the same window) resampling only the crop's pixels.

  Pillow resizes the window of the original image that maps onto the crop (``resize(box=)``),
  with the scale of the whole-image resize, so the host never makes the pixels outside the
  crop; the result differs from resize-then-crop by rounding only (at most one grey level, on
  about 0.1 % of the pixels of photo-like JPEGs).
  """
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
  if (h, w) == (big_h, big_w):
    return image[top:top + crop_size, left:left + crop_size]
  sx, sy = big_w / w, big_h / h
  box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
  return np.asarray(Image.fromarray(image).resize((crop_size, crop_size), Image.BILINEAR, box=box))


def draws(image: np.ndarray, rng: np.random.Generator, *, crop_size: int, short_side: int, positions: str,
          pca_std: float) -> tuple[np.ndarray, bool, np.ndarray]:
  """(uint8 crop, flip, alpha): the host half of ``augment.train_example`` with the same draws
  (the crop by :func:`crop_of_resized`)."""
  x = crop_of_resized(image, rng, crop_size=crop_size, short_side=short_side, positions=positions)
  flip = bool(rng.random() < 0.5)
  if pca_std < 0:
    raise ValueError(f"pca std must be >= 0, got {pca_std}")
  alpha = rng.normal(0.0, pca_std, size=3).astype(np.float32) if pca_std > 0 else np.zeros(3, np.float32)
  return np.ascontiguousarray(x, np.uint8), flip, alpha


def device_mean(mean: Any, size: int) -> np.ndarray | str:
  """The mean for an input of ``size``: ``augment.PER_IMAGE``, or a float32 array that broadcasts
  against (size, size, 3) (a mean image resized as the host does, (3,), or a scalar)."""
  m = augment.DEFAULT_MEAN if mean is None else augment.mean_for_size(mean, size, size)
  return m if isinstance(m, str) else np.asarray(m, np.float32)


def finish_batch(images: jax.Array, flip: jax.Array, alpha: jax.Array, mean: Any, size: int) -> jax.Array:
  """Normalised float32 inputs (B, size, size, 3) from uint8 crops (B, S, S, 3).

  ``mean`` from :func:`device_mean` (static: a string, or an array closed over as a constant).
  """
  x = images.astype(jnp.float32)
  b, h, w, c = x.shape
  if (h, w) != (size, size):
    x = jax.image.resize(x, (b, size, size, c), method="linear", antialias=True)
  x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
  shift = 255.0 * jnp.einsum("ij,bj->bi", jnp.asarray(augment.IMAGENET_EIGVEC),
                             alpha * jnp.asarray(augment.IMAGENET_EIGVAL))
  x = x + shift[:, None, None, :]
  if isinstance(mean, str):
    m = x.mean(axis=(1, 2), keepdims=True)
    var = jnp.maximum((x * x).mean(axis=(1, 2), keepdims=True) - m * m, 0.0)
    return (x - m) / jnp.maximum(jnp.sqrt(var), augment.PER_IMAGE_MIN_STD)
  return (x - jnp.asarray(mean)) / jnp.float32(augment.NORM_SCALE)
