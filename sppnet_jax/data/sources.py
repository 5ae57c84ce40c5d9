"""Random-access classification sources giving ``{'image': uint8 (H, W, 3), 'label': int}``.

:func:`get_source` picks one by name:

* ``'synthetic'`` - :class:`~sppnet_jax.data.synthetic.SyntheticClassification`,
  generated on the fly (2,000 train / 500 validation / 500 test by default).
* ``'imagenet2012'``, ``'imagenette'``, ``'caltech101'`` - prepared TFDS
  datasets read with ``tfds.data_source`` (array_record, no TensorFlow needed,
  never downloads: prepare them first, see the README).
* ``'folder:/path/to/root'`` - an image folder ``root/<class>/<image>``.

Every source has ``__len__`` and ``__getitem__``, so ``grain.MapDataset.source``
can wrap it. Images are always uint8 RGB: grey, grey+alpha, RGBA, palette and
16-bit images are converted by :func:`to_rgb_uint8`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sppnet_jax.data.synthetic import CLASS_NAMES, SyntheticClassification

__all__ = [
  'TFDS_NUM_CLASSES', 'SYNTHETIC_SIZES', 'IMAGE_EXTENSIONS', 'CorruptImageError',
  'to_rgb_uint8', 'decode_image_file', 'TfdsClassificationSource', 'ImageFolderSource',
  'Subset', 'get_source', 'num_classes',
]

TFDS_NUM_CLASSES: dict[str, int] = {'imagenet2012': 1000, 'imagenette': 10, 'caltech101': 102}
SYNTHETIC_SIZES: dict[str, int] = {'train': 2000, 'validation': 500, 'test': 500}
IMAGE_EXTENSIONS: tuple[str, ...] = ('.jpeg', '.jpg', '.png')
_FOLDER_PREFIX = 'folder:'


class CorruptImageError(ValueError):
  """An image file that cannot be decoded (truncated, not an image, unsupported)."""


def to_rgb_uint8(image: Any, *, name: str = 'image') -> np.ndarray:
  """Convert an image array to uint8 RGB (H, W, 3).

  Handles grey (H, W) or (H, W, 1) (replicated to 3 channels), grey+alpha
  (H, W, 2) and RGBA (H, W, 4) (composited over white, so transparent areas
  do not turn black), 16-bit integers (scaled by 1/257 to 0-255), other
  integers (clipped to 0-255), floats (assumed in [0, 1] when the maximum is
  at most 1, else [0, 255]) and booleans. ``name`` goes into error messages.
  """
  a = np.asarray(image)
  if a.ndim == 2:
    a = a[..., None]
  if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
    raise ValueError(f'{name}: expected an image of shape (H, W), (H, W, 1|2|3|4), '
                     f'got {a.shape}')
  if a.dtype == np.uint8:
    f = None
  elif a.dtype == bool:
    f = a.astype(np.float32) * 255.0
  elif a.dtype == np.uint16 or (np.issubdtype(a.dtype, np.integer) and a.max(initial=0) > 255):
    f = a.astype(np.float32) / 257.0
  elif np.issubdtype(a.dtype, np.integer):
    f = a.astype(np.float32)
  elif np.issubdtype(a.dtype, np.floating):
    f = a.astype(np.float32)
    if np.nanmax(f, initial=0.0) <= 1.0:
      f = f * 255.0
  else:
    raise ValueError(f'{name}: unsupported pixel dtype {a.dtype}')
  if f is not None:
    a = np.clip(np.round(np.nan_to_num(f)), 0, 255).astype(np.uint8)
  c = a.shape[2]
  if c in (2, 4):  # composite over white using the alpha channel
    alpha = a[..., -1:].astype(np.float32) / 255.0
    colour = a[..., :-1].astype(np.float32)
    a = np.round(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    c -= 1
  if c == 1:
    a = np.repeat(a, 3, axis=2)
  return np.ascontiguousarray(a)


def decode_image_file(path: str | os.PathLike) -> np.ndarray:
  """Read an image file into uint8 RGB (H, W, 3); raise :class:`CorruptImageError` naming it."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as img:
      img.load()
      if img.mode == 'P':
        img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
      elif img.mode not in ('1', 'L', 'LA', 'RGB', 'RGBA', 'I', 'F') and \
          not img.mode.startswith('I;16'):
        img = img.convert('RGB')  # CMYK, YCbCr, LAB, ...
      array = np.array(img)
      if img.mode.startswith('I;16') or img.mode == 'I':
        array = array.astype(np.uint16 if array.max(initial=0) <= 65535 else np.uint32)
  except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
    raise CorruptImageError(
      f'cannot decode image file {os.fspath(path)!r} ({type(e).__name__}: {e}); '
      'delete or replace the file') from e
  return to_rgb_uint8(array, name=os.fspath(path))


def _as_str(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if isinstance(value, np.ndarray) and value.shape == ():
    return _as_str(value.item())
  return str(value)


class TfdsClassificationSource:
  """A TFDS ``data_source`` whose examples are reduced to ``{'image', 'label'}``.

  Works on real array_record data (which may give encoded bytes or lists) and
  on ``tfds.testing.mock_data`` data (numpy arrays, str). ``image`` is always
  uint8 RGB; encoded image bytes are decoded with Pillow. The original file
  name, when the dataset has one, is kept as ``'filename'`` (str).
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               data_source: Sequence[Any] | None = None):
    if data_source is None:
      try:
        import tensorflow_datasets as tfds  # lazy: optional on some machines
      except ImportError as e:
        raise ImportError(f'reading the TFDS dataset {name!r} needs tensorflow-datasets; '
                          'install it with `pip install tensorflow-datasets`') from e
      try:
        data_source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
      except Exception as e:  # tfds raises several types for a missing dataset
        raise FileNotFoundError(
          f'TFDS dataset {name!r} (split {split!r}) is not prepared in data_dir={data_dir!r} '
          f'({type(e).__name__}: {e}). Prepare it first (see the README: tfds build with '
          'TensorFlow installed, manual_dir for imagenet2012) or pass the right data_dir.') from e
    self.name, self.split, self._source = name, split, data_source

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f'TfdsClassificationSource({self.name!r}, split={self.split!r}, n={len(self)})'

  def __getitem__(self, index: int) -> dict[str, Any]:
    raw = self._source[int(index)]
    image = raw['image']
    where = f'{self.name}[{self.split}][{index}]'
    if isinstance(image, (bytes, bytearray)):
      import io
      from PIL import Image
      try:
        with Image.open(io.BytesIO(image)) as img:
          image = np.array(img.convert('RGB'))
      except Exception as e:
        raise CorruptImageError(f'cannot decode the image of {where}: {e}') from e
    out = {'image': to_rgb_uint8(image, name=where), 'label': int(np.asarray(raw['label']))}
    for key in ('file_name', 'image/file_name', 'image/filename', 'filename'):
      if key in raw:
        out['filename'] = _as_str(raw[key])
        break
    return out


class ImageFolderSource:
  """Images in ``root/<class_name>/<file>``; classes are the sorted sub-folder names.

  Files with extensions ``.jpeg``, ``.jpg`` or ``.png`` (any case) are used,
  sorted by class then path. Decoding happens on access; a corrupt file raises
  :class:`CorruptImageError` naming it.
  """

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root).expanduser()
    if not self.root.is_dir():
      raise FileNotFoundError(f'image folder {str(self.root)!r} does not exist or is not a '
                              'directory; expected root/<class>/<image files>')
    self.class_names = tuple(sorted(p.name for p in self.root.iterdir()
                                    if p.is_dir() and not p.name.startswith('.')))
    if not self.class_names:
      raise ValueError(f'image folder {str(self.root)!r} has no class sub-folders; '
                       'expected root/<class>/<image files>')
    files: list[tuple[str, int]] = []
    for label, cls in enumerate(self.class_names):
      for p in sorted((self.root / cls).rglob('*')):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
          files.append((str(p), label))
    if not files:
      raise ValueError(f'image folder {str(self.root)!r} has no {"/".join(IMAGE_EXTENSIONS)} '
                       'files in its class sub-folders')
    self.files = files

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.files)

  def __repr__(self) -> str:
    return (f'ImageFolderSource({str(self.root)!r}, {len(self)} images, '
            f'{self.num_classes} classes)')

  def __getitem__(self, index: int) -> dict[str, Any]:
    path, label = self.files[int(index)]
    return {'image': decode_image_file(path), 'label': label, 'filename': path}


class Subset:
  """The first ``n`` examples of a source (a view: no copying or decoding)."""

  def __init__(self, source: Sequence[Any], n: int):
    if n < 0:
      raise ValueError(f'num_examples must be >= 0, got {n}')
    self.source, self.n = source, min(int(n), len(source))

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, index: int) -> Any:
    i = int(index)
    if i < 0:
      i += self.n
    if not 0 <= i < self.n:
      raise IndexError(f'index {index} out of range for a subset of {self.n} examples')
    return self.source[i]


def get_source(name: str, split: str, *, data_dir: str | None = None,
               num_examples: int | None = None, seed: int = 0,
               synthetic_short_side: tuple[int, int] | None = None) -> Sequence[dict[str, Any]]:
  """A random-access source of ``{'image': uint8 (H, W, 3), 'label': int}`` examples.

  Args:
    name: ``'synthetic'``, a TFDS name from :data:`TFDS_NUM_CLASSES`, or
      ``'folder:/path/to/root'`` (``split`` then selects ``root/<split>`` when
      that sub-folder exists, else ``root`` itself is used).
    split: split name, e.g. ``'train'``, ``'validation'``; TFDS slicing such as
      ``'train[:10%]'`` works for TFDS sources.
    data_dir: TFDS data directory (``None`` = TFDS default).
    num_examples: synthetic length (default :data:`SYNTHETIC_SIZES`), or a cap
      on the length of the other sources (the first ``num_examples``).
    seed: synthetic data seed (ignored by the other sources).
    synthetic_short_side: (min, max) short side of the synthetic images in pixels
      (None: the generator's default, 160-320); ignored by the other sources.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'dataset name must be a non-empty string, got {name!r}')
  if name == 'synthetic':
    n = num_examples if num_examples is not None else SYNTHETIC_SIZES.get(split)
    if n is None:
      raise ValueError(f'unknown synthetic split {split!r}: use one of {sorted(SYNTHETIC_SIZES)} '
                       'or pass num_examples')
    if synthetic_short_side is None:
      return SyntheticClassification(split, n, seed=seed)
    low, high = synthetic_short_side
    return SyntheticClassification(split, n, seed=seed, min_side=low, max_side=high)
  if name.startswith(_FOLDER_PREFIX):
    root = Path(name[len(_FOLDER_PREFIX):]).expanduser()
    if (root / split).is_dir():
      root = root / split
    source: Sequence[Any] = ImageFolderSource(root)
  elif name in TFDS_NUM_CLASSES:
    source = TfdsClassificationSource(name, split, data_dir)
  else:
    raise ValueError(f'unknown dataset {name!r}: use "synthetic", one of '
                     f'{sorted(TFDS_NUM_CLASSES)}, or "folder:/path/to/root"')
  if num_examples is not None:
    source = Subset(source, num_examples)
  return source


def num_classes(name: str) -> int:
  """Number of classes of a dataset accepted by :func:`get_source`.

  For ``'folder:...'`` this counts the class sub-folders (of ``root/train``
  when it exists, else of ``root``).
  """
  if name == 'synthetic':
    return len(CLASS_NAMES)
  if name in TFDS_NUM_CLASSES:
    return TFDS_NUM_CLASSES[name]
  if isinstance(name, str) and name.startswith(_FOLDER_PREFIX):
    root = Path(name[len(_FOLDER_PREFIX):]).expanduser()
    if (root / 'train').is_dir():
      root = root / 'train'
    return ImageFolderSource(root).num_classes
  raise ValueError(f'unknown dataset {name!r}: use "synthetic", one of '
                   f'{sorted(TFDS_NUM_CLASSES)}, or "folder:/path/to/root"')
