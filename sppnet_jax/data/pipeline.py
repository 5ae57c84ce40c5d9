"""grain input pipelines producing numpy batches for training and evaluation.

Training batches are a pure function of ``(seed, epoch, step)``: the epoch's
order is a grain global shuffle seeded by ``(seed, epoch)``, and the
augmentation of source example ``i`` draws from
``np.random.default_rng([seed, epoch, i])``. Resuming at ``(epoch,
start_step)`` therefore yields exactly the batches an uninterrupted run would,
whatever ``worker_count`` is.

Evaluation batches always have the full batch size: the last partial batch is
padded with zero rows whose ``mask`` is False (so a jitted step never sees a
new shape). Every eval batch also carries ``index`` (int32, the source index,
-1 for padding) so scores can be matched back to examples.

grain is imported lazily so the rest of the package imports on machines
without it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from sppnet_jax.data import augment

__all__ = [
  'steps_per_epoch', 'epoch_shuffle_seed', 'train_batches', 'eval_batches',
  'estimate_mean_image', 'bucket_shape',
]

Batch = dict[str, np.ndarray]
View = Literal['crop', 'full', 'ten']


def _grain():
  try:
    import grain
  except ImportError as e:
    raise ImportError('the input pipelines need grain; install it with `pip install grain`') from e
  return grain


def _check_seed(name: str, value: int) -> int:
  if not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f'{name} must be a non-negative integer, got {value!r}')
  return int(value)


def steps_per_epoch(source: Sequence[Any], batch_size: int) -> int:
  """Number of full training batches per epoch (the remainder is dropped)."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  return len(source) // batch_size


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
  """The grain shuffle seed of one epoch: a hash of (seed, epoch) in [0, 2**31)."""
  state = np.random.SeedSequence([_check_seed('seed', seed), _check_seed('epoch', epoch)])
  return int(state.generate_state(1, np.uint32)[0] >> 1)


@dataclasses.dataclass(frozen=True, eq=False)
class _TrainTransform:
  """Picklable per-example training transform (so grain worker processes can run it)."""
  seed: int
  epoch: int
  crop_size: int
  short_side: int
  positions: str
  resize_to: int | None
  pca_std: float
  mean: Any

  def __call__(self, index: int, example: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.epoch, int(index)])
    image = augment.train_example(
      example['image'], rng, crop_size=self.crop_size, short_side=self.short_side,
      positions=self.positions, resize_to=self.resize_to, pca_std=self.pca_std,
      mean=self.mean)
    return {'image': image, 'label': np.int32(example['label'])}


def _mark_absl_flags_parsed() -> None:
  """grain worker processes read absl flags; mark them parsed when no app did."""
  try:
    from absl import flags
  except ImportError:
    return
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_batches(source: Sequence[dict[str, Any]], *, batch_size: int, seed: int, epoch: int,
                  crop_size: int = 224, resize_to: int | None = None, short_side: int = 256,
                  positions: augment.Positions = 'five', pca_std: float = 0.1,
                  mean: np.ndarray | float | None = None, start_step: int = 0,
                  worker_count: int = 0) -> Iterator[Batch]:
  """One epoch of augmented training batches ``{'image': float32 (B, S, S, 3), 'label': int32 (B,)}``.

  Args:
    source: random-access ``{'image', 'label'}`` source.
    batch_size: examples per batch; the last partial batch is dropped.
    seed, epoch: determine the order and all augmentation randomness.
    crop_size, short_side, positions, pca_std: see :func:`augment.train_example`.
    resize_to: if set, each crop is resized to ``resize_to`` (S = resize_to),
      e.g. 180 for the paper's multi-size training; else S = crop_size.
    mean: mean image at ``crop_size`` (resized to S once), a per-channel (3,)
      mean, a scalar, or None for 128.
    start_step: first batch to produce (to resume mid-epoch), 0..steps_per_epoch.
    worker_count: 0 reads in this process with a few threads; > 0 uses that
      many grain worker processes. The batches are identical either way.
  """
  grain = _grain()
  seed, epoch = _check_seed('seed', seed), _check_seed('epoch', epoch)
  n_steps = steps_per_epoch(source, batch_size)
  if not 0 <= start_step <= n_steps:
    raise ValueError(f'start_step must be in [0, {n_steps}] (steps per epoch for '
                     f'{len(source)} examples at batch size {batch_size}), got {start_step}')
  if positions not in ('five', 'random'):
    raise ValueError(f"positions must be 'five' or 'random', got {positions!r}")
  out_size = crop_size if resize_to is None else int(resize_to)
  out_mean = None if mean is None else augment.mean_for_size(mean, out_size, out_size)
  transform = _TrainTransform(seed, epoch, crop_size, short_side, positions, resize_to,
                              pca_std, out_mean)
  ds = (grain.MapDataset.source(source)
        .map_with_index(transform)  # before the shuffle: the index is the source index
        .shuffle(seed=epoch_shuffle_seed(seed, epoch))
        .batch(batch_size, drop_remainder=True))
  ds = ds.slice(slice(start_step, None))
  if worker_count > 0:
    _mark_absl_flags_parsed()
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count)))
  else:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch_size))
  return iter(it)


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalTransform:
  """Picklable per-example eval transform producing one view of one example."""
  view: str
  crop_size: int
  short_side: int
  mean: Any

  def __call__(self, index: int, example: dict[str, Any]) -> dict[str, np.ndarray]:
    image = example['image']
    if self.view == 'crop':
      x = augment.normalize(augment.center_crop_view(image, self.crop_size, self.short_side),
                            self.mean)
    elif self.view == 'ten':
      x = np.stack([augment.normalize(v, self.mean) for v in
                    augment.ten_view(image, self.crop_size, self.short_side)])
    else:
      x = augment.normalize(augment.full_view(image, self.short_side), self.mean)
    return {'image': x, 'label': np.int32(example['label']), 'index': np.int32(index),
            'mask': np.bool_(True)}


def bucket_shape(h: int, w: int, bucket: int) -> tuple[int, int]:
  """(h, w) each rounded up to a multiple of ``bucket``."""
  if bucket < 1:
    raise ValueError(f'bucket must be >= 1, got {bucket}')
  return math.ceil(h / bucket) * bucket, math.ceil(w / bucket) * bucket


def _pad_batch(rows: list[dict[str, np.ndarray]], batch_size: int,
               image_shape: tuple[int, ...]) -> Batch:
  """Stack rows into a batch of exactly ``batch_size``, zero-padding images and rows.

  Images smaller than ``image_shape`` are zero-padded at the bottom/right.
  Padding rows have label 0, index -1, mask False (and valid_hw (0, 0)).
  """
  images = np.zeros((batch_size,) + tuple(image_shape), np.float32)
  labels = np.zeros(batch_size, np.int32)
  index = np.full(batch_size, -1, np.int32)
  mask = np.zeros(batch_size, bool)
  for r, row in enumerate(rows):
    x = row['image']
    images[(r,) + tuple(slice(0, s) for s in x.shape)] = x
    labels[r], index[r], mask[r] = row['label'], row['index'], True
  batch = {'image': images, 'label': labels, 'index': index, 'mask': mask}
  if rows and 'valid_hw' in rows[0]:
    hw = np.zeros((batch_size, 2), np.int32)
    for r, row in enumerate(rows):
      hw[r] = row['valid_hw']
    batch['valid_hw'] = hw
  return batch


def eval_batches(source: Sequence[dict[str, Any]], *, view: View = 'crop', batch_size: int,
                 crop_size: int = 224, short_side: int = 256,
                 mean: np.ndarray | float | None = None, bucket: int = 32,
                 num_threads: int = 2) -> Iterator[Batch]:
  """Evaluation batches of one test view; every batch has exactly ``batch_size`` rows.

  Keys: ``image`` float32, ``label`` int32 (B,), ``index`` int32 (B,) (source
  index, -1 for padding), ``mask`` bool (B,) (False for padding rows).

  * ``'crop'``: image (B, S, S, 3), the central crop (S = crop_size).
  * ``'ten'``: image (B, 10, S, S, 3), see :func:`augment.ten_view`.
  * ``'full'``: whole images with short side ``short_side``; images whose
    (H, W) round up to the same multiples of ``bucket`` are batched together,
    zero-padded (after normalisation) at the bottom/right to that bucket
    shape, and ``valid_hw`` int32 (B, 2) gives each image's true (H, W)
    ((0, 0) for padding rows). Batches of one bucket always have the same
    shape. Batches come out when a bucket fills, then the partial buckets, so
    the order is not the source order - use ``index``.

  ``mean`` is given at ``crop_size`` and resized to each input's size.
  """
  grain = _grain()
  if view not in ('crop', 'full', 'ten'):
    raise ValueError(f"view must be 'crop', 'full' or 'ten', got {view!r}")
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if short_side < crop_size and view != 'full':
    raise ValueError(f'short_side ({short_side}) must be >= crop_size ({crop_size})')
  bucket_shape(1, 1, bucket)  # validates bucket
  if mean is not None and view != 'full':
    mean = augment.mean_for_size(mean, crop_size, crop_size)
  transform = _EvalTransform(view, crop_size, short_side, mean)
  ds = grain.MapDataset.source(source).map_with_index(transform)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=2 * batch_size))
  if view == 'full':
    return _bucketed(iter(it), batch_size, bucket)
  shape = (crop_size, crop_size, 3) if view == 'crop' else (10, crop_size, crop_size, 3)
  return _fixed(iter(it), batch_size, shape)


def _fixed(rows: Iterator[dict[str, np.ndarray]], batch_size: int,
           shape: tuple[int, ...]) -> Iterator[Batch]:
  pending: list[dict[str, np.ndarray]] = []
  for row in rows:
    pending.append(row)
    if len(pending) == batch_size:
      yield _pad_batch(pending, batch_size, shape)
      pending = []
  if pending:
    yield _pad_batch(pending, batch_size, shape)


def _bucketed(rows: Iterator[dict[str, np.ndarray]], batch_size: int,
              bucket: int) -> Iterator[Batch]:
  open_buckets: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}
  for row in rows:
    h, w = row['image'].shape[:2]
    key = bucket_shape(h, w, bucket)
    row['valid_hw'] = np.array([h, w], np.int32)
    pending = open_buckets.setdefault(key, [])
    pending.append(row)
    if len(pending) == batch_size:
      yield _pad_batch(pending, batch_size, key + (3,))
      open_buckets[key] = []
  for key in sorted(open_buckets):
    if open_buckets[key]:
      yield _pad_batch(open_buckets[key], batch_size, key + (3,))


def estimate_mean_image(source: Sequence[dict[str, Any]], n: int, crop_size: int = 224,
                        short_side: int = 256, seed: int = 0) -> np.ndarray:
  """Per-pixel mean (crop_size, crop_size, 3) float32 of ``n`` training crops.

  ``n`` examples are picked at random (without replacement, all of them if the
  source is smaller); each contributes one training crop (centre or a corner,
  random flip, no colour noise), as the network sees them.
  """
  if n < 1:
    raise ValueError(f'n must be >= 1, got {n}')
  if len(source) == 0:
    raise ValueError('cannot estimate a mean image from an empty source')
  rng = np.random.default_rng([_check_seed('seed', seed), 1])
  indices = rng.choice(len(source), size=min(n, len(source)), replace=False)
  total = np.zeros((crop_size, crop_size, 3), np.float64)
  for i in indices:
    ex_rng = np.random.default_rng([seed, 2, int(i)])
    x = augment.train_crop(source[int(i)]['image'], ex_rng, crop_size=crop_size,
                           short_side=short_side, positions='five')
    total += augment.random_flip(x, ex_rng)
  return (total / len(indices)).astype(np.float32)
