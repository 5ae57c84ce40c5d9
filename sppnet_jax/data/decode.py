"""Image decoding: every source (classification and detection) turns pixels into uint8 RGB here.

Policy, in the order it is applied:

* **Shape.** (H, W) and (H, W, 1) are grey; (H, W, 2) grey + alpha; (H, W, 3) RGB; (H, W, 4)
  RGBA. Any other shape, or an empty image, is a ValueError.
* **Bit depth** (applied to every channel, alpha included):
  - ``uint8``: as is;
  - ``uint16`` (16-bit PNG/TIFF): divided by 257 and rounded (65535 -> 255);
  - other integer dtypes: must hold 8-bit values in [0, 255] (otherwise ValueError: pass 16-bit
    data as ``uint16``); file decoding turns Pillow's 32-bit ``'I'`` images into ``uint16``;
  - ``bool``: {0, 255};
  - floats: must be finite and in [0, 255]; read as [0, 1] (times 255) when the maximum is at
    most 1, else as [0, 255]; rounded.
* **Alpha** (``ALPHA_BACKGROUND``): composited over white,
  ``round(colour * a + 255 * (1 - a))`` with ``a = alpha / 255``, so transparent areas become white
  rather than black and the colour of opaque areas is unchanged.
* **Grey** is replicated to three channels.

Encoded images (:func:`decode_image_bytes`, :func:`decode_image_file`) are opened with Pillow:
palette images keep their transparency as alpha, CMYK/YCbCr/Lab are converted to RGB, 16-bit
modes stay 16-bit until the bit-depth rule above. A file or buffer that cannot be decoded raises
:class:`CorruptImageError` naming it.

Which files are images: :func:`readable_extensions`, derived from the formats the installed Pillow
decodes (JPEG, PNG, WebP, BMP, TIFF, GIF, ... as its plugins allow), never a hand-kept list.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
from typing import Any

import numpy as np

__all__ = ["ALPHA_BACKGROUND", "CorruptImageError", "to_rgb_uint8", "decode_image_bytes", "decode_image_file",
           "as_rgb_uint8", "readable_extensions", "is_image_file"]

ALPHA_BACKGROUND = 255  # transparent pixels become white
_PIL_KEEP = ("1", "L", "LA", "RGB", "RGBA", "I", "F")
# Formats with no opener of their own that another plugin opens: Pillow's JPEG plugin opens MPO
# (multi-picture JPEG) files.
_OPENED_BY = {"MPO": "JPEG"}
# Formats whose plugin reads the header only and never the pixels.
_IDENTIFY_ONLY = ("MPEG",)


class CorruptImageError(ValueError):
  """An image file or buffer that cannot be decoded (truncated, not an image, unsupported)."""


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
  """The bit-depth rule of the module docstring, channel layout unchanged."""
  if a.dtype == np.uint8:
    return a
  if a.dtype == bool:
    return a.astype(np.uint8) * np.uint8(255)
  if a.dtype == np.uint16:
    return np.round(a.astype(np.float32) / 257.0).astype(np.uint8)
  if np.issubdtype(a.dtype, np.integer):
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 255:
      raise ValueError(f"{name}: integer pixels of dtype {a.dtype} lie in [{lo}, {hi}]; expected 8-bit values in "
                       "[0, 255] (pass 16-bit data as uint16)")
    return a.astype(np.uint8)
  if np.issubdtype(a.dtype, np.floating):
    f = a.astype(np.float64)
    if not np.isfinite(f).all():
      raise ValueError(f"{name}: the image contains NaN or infinite values; the data is corrupt or was not "
                       "normalised")
    lo, hi = float(f.min()), float(f.max())
    if lo < 0 or hi > 255:
      raise ValueError(f"{name}: float pixels lie in [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]")
    return np.round(f * (255.0 if hi <= 1.0 else 1.0)).astype(np.uint8)
  raise ValueError(f"{name}: unsupported pixel dtype {a.dtype}; expected a numeric array (decode the file first)")


def to_rgb_uint8(image: Any, *, name: str = "image") -> np.ndarray:
  """``image`` as contiguous uint8 RGB (H, W, 3) under the module's shape, bit-depth and alpha policy.

  ``name`` goes into error messages.
  """
  a = np.asarray(image)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
    raise ValueError(f"{name}: expected an image of shape (H, W) or (H, W, 1|2|3|4), got {a.shape}")
  if a.shape[0] == 0 or a.shape[1] == 0:
    raise ValueError(f"{name}: the image is empty (shape {a.shape}); the file may be truncated or failed to decode")
  a = _to_uint8(a, name)
  channels = a.shape[2]
  if channels in (2, 4):
    alpha = a[..., -1:].astype(np.float32) / 255.0
    colour = a[..., :-1].astype(np.float32)
    a = np.round(colour * alpha + ALPHA_BACKGROUND * (1.0 - alpha)).astype(np.uint8)
    channels -= 1
  if channels == 1:
    a = np.repeat(a, 3, axis=2)
  return np.ascontiguousarray(a)


def _decodes(fmt: str) -> bool:
  """Whether the installed Pillow decodes the pixels of format ``fmt`` (a key of its registry)."""
  from PIL import Image, ImageFile
  opener = Image.OPEN.get(_OPENED_BY.get(fmt, fmt))
  if opener is None or fmt in _IDENTIFY_ONLY:
    return False  # written only (PDF, Palm) or identified only
  factory = opener[0]
  # Stub plugins (BUFR, GRIB, HDF5, WMF) load pixels only through a handler an application
  # registers, so they count as undecodable.
  return not (inspect.isclass(factory) and issubclass(factory, ImageFile.StubImageFile))


@functools.cache
def readable_extensions() -> frozenset[str]:
  """The file extensions (lower case, with the dot) of every format the installed Pillow decodes.

  Derived from Pillow's registry (its registered extensions whose format it opens and loads), so a
  plugin Pillow gains (WebP, AVIF, ...) is read without a change here. EPS/PS files are included:
  Pillow decodes them when Ghostscript is installed and says so when it is not.
  """
  from PIL import Image
  Image.init()  # registers every plugin, not only the common ones
  return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if _decodes(fmt))


def is_image_file(path: str | os.PathLike) -> bool:
  """Whether ``path``'s extension (any case) is one of :func:`readable_extensions`."""
  return os.path.splitext(os.fspath(path))[1].lower() in readable_extensions()


def _pil_to_array(img) -> np.ndarray:
  """A loaded Pillow image as an array that :func:`to_rgb_uint8` reads under the module's policy."""
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  elif img.mode not in _PIL_KEEP and not img.mode.startswith("I;16"):
    img = img.convert("RGB")  # CMYK, YCbCr, LAB, ...
  array = np.array(img)
  if img.mode.startswith("I;16") or img.mode == "I":
    if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
      raise ValueError(f"32-bit integer pixels in [{array.min()}, {array.max()}] do not fit 16 bits")
    array = array.astype(np.uint16)
  return array


def decode_image_bytes(data: bytes, name: str = "image") -> np.ndarray:
  """Encoded image bytes (PNG, JPEG, ...) as uint8 RGB; :class:`CorruptImageError` naming ``name``."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(io.BytesIO(bytes(data))) as img:
      img.load()
      array = _pil_to_array(img)
  except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
    raise CorruptImageError(f"cannot decode image {name!r} ({type(e).__name__}: {e}); the file is corrupt or not "
                            "an image: delete or replace it") from e
  return to_rgb_uint8(array, name=name)


def decode_image_file(path: str | os.PathLike) -> np.ndarray:
  """An image file as uint8 RGB; FileNotFoundError if absent, :class:`CorruptImageError` naming it if broken."""
  from PIL import Image, UnidentifiedImageError
  if not os.path.isfile(path):
    raise FileNotFoundError(f"file not found: {os.fspath(path)}")
  try:
    with Image.open(path) as img:
      img.load()
      array = _pil_to_array(img)
  except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
    raise CorruptImageError(f"cannot decode image file {os.fspath(path)!r} ({type(e).__name__}: {e}); "
                            "delete or replace the file") from e
  return to_rgb_uint8(array, name=os.fspath(path))


def as_rgb_uint8(image: Any, name: str = "image") -> np.ndarray:
  """Encoded bytes are decoded, arrays converted: every source's one entry point for an image value."""
  if isinstance(image, (bytes, bytearray, memoryview)):
    return decode_image_bytes(bytes(image), name)
  return to_rgb_uint8(image, name=name)
