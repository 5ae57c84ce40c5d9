"""Random-access classification sources giving ``{'image': uint8 (H, W, 3), 'label': int}``.

:func:`get_source` picks one by name:

* ``'synthetic'`` - :class:`~sppnet_jax.data.synthetic.SyntheticClassification`,
  generated on the fly (2,000 train / 500 validation / 500 test by default).
* ``'imagenet2012'``, ``'imagenette'``, ``'caltech101'`` - prepared TFDS
  datasets read with ``tfds.data_source`` (array_record, no TensorFlow needed,
  never downloads: prepare them first, see the README).
* ``'folder:/path/to/root'`` - an image folder. Either ``root/<split>/<class>/<image>``
  (``root/train``, ``root/validation``, ...), where a missing split folder is an
  error, or, with ``holdout_fraction``, ``root/<class>/<image>`` with no split
  folders: a seeded, stratified ``holdout_fraction`` of every class is the
  ``'validation'`` split and the rest the ``'train'`` split.

Folder images: every file whose extension is one Pillow decodes
(:func:`~sppnet_jax.data.decode.readable_extensions`: JPEG, PNG, WebP, BMP, TIFF, GIF, ...).
Other files in the class folders are left out, never silently: the source lists them
(``non_image_files``), loading warns once with their count and a few names, and
``sppnet check-data`` prints them all.

Folder labels: one class-to-label mapping per run, the sorted class folder names of
the training split (:func:`class_names`); every other split is labelled by name
with it, so a class missing from one split shifts nothing. A class folder of
another split that the training split lacks, or an empty class folder anywhere,
is an error. :func:`save_class_names` / :func:`load_class_names` keep the mapping
in a run's workdir (``classes.json``).

Subsets (``num_examples``) are seeded draws over the whole split, the same on
every run for the same seed: stratified by class for image folders (labels come
from the file list), uniform for TFDS sources (reading a label there means reading
the record). The synthetic source's ``num_examples`` is just its length.

``on_bad_image='skip'`` wraps a source in :class:`SkipBadImages`, which replaces
an undecodable example by the next decodable one and counts it; the example that
stands in carries ``REPLACED: True`` so the count can travel with the data out of
worker processes.

Every source has ``__len__`` and ``__getitem__``, so ``grain.MapDataset.source``
can wrap it. Images are always uint8 RGB: decoding and conversion (grey, alpha, palette,
16-bit) follow the one policy of :mod:`sppnet_jax.data.decode`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sppnet_jax import run_files
from sppnet_jax.data.decode import (CorruptImageError, as_rgb_uint8, decode_image_file, is_image_file,
                                    readable_extensions, to_rgb_uint8)
from sppnet_jax.data.synthetic import CLASS_NAMES, SyntheticClassification

__all__ = [
  'TFDS_NUM_CLASSES', 'SYNTHETIC_SIZES', 'ON_BAD_IMAGE', 'CLASSES_FILE', 'REPLACED',
  'readable_extensions', 'CorruptImageError', 'to_rgb_uint8', 'decode_image_file', 'TfdsClassificationSource',
  'ImageFolderSource', 'Subset', 'SkipBadImages', 'stratified_indices', 'holdout_indices',
  'draw_subset', 'class_names', 'save_class_names', 'load_class_names', 'get_source',
  'source_from_config', 'num_classes',
]

TFDS_NUM_CLASSES: dict[str, int] = {'imagenet2012': 1000, 'imagenette': 10, 'caltech101': 102}
SYNTHETIC_SIZES: dict[str, int] = {'train': 2000, 'validation': 500, 'test': 500}
ON_BAD_IMAGE: tuple[str, ...] = ('error', 'skip')
CLASSES_FILE = 'classes.json'
REPLACED = 'replaced'  # key of SkipBadImages' examples that stand in for an undecodable one
_NAMES_SHOWN = 5  # file names a warning shows
HOLDOUT_SPLIT = 'validation'
_FOLDER_PREFIX = 'folder:'
_log = logging.getLogger(__name__)


def _as_str(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if isinstance(value, np.ndarray) and value.shape == ():
    return _as_str(value.item())
  return str(value)


def open_tfds(name: str, split: str, data_dir: str | None) -> Sequence[Any]:
  """A prepared TFDS dataset's split through ``tfds.data_source`` (array_record, random access, no
  TensorFlow at read time; never downloads). Every TFDS reader of the project opens its data here."""
  try:
    import tensorflow_datasets as tfds  # lazy: optional on some machines
  except ImportError as e:
    raise ImportError(f'reading the TFDS dataset {name!r} needs tensorflow-datasets; '
                      'install it with `pip install tensorflow-datasets`') from e
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises several types for a missing dataset
    raise FileNotFoundError(
        f'TFDS dataset {name!r} (split {split!r}) is not prepared in data_dir={data_dir!r} '
        f'({type(e).__name__}: {e}). Prepare it first with TensorFlow installed (`tfds build {name}`; '
        'manual_dir for imagenet2012, see the README) or pass the right data_dir.') from e


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
      data_source = open_tfds(name, split, data_dir)
    self.name, self.split, self._source = name, split, data_source

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f'TfdsClassificationSource({self.name!r}, split={self.split!r}, n={len(self)})'

  def __getitem__(self, index: int) -> dict[str, Any]:
    raw = self._source[int(index)]
    where = f'{self.name}[{self.split}][{index}]'
    out = {'image': as_rgb_uint8(raw['image'], name=where), 'label': int(np.asarray(raw['label']))}
    for key in ('file_name', 'image/file_name', 'image/filename', 'filename'):
      if key in raw:
        out['filename'] = _as_str(raw[key])
        break
    return out



def _class_folders(folder: Path) -> list[str]:
  """The sorted names of ``folder``'s sub-folders (hidden ones left out)."""
  return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))


def _folder_files(folder: Path) -> tuple[list[str], list[str]]:
  """(image files, other files) anywhere under ``folder``, each sorted; image files are those
  whose extension (any case) Pillow decodes (:func:`readable_extensions`)."""
  files = [p for p in sorted(folder.rglob('*')) if p.is_file()]
  return [str(p) for p in files if is_image_file(p)], [str(p) for p in files if not is_image_file(p)]


_WARNED: set[tuple[str, ...]] = set()


def _warn_non_images(root: Path, paths: Sequence[str]) -> None:
  """Logs, once per process for the same files, that ``paths`` under ``root`` are left out."""
  key = tuple(paths)
  if not key or key in _WARNED:
    return
  _WARNED.add(key)
  shown = ', '.join(os.path.relpath(p, root) for p in key[:_NAMES_SHOWN])
  more = f' and {len(key) - _NAMES_SHOWN} more' if len(key) > _NAMES_SHOWN else ''
  _log.warning('image folder %s: %d file(s) are not images Pillow decodes (by extension) and are left out: '
               '%s%s. Convert them to an image format or move them out of the class folders; '
               '`sppnet check-data` lists them all.', root, len(key), shown, more)


class ImageFolderSource:
  """Images in ``root/<class_name>/<file>``, labelled by class name.

  ``class_names`` fixes the label of every class (its position in the sequence);
  every class folder under ``root`` must be one of them, and a name without a
  folder simply has no examples here. Without it the classes are ``root``'s sorted
  sub-folder names. Files whose extension (any case) Pillow decodes
  (:func:`readable_extensions`) are the examples, sorted by label then path; a class
  folder without any is an error. The other files are left out, listed in
  ``non_image_files`` and warned about once (count and a few names). Decoding happens
  on access; a corrupt file raises :class:`CorruptImageError` naming it.
  """

  def __init__(self, root: str | os.PathLike, class_names: Sequence[str] | None = None):
    self.root = Path(root).expanduser()
    if not self.root.is_dir():
      raise FileNotFoundError(f'image folder {str(self.root)!r} does not exist or is not a '
                              'directory; expected root/<class>/<image files>')
    folders = _class_folders(self.root)
    if not folders:
      raise ValueError(f'image folder {str(self.root)!r} has no class sub-folders; '
                       'expected root/<class>/<image files>')
    self.class_names = tuple(folders if class_names is None else class_names)
    label_of = {name: i for i, name in enumerate(self.class_names)}
    unknown = [f for f in folders if f not in label_of]
    if unknown:
      raise ValueError(
        f'image folder {str(self.root)!r} has class folders that the training split lacks: '
        f'{", ".join(unknown)}. Labels come from the training split\'s class folders '
        f'({len(self.class_names)} classes); add those classes to the training split or '
        'remove the folders from this one.')
    files: list[tuple[str, int]] = []
    others: list[str] = []
    empty = []
    for cls in sorted(folders, key=label_of.__getitem__):
      found, other = _folder_files(self.root / cls)
      if not found:
        empty.append(str(self.root / cls))
      files += [(f, label_of[cls]) for f in found]
      others += other
    self.non_image_files: tuple[str, ...] = tuple(others)
    _warn_non_images(self.root, self.non_image_files)
    if empty:
      raise ValueError(f'empty class folder(s), with no image file Pillow decodes: {", ".join(empty)}; '
                       'put images in them or remove them')
    self.files = files

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def labels(self) -> np.ndarray:
    """The label of every example, in order (read from the file list; nothing is decoded)."""
    return np.asarray([label for _, label in self.files], np.int64)

  def filename(self, index: int) -> str:
    """The file of example ``index``."""
    return self.files[int(index)][0]

  def __len__(self) -> int:
    return len(self.files)

  def __repr__(self) -> str:
    return (f'ImageFolderSource({str(self.root)!r}, {len(self)} images, '
            f'{self.num_classes} classes)')

  def __getitem__(self, index: int) -> dict[str, Any]:
    path, label = self.files[int(index)]
    return {'image': decode_image_file(path), 'label': label, 'filename': path}


def _allocate(counts: np.ndarray, n: int, caps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """``n`` items shared among classes in proportion to ``counts`` (largest remainder), at most
  ``caps[c]`` for class ``c``; ties between equal remainders are broken by ``rng``."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  take = np.zeros(len(counts), np.int64)
  if n <= 0 or total == 0:
    return take
  exact = n * counts / total
  take = np.minimum(np.floor(exact).astype(np.int64), caps)
  remainder = exact - take
  tie = rng.random(len(counts))
  while take.sum() < n:
    open_ = take < caps
    if not open_.any():
      break
    # The open class with the largest remainder gets one more (its remainder drops by 1).
    order = np.lexsort((tie, -remainder))
    c = next(int(c) for c in order if open_[c])
    take[c] += 1
    remainder[c] -= 1.0
  return take


def _per_class(labels: np.ndarray, take: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """``take[c]`` indices drawn at random from each class ``c`` of ``labels``, sorted."""
  chosen = []
  for c in range(len(take)):
    members = np.flatnonzero(labels == c)
    if take[c]:
      chosen.append(rng.permutation(members)[:take[c]])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def stratified_indices(labels: Sequence[int], n: int, seed: int) -> np.ndarray:
  """Sorted indices of a seeded draw of ``min(n, len(labels))`` examples, stratified by label.

  Every class gets its share of ``n`` in proportion to its size (largest remainder
  rounding), its members drawn at random; the same ``labels``, ``n`` and ``seed``
  always give the same indices.
  """
  labels = np.asarray(labels, np.int64)
  if n < 0:
    raise ValueError(f'num_examples must be >= 0, got {n}')
  if n >= len(labels):
    return np.arange(len(labels))
  rng = np.random.default_rng([int(seed), 0x5B5E7])
  counts = np.bincount(labels, minlength=labels.max(initial=-1) + 1)
  return _per_class(labels, _allocate(counts, n, counts, rng), rng)


def holdout_indices(labels: Sequence[int], fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of a seeded, stratified hold-out of ``fraction`` of the examples.

  ``round(fraction * len(labels))`` examples in all, shared among the classes in
  proportion to their sizes, never a class's last example (every class keeps at
  least one for training).
  """
  _check_fraction(fraction)
  labels = np.asarray(labels, np.int64)
  rng = np.random.default_rng([int(seed), 0x401D])
  counts = np.bincount(labels, minlength=labels.max(initial=-1) + 1)
  n = int(round(fraction * len(labels)))
  return _per_class(labels, _allocate(counts, n, np.maximum(counts - 1, 0), rng), rng)


def _check_fraction(fraction: Any) -> float:
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
      not 0.0 < float(fraction) < 1.0:
    raise ValueError(f'data.holdout_fraction must be a number strictly between 0 and 1 '
                     f'(e.g. 0.1) or None; got {fraction!r}')
  return float(fraction)


class Subset:
  """The examples ``indices`` of a source, in that order (a view: no copying or decoding)."""

  def __init__(self, source: Sequence[Any], indices: Sequence[int], *, description: str = ''):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(source)):
      raise IndexError(f'subset indices out of range for a source of {len(source)} examples')
    self.description = description

  def __len__(self) -> int:
    return len(self.indices)

  def __repr__(self) -> str:
    what = self.description or f'{len(self)} indices'
    return f'Subset({self.source!r}, {what})'

  def __getattr__(self, name: str) -> Any:  # class_names, num_classes of the wrapped source
    if name in ('source', 'indices', 'description') or name in ('files',):
      raise AttributeError(name)
    attribute = getattr(self.source, name)
    if name == 'image_shape':  # takes an example index: map it into the source
      return lambda index: attribute(self._index(index))
    return attribute

  @property
  def labels(self) -> np.ndarray:
    return np.asarray(self.source.labels)[self.indices]

  def filename(self, index: int) -> str:
    return self.source.filename(self._index(index))

  def _index(self, index: int) -> int:
    i = int(index)
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(f'index {index} out of range for a subset of {len(self)} examples')
    return int(self.indices[i])

  def __getitem__(self, index: int) -> Any:
    return self.source[self._index(index)]


def draw_subset(source: Sequence[Any], n: int, seed: int) -> Sequence[Any]:
  """A seeded draw of ``n`` examples of ``source``, the same on every run for the same seed.

  Stratified by class when the source knows its labels without decoding (an
  ``labels`` attribute: image folders), else uniform without replacement (TFDS
  sources). The subset keeps the source's order. ``n >= len(source)``: the source.
  """
  if n < 0:
    raise ValueError(f'num_examples must be >= 0, got {n}')
  if n >= len(source):
    return source
  labels = getattr(source, 'labels', None)
  if labels is not None:
    indices, how = stratified_indices(labels, n, seed), 'stratified'
  else:
    rng = np.random.default_rng([int(seed), 0x5B5E7])
    indices, how = np.sort(rng.choice(len(source), size=n, replace=False)), 'uniform'
  return Subset(source, indices, description=f'{n} drawn ({how}, seed {seed})')


class SkipBadImages:
  """A source whose undecodable examples are replaced by the next decodable one.

  Reading example ``i`` whose image raises :class:`CorruptImageError` gives example
  ``i + 1`` instead (or the next one that decodes, wrapping around at the end), so
  batch shapes never change and the replacement is the same on every run. Each such
  read is counted (:meth:`num_skipped`) and logged once per bad example
  (:meth:`bad_indices`); the example returned carries ``REPLACED: True``. A source
  where nothing decodes raises.

  The counter lives in this process. Reads in worker processes count in the workers'
  copies, so the training pipelines carry each replacement back in the batches and add
  it here with :meth:`count_skipped`.
  """

  def __init__(self, source: Sequence[Any]):
    self.source = source
    self._lock = threading.Lock()
    self._skipped = 0
    self._bad: set[int] = set()

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f'SkipBadImages({self.source!r})'

  def __getattr__(self, name: str) -> Any:  # class_names, labels, filename, ... of the wrapped source
    if name in ('source', '_lock', '_skipped', '_bad'):
      raise AttributeError(name)
    return getattr(self.source, name)

  def __getstate__(self) -> dict:
    return {'source': self.source, '_skipped': self._skipped, '_bad': set(self._bad)}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def num_skipped(self) -> int:
    """How many reads got a replacement for an undecodable example so far."""
    with self._lock:
      return self._skipped

  def count_skipped(self, n: int) -> None:
    """Adds ``n`` replacements made by copies of this source in other processes."""
    if n < 0:
      raise ValueError(f'a skipped-image count must be >= 0, got {n}')
    with self._lock:
      self._skipped += int(n)

  def bad_indices(self) -> tuple[int, ...]:
    """The examples found undecodable so far, sorted."""
    with self._lock:
      return tuple(sorted(self._bad))

  def __getitem__(self, index: int) -> Any:
    n = len(self.source)
    i = int(index)
    if not -n <= i < n:
      raise IndexError(f'index {index} out of range for a source of {n} examples')
    i %= n
    for k in range(n):
      j = (i + k) % n
      with self._lock:
        known_bad = j in self._bad
      if known_bad:
        continue
      try:
        example = self.source[j]
      except CorruptImageError as e:
        with self._lock:
          new = j not in self._bad
          self._bad.add(j)
        if new:
          _log.warning('skipping undecodable example %d (data.on_bad_image=skip): %s', j, e)
        continue
      if k:
        with self._lock:
          self._skipped += 1
        return {**example, REPLACED: True}
      return example
    raise CorruptImageError(f'none of the {n} examples of {self.source!r} can be decoded')


def _folder_root(name: str) -> Path:
  root = Path(name[len(_FOLDER_PREFIX):]).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f'image folder {str(root)!r} does not exist or is not a directory; '
                            'expected root/<split>/<class>/<image files>')
  return root


def _missing_split(root: Path, split: str) -> ValueError:
  return ValueError(
    f'image folder {str(root)!r} has no {split!r} split folder ({str(root / split)!r} is missing). '
    f'Put that split\'s images in {str(root / split)}/<class>/<images>, or set data.train_split / '
    f'data.eval_split to its split folders (its sub-folders: '
    f'{", ".join(_class_folders(root)) or "none"}); for a folder of class folders with no split '
    'folders, set data.holdout_fraction (e.g. 0.1) to hold out a seeded, stratified part of it '
    'as the validation split.')


def _holdout_root(root: Path, train_split: str) -> Path:
  """``root`` as a folder of class folders for a hold-out split; refuses split folders in it."""
  splits = [s for s in (train_split, HOLDOUT_SPLIT, 'val', 'test') if (root / s).is_dir()]
  if splits:
    raise ValueError(
      f'data.holdout_fraction draws the splits from the class folders of {str(root)!r}, but it has '
      f'split folder(s) {", ".join(splits)}. Unset data.holdout_fraction to use them, or point the '
      'dataset at a folder whose sub-folders are the classes.')
  return root


def class_names(name: str, *, train_split: str = 'train',
                holdout_fraction: float | None = None) -> tuple[str, ...] | None:
  """The run's class names, label ``i`` being the ``i``-th; ``None`` for TFDS datasets.

  For ``'folder:ROOT'``: the sorted class folder names of the training split
  (``ROOT/<train_split>``, or ``ROOT`` itself with ``holdout_fraction``). For
  ``'synthetic'``: the generator's shape names. TFDS datasets fix their own labels.
  """
  if name == 'synthetic':
    return tuple(CLASS_NAMES)
  if name in TFDS_NUM_CLASSES:
    return None
  if isinstance(name, str) and name.startswith(_FOLDER_PREFIX):
    root = _folder_root(name)
    if holdout_fraction is None:
      folder = root / train_split
      if not folder.is_dir():
        raise _missing_split(root, train_split)
    else:
      _check_fraction(holdout_fraction)
      folder = _holdout_root(root, train_split)
    names = tuple(_class_folders(folder))
    if not names:
      raise ValueError(f'image folder {str(folder)!r} has no class sub-folders; '
                       'expected <class>/<image files> in it')
    return names
  raise ValueError(f'unknown dataset {name!r}: use "synthetic", one of '
                   f'{sorted(TFDS_NUM_CLASSES)}, or "folder:/path/to/root"')


def save_class_names(workdir: str | os.PathLike, names: Sequence[str]) -> Path:
  """Writes the run's class names to ``workdir/classes.json`` (atomically); returns its path."""
  path = Path(workdir) / CLASSES_FILE
  run_files.write_json(path, {'class_names': [str(n) for n in names]}, indent=1)
  return path


def load_class_names(workdir: str | os.PathLike) -> tuple[str, ...] | None:
  """The class names kept in ``workdir/classes.json``; ``None`` when the file does not exist."""
  path = Path(workdir) / CLASSES_FILE
  if not path.exists():
    return None
  remedy = 'restore it or delete it to rebuild it from the training split'
  try:
    names = run_files.read_json(path, remedy)['class_names']
  except (KeyError, TypeError) as e:
    raise ValueError(f'{path} is not a class-name file ({type(e).__name__}: {e}); it should hold '
                     '{"class_names": [...]}; restore it or delete it to rebuild it from the '
                     'training split') from e
  if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
    raise ValueError(f'{path}: "class_names" must be a list of strings')
  return tuple(names)


def _folder_source(name: str, split: str, train_split: str, holdout_fraction: float | None,
                   names: Sequence[str] | None, seed: int) -> Sequence[Any]:
  root = _folder_root(name)
  if holdout_fraction is None and not (root / split).is_dir():
    raise _missing_split(root, split)
  if names is None:
    names = class_names(name, train_split=train_split, holdout_fraction=holdout_fraction)
  if holdout_fraction is None:
    return ImageFolderSource(root / split, class_names=names)
  fraction = _check_fraction(holdout_fraction)
  if split not in (train_split, HOLDOUT_SPLIT):
    raise ValueError(f'with data.holdout_fraction the image folder {str(root)!r} has two splits, '
                     f'{train_split!r} (the rest) and {HOLDOUT_SPLIT!r} (the held-out part); '
                     f'got split {split!r}')
  full = ImageFolderSource(_holdout_root(root, train_split), class_names=names)
  held = holdout_indices(full.labels, fraction, seed)
  if split == HOLDOUT_SPLIT:
    return Subset(full, held, description=f'held-out {fraction:g} (seed {seed})')
  rest = np.setdiff1d(np.arange(len(full)), held)
  return Subset(full, rest, description=f'all but a held-out {fraction:g} (seed {seed})')


def get_source(name: str, split: str, *, data_dir: str | None = None,
               num_examples: int | None = None, seed: int = 0,
               synthetic_short_side: tuple[int, int] | None = None,
               synthetic_object_size: tuple[float, float] | None = None,
               train_split: str = 'train', holdout_fraction: float | None = None,
               class_names: Sequence[str] | None = None,
               on_bad_image: str = 'error') -> Sequence[dict[str, Any]]:
  """A random-access source of ``{'image': uint8 (H, W, 3), 'label': int}`` examples.

  Args:
    name: ``'synthetic'``, a TFDS name from :data:`TFDS_NUM_CLASSES`, or
      ``'folder:/path/to/root'`` (see the module docstring: ``root/<split>`` must
      exist, unless ``holdout_fraction`` is set).
    split: split name, e.g. ``'train'``, ``'validation'``; TFDS slicing such as
      ``'train[:10%]'`` works for TFDS sources.
    data_dir: TFDS data directory (``None`` = TFDS default).
    num_examples: synthetic length (default :data:`SYNTHETIC_SIZES`), or the size
      of a seeded draw from the other sources (:func:`draw_subset`).
    seed: the synthetic data seed, and the seed of the subset draw and of the
      folder hold-out.
    synthetic_short_side: (min, max) short side of the synthetic images in pixels
      (None: the generator's default, 160-320); ignored by the other sources.
    synthetic_object_size: (min, max) object extent as a fraction of the short
      side (None: the generator's default); ignored by the other sources.
    train_split: the training split's name; its class folders fix the labels of
      every split of an image folder.
    holdout_fraction: image folders without split folders: hold out this fraction
      of every class (seeded, stratified) as ``'validation'``; the rest is
      ``train_split``. ``None``: the split folders are used.
    class_names: a fixed class-to-label mapping for image folders (e.g. the one
      a run kept with :func:`save_class_names`) instead of the training split's.
    on_bad_image: ``'error'`` (an undecodable example raises) or ``'skip'``
      (:class:`SkipBadImages`).
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'dataset name must be a non-empty string, got {name!r}')
  if on_bad_image not in ON_BAD_IMAGE:
    raise ValueError(f'data.on_bad_image must be one of {ON_BAD_IMAGE}; got {on_bad_image!r}')
  if name == 'synthetic':
    n = num_examples if num_examples is not None else SYNTHETIC_SIZES.get(split)
    if n is None:
      raise ValueError(f'unknown synthetic split {split!r}: use one of {sorted(SYNTHETIC_SIZES)} '
                       'or pass num_examples')
    kwargs: dict[str, Any] = {}
    if synthetic_short_side is not None:
      kwargs.update(min_side=synthetic_short_side[0], max_side=synthetic_short_side[1])
    if synthetic_object_size is not None:
      kwargs.update(object_size=tuple(synthetic_object_size))
    return SyntheticClassification(split, n, seed=seed, **kwargs)
  if name.startswith(_FOLDER_PREFIX):
    source: Sequence[Any] = _folder_source(name, split, train_split, holdout_fraction,
                                           class_names, seed)
  elif name in TFDS_NUM_CLASSES:
    source = TfdsClassificationSource(name, split, data_dir)
  else:
    raise ValueError(f'unknown dataset {name!r}: use "synthetic", one of '
                     f'{sorted(TFDS_NUM_CLASSES)}, or "folder:/path/to/root"')
  if num_examples is not None:
    source = draw_subset(source, int(num_examples), seed)
  if on_bad_image == 'skip':
    source = SkipBadImages(source)
  return source


def source_from_config(data: Any, which: str, **overrides: Any) -> Sequence[dict[str, Any]]:
  """:func:`get_source` for the ``which`` ('train' or 'eval') split named by a config's ``data``.

  Reads ``name``, ``<which>_split``, ``data_dir``, ``num_<which>``, ``seed``,
  ``synthetic_short_side``, ``<which>_object_size``, ``train_split``,
  ``holdout_fraction`` and ``on_bad_image``; ``overrides`` replace any keyword
  (e.g. ``class_names=`` from the workdir, ``on_bad_image='error'``).
  """
  if which not in ('train', 'eval'):
    raise ValueError(f"which must be 'train' or 'eval'; got {which!r}")
  sides = data.get('synthetic_short_side')
  object_size = data.get(f'{which}_object_size')
  kwargs: dict[str, Any] = dict(
    data_dir=data.get('data_dir'), num_examples=data.get(f'num_{which}'), seed=data.get('seed', 0),
    synthetic_short_side=tuple(sides) if sides else None,
    synthetic_object_size=tuple(object_size) if object_size else None,
    train_split=data.get('train_split', 'train'), holdout_fraction=data.get('holdout_fraction'),
    on_bad_image=data.get('on_bad_image') or 'error')
  kwargs.update(overrides)
  return get_source(data.name, data[f'{which}_split'], **kwargs)


def num_classes(name: str, *, train_split: str = 'train',
                holdout_fraction: float | None = None) -> int:
  """Number of classes of a dataset accepted by :func:`get_source`.

  For ``'folder:...'`` this is the number of the training split's class folders
  (:func:`class_names`).
  """
  if name in TFDS_NUM_CLASSES:
    return TFDS_NUM_CLASSES[name]
  names = class_names(name, train_split=train_split, holdout_fraction=holdout_fraction)
  assert names is not None
  return len(names)
