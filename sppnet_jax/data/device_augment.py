"""The float part of the training augmentation, on the accelerator.

The host does what needs the compressed file or the whole image: decode, resize the short
side, take the crop (``augment.train_crop``), and draws the example's flip and colour-noise
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

from sppnet_jax.data import augment

__all__ = ["draws", "finish_batch", "device_mean"]


def draws(image: np.ndarray, rng: np.random.Generator, *, crop_size: int, short_side: int, positions: str,
          pca_std: float) -> tuple[np.ndarray, bool, np.ndarray]:
  """(uint8 crop, flip, alpha): the host half of ``augment.train_example`` with the same draws."""
  x = augment.train_crop(image, rng, crop_size=crop_size, short_side=short_side, positions=positions)
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
