"""grain input pipelines producing numpy batches for training and evaluation.

Training batches are a pure function of ``(seed, epoch, step)``: the epoch's
order is a grain global shuffle seeded by ``(seed, epoch)``, and the
augmentation of source example ``i`` draws from
``np.random.default_rng([seed, epoch, i])``. Resuming at ``(epoch,
start_step)`` therefore yields exactly the batches an uninterrupted run would,
whatever ``worker_count`` is.

Per-process sharding: with ``shard=(i, n)`` (JAX process ``i`` of ``n``) a pipeline yields
only process ``i``'s rows of every global batch, rows ``[i*B/n, (i+1)*B/n)``, and reads and
decodes only those examples; stacking the processes' parts in process order gives exactly
the global batch of ``shard=(0, 1)``.

Parallel input: ``worker_count > 0`` runs the per-example work in that many grain worker
processes, with ``prefetch`` batches read ahead per worker; 0 reads in this process with
threads. The batches are identical either way.

Skipped images: every training batch carries ``skipped`` int32 (B,), 1 where the row's
example stands in for an undecodable one (``data.on_bad_image='skip'``,
:class:`~sppnet_jax.data.sources.SkipBadImages`). Worker processes count such reads in
their own copies of the source, so when they read, each delivered batch's count is added
to this process's source (``count_skipped``): ``source.num_skipped()`` is right whatever
``worker_count`` is.

Evaluation batches always have the full batch size: the last partial batch is
padded with zero rows whose ``mask`` is False (so a jitted step never sees a
new shape). Every eval batch also carries ``index`` (int32, the source index,
-1 for padding) so scores can be matched back to examples.

grain is imported lazily so the rest of the package imports on machines
without it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from sppnet_jax.data import augment, device_augment
from sppnet_jax.data.sources import REPLACED

__all__ = [
  'steps_per_epoch', 'epoch_shuffle_seed', 'train_batches', 'eval_batches',
  'estimate_mean_image', 'bucket_shape', 'image_shapes', 'FullBatchPlan', 'full_epoch_plan',
  'full_train_batches', 'full_mode_mean', 'default_worker_count', 'check_shard', 'eval_workers',
  'credit_skipped',
]

Batch = dict[str, np.ndarray]


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


def default_worker_count(cores: int | None = None) -> int:
  """grain worker processes for a host with ``cores`` cores available to this process (default:
  its CPU affinity): one core stays with the training process, the rest decode."""
  if cores is None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
  return max(int(cores) - 1, 0)


def check_shard(shard: tuple[int, int], batch_size: int) -> tuple[int, int]:
  """``(index, count)`` validated: ``0 <= index < count`` and ``count`` divides ``batch_size``."""
  index, count = (int(x) for x in shard)
  if not 0 <= index < count:
    raise ValueError(f'shard must be (index, count) with 0 <= index < count, got {shard}')
  if batch_size % count:
    raise ValueError(f'batch_size={batch_size} must be a multiple of the {count} processes')
  return index, count


def iterate(ds, *, worker_count: int, prefetch: int, rows_per_item: int):
  """An iterator over a grain MapDataset: in this process (two threads) or in worker processes."""
  grain = _grain()
  if worker_count < 0:
    raise ValueError(f'worker_count must be >= 0, got {worker_count}')
  if prefetch < 1:
    raise ValueError(f'prefetch must be >= 1, got {prefetch}')
  if worker_count > 0:
    _mark_absl_flags_parsed()
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count),
                                                     per_worker_buffer_size=int(prefetch)))
  else:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch * rows_per_item))
  return iter(it)


def _skipped(example: dict[str, Any]) -> np.int32:
  """1 when ``example`` stands in for an undecodable one (:data:`~sppnet_jax.data.sources.REPLACED`), else 0."""
  return np.int32(bool(example.get(REPLACED, False)))


def credit_skipped(items: Iterator[dict[str, Any]], source: Any, worker_count: int) -> Iterator[dict[str, Any]]:
  """``items`` (batches or rows with a ``skipped`` field), each one's count added to
  ``source.count_skipped`` as it is delivered when ``worker_count > 0``.

  A worker process counts its replacements in its own copy of the source, which this process
  never sees; the count travels back in the data instead. With ``worker_count == 0`` the reads
  happen here and the source has counted them already, so ``items`` is returned unchanged (as it
  is for a source without ``count_skipped``).
  """
  count = getattr(source, 'count_skipped', None)
  if worker_count == 0 or not callable(count):
    return items
  return _crediting(items, count)


def _crediting(items: Iterator[dict[str, Any]], count: Callable[[int], None]) -> Iterator[dict[str, Any]]:
  """Yields ``items``, passing each one's summed ``skipped`` field to ``count`` when it is not 0."""
  for item in items:
    n = int(np.sum(item['skipped']))
    if n:
      count(n)
    yield item


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
  on_device: bool = False

  def __call__(self, index: int, example: dict[str, Any]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.epoch, int(index)])
    if self.on_device:
      canvas, window, flip, alpha = device_augment.draws(example['image'], rng, crop_size=self.crop_size,
                                                         short_side=self.short_side, positions=self.positions,
                                                         pca_std=self.pca_std)
      return {'image': canvas, 'window': window, 'flip': np.bool_(flip), 'alpha': alpha,
              'label': np.int32(example['label']), 'skipped': _skipped(example)}
    image = augment.train_example(
      example['image'], rng, crop_size=self.crop_size, short_side=self.short_side,
      positions=self.positions, resize_to=self.resize_to, pca_std=self.pca_std,
      mean=self.mean)
    return {'image': image, 'label': np.int32(example['label']), 'skipped': _skipped(example)}


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
                  worker_count: int = 0, prefetch: int = 2, shard: tuple[int, int] = (0, 1),
                  on_device: bool = False) -> Iterator[Batch]:
  """One epoch of augmented training batches ``{'image': float32 (B, S, S, 3), 'label': int32 (B,),
  'skipped': int32 (B,)}`` (``skipped``: see the module docstring).

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
    prefetch: batches read ahead (per worker).
    shard: (process index, process count): yield this process's B/count rows of every
      batch, reading only those examples.
    on_device: the host stops before resampling: ``image`` is the uint8 canvas (B, C, C, 3)
      holding each crop's source pixels and ``window`` float32 (B, 6) where the crop lies on it
      (``device_augment.crop_region``; C = 2 * crop_size), with ``flip`` bool (B,) and
      ``alpha`` float32 (B, 3) drawn as the host transform draws them;
      ``device_augment.finish_batch`` does the rest (``resize_to`` and ``mean`` are then the
      device's business).
  """
  grain = _grain()
  index, count = check_shard(shard, batch_size)
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
                              pca_std, out_mean, bool(on_device))
  ds = (grain.MapDataset.source(source)
        .map_with_index(transform)  # before the shuffle: the index is the source index
        .shuffle(seed=epoch_shuffle_seed(seed, epoch))
        .batch(batch_size // count, drop_remainder=True))
  # Local batch k of global step s is part s * count + index; the maps are lazy, so the other
  # processes' examples are never read here.
  ds = ds.slice(slice(start_step * count + index, n_steps * count, count))
  batches = iterate(ds, worker_count=worker_count, prefetch=prefetch, rows_per_item=batch_size // count)
  return credit_skipped(batches, source, worker_count)


def image_shapes(source: Sequence[dict[str, Any]]) -> np.ndarray:
  """(N, 2) int (h, w) of every example: ``source.image_shape(i)`` where the source can tell
  without decoding (the synthetic ones), else read from the decoded image."""
  shape = getattr(source, 'image_shape', None)
  if shape is not None:
    return np.array([shape(i) for i in range(len(source))], np.int64).reshape(-1, 2)
  return np.array([np.shape(source[i]['image'])[:2] for i in range(len(source))], np.int64).reshape(-1, 2)


@dataclasses.dataclass(frozen=True)
class FullBatchPlan:
  """One training batch of whole images: the bucket shape, and each row's (index, short side)."""
  shape: tuple[int, int]
  index: np.ndarray
  short_side: np.ndarray


def full_epoch_plan(shapes: np.ndarray, *, batch_size: int, seed: int, epoch: int,
                    short_range: tuple[int, int], bucket: int) -> list[FullBatchPlan]:
  """The batches of one epoch of whole-image ('full' mode) training, before any pixel is read.

  The epoch's order is a permutation seeded by ``(seed, epoch)``; example ``i`` gets a short
  side drawn uniformly from ``short_range`` (``default_rng([seed, epoch, i, 1])``) and its
  scaled (h, w) is rounded up to multiples of ``bucket``. Examples go in order into the open
  bucket of their shape, and a bucket becomes a batch when it holds ``batch_size``; buckets
  still partial at the end of the epoch are dropped (their examples wait for the next
  epoch's draw). The plan is a pure function of its arguments, so a resumed run replays it.
  """
  lo, hi = (int(x) for x in short_range)
  if not 1 <= lo <= hi:
    raise ValueError(f'short_range must be (min, max) with 1 <= min <= max, got {short_range}')
  order = np.random.default_rng([_check_seed('seed', seed), _check_seed('epoch', epoch), 3]).permutation(len(shapes))
  open_buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
  plan = []
  for i in order:
    short = int(np.random.default_rng([seed, epoch, int(i), 1]).integers(lo, hi + 1))
    h, w = augment.short_side_shape(int(shapes[i, 0]), int(shapes[i, 1]), short)
    key = bucket_shape(h, w, bucket)
    rows = open_buckets.setdefault(key, [])
    rows.append((int(i), short))
    if len(rows) == batch_size:
      index, sides = zip(*rows)
      plan.append(FullBatchPlan(key, np.array(index, np.int64), np.array(sides, np.int64)))
      open_buckets[key] = []
  return plan


@dataclasses.dataclass(frozen=True, eq=False)
class _FullTrainTransform:
  """Loads one planned batch: each image at its short side, flipped, colour noise, normalised,
  zero-padded to the bucket shape (``on_device``: uint8 after the resize, with the flip and
  noise draws). Picklable for grain workers."""
  source: Any
  seed: int
  epoch: int
  pca_std: float
  mean: Any
  on_device: bool = False

  def __call__(self, batch: FullBatchPlan) -> dict[str, np.ndarray]:
    n = len(batch.index)
    images = np.zeros((n, *batch.shape, 3), np.uint8 if self.on_device else np.float32)
    valid_hw = np.zeros((n, 2), np.int32)
    labels, skipped = np.zeros(n, np.int32), np.zeros(n, np.int32)
    flips, alphas = np.zeros(n, bool), np.zeros((n, 3), np.float32)
    for r, (i, short) in enumerate(zip(batch.index, batch.short_side)):
      example = self.source[int(i)]
      rng = np.random.default_rng([self.seed, self.epoch, int(i)])
      x = augment.resize_short_side(example['image'], int(short))
      if self.on_device:
        flips[r], alphas[r] = device_augment.flip_and_alpha(rng, self.pca_std)
      else:
        x = augment.normalize(augment.pca_color_noise(augment.random_flip(x, rng), rng, self.pca_std), self.mean)
      images[r, :x.shape[0], :x.shape[1]] = x
      valid_hw[r], labels[r], skipped[r] = x.shape[:2], example['label'], _skipped(example)
    if self.on_device:
      return {'image': images, 'valid_hw': valid_hw, 'flip': flips, 'alpha': alphas, 'label': labels,
              'skipped': skipped}
    return {'image': images, 'valid_hw': valid_hw, 'label': labels, 'skipped': skipped}


def full_mode_mean(mean: np.ndarray | float | str | None) -> np.ndarray | float | str | None:
  """The mean of whole-image training, which must not depend on the input size: a mean image
  becomes its per-channel mean; a scalar, a (3,) mean, ``PER_IMAGE`` or None stay."""
  if np.ndim(mean) == 3:  # None, PER_IMAGE and scalars have ndim 0
    return np.asarray(mean, np.float32).reshape(-1, 3).mean(0)
  return mean


def full_train_batches(source: Sequence[dict[str, Any]], plan: Sequence[FullBatchPlan], *, seed: int, epoch: int,
                       pca_std: float = 0.1, mean: np.ndarray | float | str | None = None,
                       start_step: int = 0, worker_count: int = 0, prefetch: int = 2,
                       shard: tuple[int, int] = (0, 1), on_device: bool = False) -> Iterator[Batch]:
  """The batches of a :func:`full_epoch_plan`, from ``start_step`` on:
  ``{'image': float32 (B, H, W, 3) zero-padded, 'valid_hw': int32 (B, 2), 'label': int32 (B,),
  'skipped': int32 (B,)}`` (``skipped``: see the module docstring).

  ``mean`` goes through :func:`full_mode_mean`. ``worker_count``, ``prefetch`` and ``shard`` as
  in :func:`train_batches`. ``on_device``: the host stops after the resize: ``image`` is uint8
  (zero-padded), with ``flip`` bool (B,) and ``alpha`` float32 (B, 3) drawn as the host
  transform draws them; ``device_augment.finish_full_batch`` does the rest.
  """
  grain = _grain()
  if not 0 <= start_step <= len(plan):
    raise ValueError(f'start_step must be in [0, {len(plan)}], got {start_step}')
  plan = list(plan[start_step:])
  if plan:
    index, count = check_shard(shard, len(plan[0].index))
    rows = slice(index * len(plan[0].index) // count, (index + 1) * len(plan[0].index) // count)
    plan = [FullBatchPlan(b.shape, b.index[rows], b.short_side[rows]) for b in plan]
  transform = _FullTrainTransform(source, seed, epoch, pca_std, full_mode_mean(mean), bool(on_device))
  ds = grain.MapDataset.source(plan).map(transform)
  return credit_skipped(iterate(ds, worker_count=worker_count, prefetch=prefetch, rows_per_item=1), source,
                        worker_count)


@dataclasses.dataclass(frozen=True, eq=False)
class _EvalTransform:
  """Picklable per-example eval transform: ``prepare`` turns the image into the view's input."""
  prepare: Callable[[np.ndarray], np.ndarray]

  def __call__(self, index: int, example: dict[str, Any]) -> dict[str, np.ndarray]:
    return {'image': np.asarray(self.prepare(example['image']), np.float32),
            'label': np.int32(example['label']), 'index': np.int32(index), 'mask': np.bool_(True),
            'skipped': _skipped(example)}


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


_EVAL_WORKERS: contextvars.ContextVar[int] = contextvars.ContextVar('eval_workers', default=0)


@contextlib.contextmanager
def eval_workers(worker_count: int) -> Iterator[None]:
  """Within the block, :func:`eval_batches` called without ``worker_count`` uses this many grain
  worker processes (training sets it from ``data.worker_count`` around its evaluations)."""
  if worker_count < 0:
    raise ValueError(f'worker_count must be >= 0, got {worker_count}')
  token = _EVAL_WORKERS.set(int(worker_count))
  try:
    yield
  finally:
    _EVAL_WORKERS.reset(token)


def eval_batches(source: Sequence[dict[str, Any]], *, prepare: Callable[[np.ndarray], np.ndarray],
                 batch_size: int, bucket: int | None = None, canvases: Sequence[tuple[int, int]] = (),
                 num_threads: int = 2, worker_count: int | None = None) -> Iterator[Batch]:
  """Evaluation batches of one test view; every batch has exactly ``batch_size`` rows.

  ``prepare`` maps a uint8 image to the view's normalised float32 input (the views are
  defined in :mod:`sppnet_jax.views`). Keys: ``image`` float32, ``label`` int32 (B,),
  ``index`` int32 (B,) (source index, -1 for padding), ``mask`` bool (B,) (False for
  padding rows).

  * ``bucket=None``: every input must have the same shape; the last partial batch is
    padded with zero rows.
  * ``bucket=k``: inputs (H, W, 3) of any size; those whose (H, W) round up to the same
    multiples of ``k`` are batched together, zero-padded at the bottom/right to that
    bucket shape, and ``valid_hw`` int32 (B, 2) gives each image's true (H, W) ((0, 0) for
    padding rows). Batches come out when a bucket fills, then the partial buckets, so the
    order is not the source order - use ``index``.
  * ``canvases``: with ``bucket``, a fixed set of (H, W) batch shapes; an input goes to the
    smallest canvas that holds it (only inputs that fit none get their own bucket shape), so
    a compiled consumer sees no more shapes than there are canvases.

  ``worker_count``: grain worker processes preparing the examples (None: the value of the
  enclosing :func:`eval_workers` block, else 0: ``num_threads`` threads in this process).
  The batches are the same either way.
  """
  grain = _grain()
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if bucket is not None:
    bucket_shape(1, 1, bucket)  # validates bucket
  workers = _EVAL_WORKERS.get() if worker_count is None else int(worker_count)
  ds = grain.MapDataset.source(source).map_with_index(_EvalTransform(prepare))
  if workers > 0:
    it = credit_skipped(iterate(ds, worker_count=workers, prefetch=2 * batch_size, rows_per_item=1), source, workers)
  else:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
  if bucket is not None:
    return _bucketed(iter(it), batch_size, bucket, canvases)
  if canvases:
    raise ValueError('canvases apply to bucketed views; pass bucket= as well')
  return _fixed(iter(it), batch_size)


def _fixed(rows: Iterator[dict[str, np.ndarray]], batch_size: int) -> Iterator[Batch]:
  pending: list[dict[str, np.ndarray]] = []
  shape = None
  for row in rows:
    if shape is None:
      shape = row['image'].shape
    elif row['image'].shape != shape:
      raise ValueError(f'example {int(row["index"])} gives an input of shape {row["image"].shape}, the first '
                       f'gave {shape}: a fixed-shape view needs equal shapes (use bucket= for variable sizes)')
    pending.append(row)
    if len(pending) == batch_size:
      yield _pad_batch(pending, batch_size, shape)
      pending = []
  if pending:
    yield _pad_batch(pending, batch_size, shape)


def _canvas_for(h: int, w: int, bucket: int, canvases: Sequence[tuple[int, int]]) -> tuple[int, int]:
  fits = [(ch * cw, (ch, cw)) for ch, cw in canvases if h <= ch and w <= cw]
  return min(fits)[1] if fits else bucket_shape(h, w, bucket)


def _bucketed(rows: Iterator[dict[str, np.ndarray]], batch_size: int, bucket: int,
              canvases: Sequence[tuple[int, int]] = ()) -> Iterator[Batch]:
  canvases = [(int(h), int(w)) for h, w in canvases]
  open_buckets: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}
  for row in rows:
    h, w = row['image'].shape[:2]
    key = _canvas_for(h, w, bucket, canvases)
    row['valid_hw'] = np.array([h, w], np.int32)
    pending = open_buckets.setdefault(key, [])
    pending.append(row)
    if len(pending) == batch_size:
      yield _pad_batch(pending, batch_size, key + (3,))
      open_buckets[key] = []
  for key in sorted(open_buckets):
    if open_buckets[key]:
      yield _pad_batch(open_buckets[key], batch_size, key + (3,))


@dataclasses.dataclass(frozen=True, eq=False)
class _MeanCrop:
  """One example's contribution to the mean image (picklable for grain workers)."""
  source: Any
  seed: int
  crop_size: int
  short_side: int

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    ex_rng = np.random.default_rng([self.seed, 2, int(index)])
    example = self.source[int(index)]
    x = augment.train_crop(example['image'], ex_rng, crop_size=self.crop_size,
                           short_side=self.short_side, positions='five')
    return {'crop': augment.random_flip(x, ex_rng), 'skipped': _skipped(example)}


def estimate_mean_image(source: Sequence[dict[str, Any]], n: int, crop_size: int = 224,
                        short_side: int = 256, seed: int = 0, worker_count: int = 0) -> np.ndarray:
  """Per-pixel mean (crop_size, crop_size, 3) float32 of ``n`` training crops.

  ``n`` examples are picked at random (without replacement, all of them if the
  source is smaller); each contributes one training crop (centre or a corner,
  random flip, no colour noise), as the network sees them. ``worker_count`` grain
  worker processes read them (0: this process); the sum runs in index order either way.
  """
  if n < 1:
    raise ValueError(f'n must be >= 1, got {n}')
  if len(source) == 0:
    raise ValueError('cannot estimate a mean image from an empty source')
  grain = _grain()
  rng = np.random.default_rng([_check_seed('seed', seed), 1])
  indices = rng.choice(len(source), size=min(n, len(source)), replace=False)
  ds = grain.MapDataset.source([int(i) for i in indices]).map(_MeanCrop(source, seed, crop_size, short_side))
  total = np.zeros((crop_size, crop_size, 3), np.float64)
  crops = credit_skipped(iterate(ds, worker_count=worker_count, prefetch=4, rows_per_item=1), source, worker_count)
  for item in crops:  # in the order of ``indices``
    total += item['crop']
  return (total / len(indices)).astype(np.float32)
