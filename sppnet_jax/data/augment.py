"""Per-example numpy transforms: the paper's training augmentation and test views.

Training (paper section 3, following AlexNet): resize the short side to 256,
take a 224x224 crop at the centre or one of the four corners of the *whole*
resized image (``positions='five'``; ``'random'`` gives any position), flip
horizontally with probability 1/2, add PCA colour noise. The multi-size
network's 180 input is that same crop resized to 180x180.

Testing (paper section 4): ``center_crop_view`` (short side 256, central 224),
``full_view`` (short side 256, aspect ratio kept) and ``ten_view`` (four
corners and centre of the whole short-side-256 image, plus their flips).

Mean handling follows the paper: a per-pixel mean image at the crop size,
resized to other input sizes (:func:`mean_for_size`). :func:`normalize`
computes ``(image - mean) / 64``.

All sizes are parameters; the paper's 224/256/180 are only defaults so CPU
experiments can use e.g. 112/128/90. Every random choice is drawn from a
``np.random.Generator`` passed in, so results are reproducible.

Resizing uses Pillow's bilinear filter, which widens its support when
shrinking (so downscaling is anti-aliased) and is several times faster than
``skimage.transform.resize`` with ``anti_aliasing=True``. uint8 images stay
uint8 (rounded); float images are resized per channel in float32.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from PIL import Image

__all__ = [
  'IMAGENET_EIGVAL', 'IMAGENET_EIGVEC', 'NORM_SCALE', 'DEFAULT_MEAN',
  'resize_image', 'resize_short_side', 'short_side_shape', 'crop', 'five_crop_offsets',
  'random_crop_offset', 'train_crop', 'horizontal_flip', 'random_flip', 'rgb_pca',
  'pca_color_noise', 'mean_for_size', 'normalize', 'center_crop_view', 'full_view',
  'ten_view', 'train_example',
]

# Eigenvalues / eigenvectors (columns) of the ImageNet RGB pixel covariance for
# pixels scaled to [0, 1], as commonly quoted for AlexNet-style "lighting" noise.
IMAGENET_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
IMAGENET_EIGVEC = np.array([
  [-0.5675, 0.7192, 0.4009],
  [-0.5808, -0.0045, -0.8140],
  [-0.5836, -0.6948, 0.4203],
], np.float32)

# Inputs are (image - mean) / NORM_SCALE. The paper fed mean-subtracted [0, 255]
# pixels to a net initialised with std 0.01; with He initialisation (as used in
# this project) activations keep the scale of the input, so dividing by 64
# brings inputs (std of ImageNet pixels is roughly 60) to about unit scale.
NORM_SCALE = 64.0

# The mean used when none is given: mid-grey, as the paper does for VOC/Caltech.
DEFAULT_MEAN = 128.0

# ``mean=PER_IMAGE`` standardises every network input by its own per-channel pixel mean and
# standard deviation (floored at PER_IMAGE_MIN_STD grey levels, so a flat channel is not blown
# up into noise) instead of subtracting a dataset mean. Not the paper's: it is for data whose
# global colour varies far more than natural photos' (the built-in synthetic shapes).
PER_IMAGE = 'per_image'
PER_IMAGE_MIN_STD = 8.0

Positions = Literal['five', 'random']


def _check_image(image: np.ndarray, name: str = 'image') -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f'{name} must have shape (H, W, 3), got {image.shape}; '
                     'convert grey/RGBA images to RGB first (see sources.to_rgb_uint8)')
  if image.shape[0] < 1 or image.shape[1] < 1:
    raise ValueError(f'{name} is empty: shape {image.shape}')
  return image


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    h = w = int(size)
  else:
    if len(size) != 2:
      raise ValueError(f'size must be an int or (height, width), got {size!r}')
    h, w = int(size[0]), int(size[1])
  if h < 1 or w < 1:
    raise ValueError(f'size must be positive, got {size!r}')
  return h, w


def resize_image(image: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
  """Resize an (H, W, C) image to ``size`` (int for square, or (height, width)), bilinear.

  uint8 input gives uint8 output (rounded); any other dtype is resized in
  float32 and returned as float32. Shrinking is anti-aliased (Pillow widens
  the bilinear kernel by the scale factor). Returns the input unchanged (not a
  copy) when it already has the requested size.
  """
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f'image must have shape (H, W, C), got {image.shape}')
  h, w = _size_hw(size)
  if image.shape[:2] == (h, w):
    return image if image.dtype == np.uint8 else image.astype(np.float32, copy=False)
  if image.dtype == np.uint8 and image.shape[2] == 3:
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
  channels = [
    np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
      (w, h), Image.BILINEAR))
    for c in range(image.shape[2])
  ]
  out = np.stack(channels, axis=-1)
  if image.dtype == np.uint8:
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
  return out.astype(np.float32, copy=False)


def short_side_shape(h: int, w: int, short_side: int) -> tuple[int, int]:
  """(height, width) after scaling so that min(h, w) == short_side, aspect kept (rounded)."""
  if short_side < 1:
    raise ValueError(f'short_side must be positive, got {short_side}')
  if h <= w:
    return short_side, max(short_side, int(round(w * short_side / h)))
  return max(short_side, int(round(h * short_side / w))), short_side


def resize_short_side(image: np.ndarray, size: int = 256) -> np.ndarray:
  """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio.

  Bilinear, anti-aliased when shrinking; uint8 stays uint8, other dtypes
  become float32 (see :func:`resize_image`).
  """
  image = _check_image(image)
  return resize_image(image, short_side_shape(image.shape[0], image.shape[1], size))


def crop(image: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
  """The ``height`` x ``width`` window at (top, left); raises if it leaves the image."""
  h, w = image.shape[:2]
  if top < 0 or left < 0 or top + height > h or left + width > w:
    raise ValueError(f'crop window (top={top}, left={left}, {height}x{width}) '
                     f'does not fit in an image of {h}x{w}')
  return image[top:top + height, left:left + width]


def five_crop_offsets(h: int, w: int, crop_size: int) -> list[tuple[int, int]]:
  """(top, left) of the centre and four corner crops of an (h, w) image.

  Order: centre, top-left, top-right, bottom-left, bottom-right. The corners
  are those of the whole image (not of a central square), as in the paper.
  """
  if crop_size > min(h, w):
    raise ValueError(f'crop_size {crop_size} is larger than the image ({h}x{w}); '
                     'use short_side >= crop_size')
  dy, dx = h - crop_size, w - crop_size
  return [(dy // 2, dx // 2), (0, 0), (0, dx), (dy, 0), (dy, dx)]


def random_crop_offset(h: int, w: int, crop_size: int,
                       rng: np.random.Generator) -> tuple[int, int]:
  """A uniformly random (top, left) for a crop that fits inside (h, w)."""
  if crop_size > min(h, w):
    raise ValueError(f'crop_size {crop_size} is larger than the image ({h}x{w}); '
                     'use short_side >= crop_size')
  return int(rng.integers(0, h - crop_size + 1)), int(rng.integers(0, w - crop_size + 1))


def train_crop(image: np.ndarray, rng: np.random.Generator, *, crop_size: int = 224,
               short_side: int = 256, positions: Positions = 'five') -> np.ndarray:
  """The paper's training crop: short side to ``short_side``, then a square crop.

  ``positions='five'`` picks uniformly among the centre and the four corners of
  the whole resized image; ``'random'`` picks any position uniformly.
  """
  if short_side < crop_size:
    raise ValueError(f'short_side ({short_side}) must be >= crop_size ({crop_size})')
  resized = resize_short_side(image, short_side)
  h, w = resized.shape[:2]
  if positions == 'five':
    top, left = five_crop_offsets(h, w, crop_size)[int(rng.integers(5))]
  elif positions == 'random':
    top, left = random_crop_offset(h, w, crop_size, rng)
  else:
    raise ValueError(f"positions must be 'five' or 'random', got {positions!r}")
  return crop(resized, top, left, crop_size, crop_size)


def horizontal_flip(image: np.ndarray) -> np.ndarray:
  """Mirror left-right (a view, not a copy)."""
  return np.asarray(image)[:, ::-1]


def random_flip(image: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """Flip horizontally with probability ``p``."""
  return horizontal_flip(image) if rng.random() < p else image


def rgb_pca(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Eigenvalues (descending) and eigenvectors (columns) of the RGB covariance.

  ``pixels`` is any array whose last axis is RGB, on the [0, 1] scale to match
  :data:`IMAGENET_EIGVAL`. Use it to estimate dataset-specific noise axes.
  """
  flat = np.asarray(pixels, np.float64).reshape(-1, 3)
  if flat.shape[0] < 2:
    raise ValueError('rgb_pca needs at least two pixels')
  val, vec = np.linalg.eigh(np.cov(flat, rowvar=False))
  order = np.argsort(val)[::-1]
  return val[order].astype(np.float32), vec[:, order].astype(np.float32)


def pca_color_noise(image: np.ndarray, rng: np.random.Generator, std: float = 0.1, *,
                    eigval: np.ndarray = IMAGENET_EIGVAL,
                    eigvec: np.ndarray = IMAGENET_EIGVEC) -> np.ndarray:
  """AlexNet "lighting" noise: add ``eigvec @ (alpha * eigval)`` to every pixel.

  ``alpha ~ N(0, std)`` per principal component, drawn once per image; the
  shift is scaled by 255 because images here are on the [0, 255] scale while
  the eigenvalues are for [0, 1]. Returns float32 without clipping (clipping
  would bias the mean). ``std=0`` returns a float32 copy without drawing.
  """
  out = np.asarray(image, np.float32)
  if std == 0:
    return out.copy()
  if std < 0:
    raise ValueError(f'pca std must be >= 0, got {std}')
  alpha = rng.normal(0.0, std, size=3).astype(np.float32)
  shift = 255.0 * (np.asarray(eigvec, np.float32) @ (alpha * np.asarray(eigval, np.float32)))
  return out + shift.astype(np.float32)


def _check_per_image(mean: str) -> str:
  if mean != PER_IMAGE:
    raise ValueError(f'a string mean must be {PER_IMAGE!r} (per-image standardisation); got {mean!r}')
  return mean


def mean_for_size(mean: np.ndarray | float | str, h: int, w: int) -> np.ndarray | float | str:
  """The mean for an (h, w) input: a mean image is resized (warped) to (h, w).

  Scalars, per-channel (3,) means and :data:`PER_IMAGE` are returned unchanged (as float32
  for arrays), because they do not depend on the input size.
  """
  if isinstance(mean, str):
    return _check_per_image(mean)
  if np.isscalar(mean):
    return float(mean)
  mean = np.asarray(mean, np.float32)
  if mean.shape == (3,):
    return mean
  if mean.ndim != 3 or mean.shape[2] != 3:
    raise ValueError(f'mean must be a scalar, (3,) or an (H, W, 3) image, got shape {mean.shape}')
  return resize_image(mean, (h, w))


def normalize(image: np.ndarray, mean: np.ndarray | float | str | None = None,
              scale: float = NORM_SCALE) -> np.ndarray:
  """``(image - mean) / scale`` in float32; a mean image is resized to the image first.

  ``mean=None`` uses the constant :data:`DEFAULT_MEAN` (128). ``mean=PER_IMAGE`` ignores
  ``scale`` and returns ``(image - m_c) / max(s_c, PER_IMAGE_MIN_STD)`` with ``m_c, s_c`` the
  mean and standard deviation of channel c over the image's pixels.
  """
  image = np.asarray(image, np.float32)
  if isinstance(mean, str):
    _check_per_image(mean)
    pixels = image.reshape(-1, image.shape[-1])  # per-channel sums as contiguous reductions (fast)
    m = pixels.sum(0, dtype=np.float64) / pixels.shape[0]
    var = np.einsum('ij,ij->j', pixels, pixels, dtype=np.float64) / pixels.shape[0] - m * m
    std = np.maximum(np.sqrt(np.maximum(var, 0.0)), PER_IMAGE_MIN_STD)
    return (image - m.astype(np.float32)) * (1.0 / std).astype(np.float32)
  m = DEFAULT_MEAN if mean is None else mean_for_size(mean, image.shape[0], image.shape[1])
  return ((image - m) / np.float32(scale)).astype(np.float32, copy=False)


def center_crop_view(image: np.ndarray, crop_size: int = 224,
                     short_side: int = 256) -> np.ndarray:
  """'1 crop' test view: the central ``crop_size`` square of the short-side-resized image."""
  resized = resize_short_side(image, short_side)
  top, left = five_crop_offsets(resized.shape[0], resized.shape[1], crop_size)[0]
  return crop(resized, top, left, crop_size, crop_size)


def full_view(image: np.ndarray, short_side: int = 256) -> np.ndarray:
  """'1 full' test view: the whole image with its short side at ``short_side``."""
  return resize_short_side(image, short_side)


def ten_view(image: np.ndarray, crop_size: int = 224, short_side: int = 256) -> np.ndarray:
  """10-view test crops (10, S, S, 3): centre and four corners of the whole image, then their flips.

  Order: the five crops as in :func:`five_crop_offsets`, then the same five flipped.
  """
  resized = resize_short_side(image, short_side)
  views = [crop(resized, t, l, crop_size, crop_size)
           for t, l in five_crop_offsets(resized.shape[0], resized.shape[1], crop_size)]
  return np.stack(views + [horizontal_flip(v) for v in views])


def train_example(image: np.ndarray, rng: np.random.Generator, *, crop_size: int = 224,
                  short_side: int = 256, positions: Positions = 'five',
                  resize_to: int | None = None, pca_std: float = 0.1,
                  mean: np.ndarray | float | None = None) -> np.ndarray:
  """The full training transform of one image, returning a normalised float32 input.

  Order: crop (``rng`` draw 1), flip (draw 2), optional resize of the crop to
  ``resize_to`` (no draw), PCA noise (draw 3), normalise. The draws do not
  depend on ``resize_to``, so the ``resize_to`` input is exactly the resized
  version of the ``crop_size`` input for the same generator state (up to uint8
  rounding of the resize; PCA noise is a per-image constant and commutes with it).
  ``mean`` is given at the crop size and resized to the output size.
  """
  x = random_flip(train_crop(image, rng, crop_size=crop_size, short_side=short_side,
                             positions=positions), rng)
  if resize_to is not None:
    x = resize_image(np.ascontiguousarray(x), resize_to)
  return normalize(pca_color_noise(x, rng, pca_std), mean)
