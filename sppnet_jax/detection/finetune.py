"""Fine-tuning fc6, fc7 and a new (K+1)-way fc8 on cached pooled features, conv frozen.

Labels: windows with IoU >= ``fg_iou`` (0.5) with a non-difficult GT box of class c (0..K-1) are
positives of c, windows whose best IoU is in [``bg_iou_low``, ``bg_iou_high``) background; the rest
are unused. The background class exists only here: the fc8 output 0 is background and foreground
class c is output c + 1 (``finetune_class``); nothing outside this module sees that index.

Memory does not grow with the number of images. A first pass reads only the windows and GT of each
cached image (not its features) to count the usable windows. Then :func:`window_batches` streams
the features through grain: its transform (:class:`PoolSampler`) reads a pool of ``pool_images``
images in a seeded order (a new permutation per epoch), keeps their usable rows in the cache's
16-bit dtype and draws ``pool_steps`` mini-batches from them (``batch_size`` rows, ``fg_fraction``
of them positives, uniformly with replacement within the pool); pools are read ahead in worker
processes or threads while the device trains.

The optimizer has the training code's layout (``state.chain_optimizer``: weight decay on kernels
added to the gradient, heavy-ball momentum, a step learning-rate schedule inside the optimizer
state, so a drop never recompiles); the state is ``state.TrainState`` and the step is the training
code's ``state.make_train_step`` applied to the fc head, so a step whose loss or gradient is not
finite leaves the state unchanged. The loop never waits for the device: losses stay on the device until
each ``log_every`` boundary, where a non-finite one stops the run.

Given a checkpoint directory, fine-tuning saves the train state and its data position (the step; the
pool and the batch within it follow from it) through :mod:`sppnet_jax.checkpoints` every
``checkpoint_every`` steps and at the last step, and resumes from the newest intact checkpoint when
run again, replaying exactly the batches an uninterrupted run would have seen, so its parameters are
bit-identical; a finished fine-tuning is restored, not redone. SIGTERM or a first Ctrl-C saves the
step reached and raises :class:`Stopped`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import pathlib
import time
from typing import Any, Callable, Iterator, Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sppnet_jax import compiler, models
from sppnet_jax.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from sppnet_jax.detection import boxes as box_ops
from sppnet_jax.data.pipeline import iterate
from sppnet_jax.detection import cache
from sppnet_jax.state import TrainState, chain_optimizer, make_train_step

BACKGROUND = 0
UNUSED = -1
CHECKPOINTS_KEPT = 2  # the newest fine-tuning checkpoints kept (an older one stands in for a damaged newest)


def finetune_class(labels: np.ndarray) -> np.ndarray:
  """fc8 output of foreground classes 0..K-1 (output 0 is background)."""
  return np.asarray(labels, np.int64) + 1


def window_labels(windows: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, gt_difficult: np.ndarray,
                  fg_iou: float = 0.5, bg_low: float = 0.1, bg_high: float = 0.5) -> np.ndarray:
  """fc8 target of each window: ``finetune_class(c)`` (IoU >= fg_iou with a non-difficult GT of class c),
  ``BACKGROUND`` (best IoU in [bg_low, bg_high)) or ``UNUSED``."""
  keep = ~np.asarray(gt_difficult, bool)
  gt_boxes, gt_labels = np.asarray(gt_boxes)[keep], np.asarray(gt_labels)[keep]
  out = np.full(len(windows), UNUSED, np.int64)
  if len(windows) == 0 or len(gt_boxes) == 0:
    return out  # without GT every window has IoU 0 < bg_low
  iou = box_ops.iou_matrix(windows, gt_boxes)
  best = iou.argmax(1)
  top = iou[np.arange(len(windows)), best]
  out[(top >= bg_low) & (top < bg_high)] = BACKGROUND
  fg = top >= fg_iou
  out[fg] = finetune_class(gt_labels[best[fg]])
  return out


def _labels_of(path, f: ml_collections.ConfigDict) -> np.ndarray:
  c = cache.read_fields(path, ("windows", "gt_boxes", "gt_labels", "gt_difficult"))
  return window_labels(c["windows"], c["gt_boxes"], c["gt_labels"], c["gt_difficult"], float(f.fg_iou),
                       float(f.bg_iou_low), float(f.bg_iou_high))


def count_windows(paths: Sequence, f: ml_collections.ConfigDict) -> tuple[int, int]:
  """(foreground, background) usable windows over the cached images (features are not read)."""
  fg = bg = 0
  for p in paths:
    lab = _labels_of(p, f)
    fg += int((lab > BACKGROUND).sum())
    bg += int((lab == BACKGROUND).sum())
  return fg, bg


@dataclasses.dataclass(frozen=True)
class PoolSampler:
  """The grain transform of fine-tuning: pool ``(epoch, k)`` of the cached images -> its
  ``pool_steps`` fg/bg-balanced mini-batches, ``(features (S, B, D) in the cache's dtype, fc8
  targets (S, B) int32)``.

  Epoch ``e`` visits the images in the permutation seeded by ``(seed, e)``; pool ``k`` holds its
  images ``k * pool_images`` to ``(k + 1) * pool_images`` (the last pool of an epoch may be
  smaller), extended by the following images of the permutation (wrapping round) until it holds a
  foreground and a background window. Rows are drawn uniformly with replacement within the pool
  from a generator seeded by ``(seed, e, k)``, so a pool's batches do not depend on which worker
  or thread built it.
  """
  paths: tuple
  fg_iou: float
  bg_low: float
  bg_high: float
  pool_images: int
  pool_steps: int
  n_fg: int
  n_bg: int
  seed: int

  @classmethod
  def from_config(cls, paths: Sequence, f: ml_collections.ConfigDict, seed: int) -> "PoolSampler":
    if not len(paths):
      raise ValueError("fine-tuning needs at least one cached training image.")
    if int(f.pool_images) < 1 or int(f.pool_steps) < 1:
      raise ValueError(f"finetune.pool_images and finetune.pool_steps must be >= 1; got {f.pool_images}, "
                       f"{f.pool_steps}.")
    n_fg = max(1, int(round(int(f.batch_size) * float(f.fg_fraction))))
    return cls(tuple(str(p) for p in paths), float(f.fg_iou), float(f.bg_iou_low), float(f.bg_iou_high),
               int(f.pool_images), int(f.pool_steps), n_fg, int(f.batch_size) - n_fg, int(seed))

  @property
  def pools_per_epoch(self) -> int:
    return -(-len(self.paths) // self.pool_images)

  def _usable(self, i: int) -> tuple[np.ndarray, np.ndarray]:
    c = cache.read_fields(pathlib.Path(self.paths[i]), ("pool5", "windows", "gt_boxes", "gt_labels", "gt_difficult"))
    lab = window_labels(c["windows"], c["gt_boxes"], c["gt_labels"], c["gt_difficult"], self.fg_iou, self.bg_low,
                        self.bg_high)
    rows = np.flatnonzero(lab != UNUSED)
    return c["pool5"][rows], lab[rows]

  def __call__(self, pool: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    epoch, k = (int(v) for v in pool)
    order = np.random.default_rng((self.seed, epoch)).permutation(len(self.paths))
    xs, ys, j = [], [], k * self.pool_images
    end = min(j + self.pool_images, len(order))
    while j < end or not (any((y > BACKGROUND).any() for y in ys) and any((y == BACKGROUND).any() for y in ys)):
      if len(xs) >= len(order):
        raise ValueError("the cached training images have no foreground or no background window: cannot "
                         "fine-tune.")
      x, y = self._usable(int(order[j % len(order)]))
      xs.append(x), ys.append(y)
      j += 1
    x, y = np.concatenate(xs), np.concatenate(ys)
    rng = np.random.default_rng((self.seed, epoch, k))
    rows = np.concatenate([rng.choice(np.flatnonzero(y > BACKGROUND), (self.pool_steps, self.n_fg)),
                           rng.choice(np.flatnonzero(y == BACKGROUND), (self.pool_steps, self.n_bg))], axis=1)
    return x[rows], y[rows].astype(np.int32)


def window_batches(paths: Sequence, f: ml_collections.ConfigDict, seed: int, steps: int,
                   start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Mini-batches ``start`` to ``steps`` of fine-tuning, ``(features float32 (B, D), fc8 targets int32 (B,))``,
  streamed from the cache: :func:`sampler_batches` of the config's :class:`PoolSampler`."""
  sampler = PoolSampler.from_config(paths, f, seed)
  return sampler_batches(sampler, steps, start, int(f.worker_count), int(f.prefetch))


def sampler_batches(sampler: PoolSampler, steps: int, start: int, worker_count: int,
                    prefetch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Mini-batches ``start`` to ``steps`` of ``sampler``: step ``s`` is batch ``s % pool_steps`` of pool
  ``s // pool_steps`` (counted over the epochs), so a run resumed at ``start`` sees the batches an
  uninterrupted one would. grain maps the sampler over the pools, read ahead by ``worker_count``
  processes (0: two threads of this one) with ``prefetch`` pools buffered."""
  steps, start = int(steps), int(start)
  if start >= steps:
    return
  first, skip = divmod(start, sampler.pool_steps)
  pools = -(-steps // sampler.pool_steps)
  plan = [divmod(p, sampler.pools_per_epoch) for p in range(first, pools)]
  ds = grain.MapDataset.source(plan).map(sampler)
  done = start
  for x, y in iterate(ds, worker_count=worker_count, prefetch=prefetch, rows_per_item=1):
    for s in range(skip, len(y)):
      if done == steps:
        return
      yield x[s].astype(np.float32), y[s]
      done += 1
    skip = 0


def data_position(step: int, sampler: PoolSampler) -> dict:
  """Where fine-tuning stands after ``step`` steps, as saved with a checkpoint: ``global_step`` and the
  next batch's ``epoch``, ``pool`` (within the epoch) and ``pool_step`` (within the pool)."""
  pool, pool_step = divmod(int(step), sampler.pool_steps)
  epoch, pool = divmod(pool, sampler.pools_per_epoch)
  return {"global_step": int(step), "epoch": epoch, "pool": pool, "pool_step": pool_step}


def checkpoint_interval(f: ml_collections.ConfigDict) -> int:
  """``finetune.checkpoint_every``, checked: a whole number of steps >= 1."""
  value = f.get("checkpoint_every")
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f"finetune.checkpoint_every must be a whole number of steps >= 1 (steps between fine-tuning "
                     f"checkpoints); got {value!r}.")
  return int(value)


class Stopped(Exception):
  """Fine-tuning stopped on SIGTERM or a first Ctrl-C after saving the step it reached."""

  def __init__(self, step: int, steps: int, directory: pathlib.Path):
    self.step, self.steps, self.directory = int(step), int(steps), directory
    super().__init__(f"fine-tuning stopped at step {step} of {steps} and saved it in {directory}; rerun the same "
                     "command to resume from there.")


@dataclasses.dataclass
class Checkpoints:
  """Fine-tuning checkpoints in ``directory/checkpoints`` (``checkpoints.checkpoint_manager``, the newest
  ``CHECKPOINTS_KEPT`` kept), saved every ``every`` steps; the directory is made by the first save."""
  directory: pathlib.Path
  every: int
  _manager: Any = None

  @property
  def path(self) -> pathlib.Path:
    return pathlib.Path(self.directory).resolve() / "checkpoints"

  def _open(self):
    if self._manager is None:
      self._manager = checkpoint_manager(pathlib.Path(self.directory), CHECKPOINTS_KEPT)
    return self._manager

  def restore(self, state: TrainState) -> tuple[TrainState, dict]:
    """``(state, progress)`` of the newest intact checkpoint, or ``(state, {})`` when none was saved."""
    if not self.path.is_dir() or self._open().latest_step() is None:
      return state, {}
    return restore_checkpoint(self._open(), state)

  def save(self, state: TrainState, progress: dict) -> None:
    save_checkpoint(self._open(), state, progress)

  def wait(self) -> None:
    """Returns once the saves in flight are on disk."""
    if self._manager is not None:
      self._manager.wait_until_finished()


def init_finetune_head(trunk_head: Any, num_classes: int, fc8_std: float, seed: int) -> dict:
  """fc6/fc7 copied from the trunk's head, a new ``num_classes``-way fc8 ~ N(0, fc8_std^2), bias 0."""
  fc_width = int(trunk_head["fc7"]["kernel"].shape[1])
  kernel = fc8_std * jax.random.normal(jax.random.key(seed), (fc_width, num_classes), jnp.float32)
  return {"fc6": trunk_head["fc6"], "fc7": trunk_head["fc7"],
          "fc8": {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}}


def make_optimizer(f: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """The training code's optimizer layout (``state.chain_optimizer``): weight decay on kernels,
  heavy-ball momentum, then the step schedule of ``f`` (``lr`` times ``lr_decay`` after each of
  ``lr_boundaries``)."""
  schedule = optax.piecewise_constant_schedule(float(f.lr), {int(b): float(f.lr_decay) for b in f.lr_boundaries})
  return chain_optimizer(float(f.weight_decay), optax.trace(decay=float(f.momentum)), schedule)


def _restored_position(progress: dict, sampler: PoolSampler, steps: int, path: pathlib.Path) -> int:
  """The step a restored checkpoint's ``progress`` resumes at, checked against this run's sampling."""
  if not progress:
    return 0
  start = int(progress["global_step"])
  if {k: progress.get(k) for k in ("epoch", "pool", "pool_step")} != {
      k: v for k, v in data_position(start, sampler).items() if k != "global_step"}:
    raise ValueError(f"{path} holds fine-tuning checkpoints taken with another window sampling (finetune.pool_images, "
                     "finetune.pool_steps or the cached training images differ), so resuming would not replay the "
                     f"same batches; restore that config, or remove {path} to fine-tune from the start.")
  if start > steps:
    raise ValueError(f"{path} holds a fine-tuning checkpoint at step {start}, past finetune.steps={steps}; restore "
                     f"that config, or remove {path} to fine-tune from the start.")
  return start


def _window_stats(pending: list, done: int) -> dict:
  """``{'loss', 'acc'}`` averaged over the steps of ``pending`` (those up to ``done``), on the host;
  raises FloatingPointError at the first non-finite one."""
  loss, err, finite = (np.asarray(v) for v in zip(*jax.device_get(pending)))
  if not finite.all():
    bad = done - len(pending) + int(np.flatnonzero(~finite)[0])
    raise FloatingPointError(f"fine-tuning loss became {loss[~finite][0]} at step {bad}; lower finetune.lr.")
  return {"loss": float(loss.mean()), "acc": float(1.0 - err.mean())}


def finetune_head(sampler: PoolSampler, trunk_head: Any, num_classes: int, config: ml_collections.ConfigDict,
                  log: Callable[[str], None] = print, metrics_dir: str | pathlib.Path | None = None,
                  checkpoints: Checkpoints | None = None,
                  stop_requested: Callable[[], bool] | None = None) -> tuple[dict, dict]:
  """Fine-tunes fc6, fc7 and a new ``num_classes``-way fc8 (K + 1) on the batches of ``sampler``
  (:func:`sampler_batches`) for ``finetune.steps``.

  ``metrics_dir``: the loss and batch accuracy of every log step go to its ``metrics.jsonl`` and
  TensorBoard (records of steps about to be replayed are dropped). ``checkpoints``: resumes from the
  newest, saves every ``checkpoints.every`` steps and at the last; ``stop_requested`` is asked after
  every step, and when it says so the step is saved and :class:`Stopped` raised. Returns
  ``(params, stats)``; a non-finite loss raises FloatingPointError at the next log boundary.
  """
  f = config.finetune
  fc_width = int(trunk_head["fc7"]["kernel"].shape[1])
  head = models.Head(num_classes=num_classes, fc_width=fc_width, dropout=float(f.dropout), dtype=jnp.float32)
  tx = make_optimizer(f)
  params = init_finetune_head(trunk_head, num_classes, float(f.fc8_std), int(config.seed))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  steps, every = int(f.steps), max(1, int(f.log_every))
  start, last = 0, {}
  if checkpoints is not None:
    state, progress = checkpoints.restore(state)
    start = _restored_position(progress, sampler, steps, checkpoints.path)
    if progress.get("loss") is not None:
      last = {"loss": float(progress["loss"])}
    if progress:
      log(f"  fine-tuning resumed at step {start}/{steps} from {checkpoints.path}")
  writer = None
  if metrics_dir is not None:
    from sppnet_jax.metrics_io import MetricWriter
    pathlib.Path(metrics_dir).mkdir(parents=True, exist_ok=True)
    writer = MetricWriter(metrics_dir, drop_after_step=start)
  step = compiler.jit(make_train_step(head, tx))
  key = jax.random.key(int(config.seed) + 1)
  batches = sampler_batches(sampler, steps, start, int(f.worker_count), int(f.prefetch))
  pending, tick = [], time.time()
  try:
    for t in range(start, steps):
      x, y = next(batches)
      state, metrics = step(state, jnp.asarray(x), jnp.asarray(y), key)
      pending.append((metrics["loss"], metrics["top1_error"], metrics["finite"]))
      done = t + 1
      if done % every == 0 or done == steps:
        last = _window_stats(pending, done)
        log(f"  fine-tune step {done}/{steps}: loss {last['loss']:.4f} batch acc {last['acc']:.3f} "
            f"({(time.time() - tick) / (done - start):.3f} s/step)")
        if writer is not None:
          writer.write(done, {"finetune/loss": last["loss"], "finetune/acc": last["acc"]})
        pending = []
      if checkpoints is None:
        continue
      stop = stop_requested is not None and stop_requested() and done < steps
      if done % checkpoints.every == 0 or done == steps or stop:
        checkpoints.save(state, {**data_position(done, sampler), "loss": last.get("loss")})
      if stop:
        checkpoints.wait()
        raise Stopped(done, steps, checkpoints.path)
  finally:  # a save in flight completes even when an error stops the run
    batches.close()
    if checkpoints is not None:
      checkpoints.wait()
    if writer is not None:
      writer.close()
  return jax.device_get(state.params), {"steps": steps, "final_loss": last.get("loss", float("nan"))}


def finetune_from_cache(paths: Sequence, trunk_head: Any, num_fg: int, config: ml_collections.ConfigDict,
                        log: Callable[[str], None] = print, metrics_dir: str | pathlib.Path | None = None,
                        checkpoint_dir: str | pathlib.Path | None = None) -> tuple[dict, dict]:
  """Counts the usable windows, then fine-tunes on batches streamed from the cache (module docstring).

  With ``checkpoint_dir``, checkpoints go to ``checkpoint_dir/checkpoints`` every
  ``finetune.checkpoint_every`` steps and at the last step, a rerun resumes from the newest (a finished
  one returns its parameters without a step), and SIGTERM or a first Ctrl-C saves the step reached and
  raises :class:`Stopped` (a second Ctrl-C aborts at once). ``metrics_dir``: see :func:`finetune_head`.
  """
  from sppnet_jax.train import Preemption
  f = config.finetune
  interval = checkpoint_interval(f)
  checkpoints = Checkpoints(pathlib.Path(checkpoint_dir), interval) if checkpoint_dir else None
  with Preemption() if checkpoints is not None else contextlib.nullcontext() as preemption:
    n_fg, n_bg = count_windows(paths, f)
    if n_fg == 0:
      raise ValueError(f"no window overlaps a ground-truth box by IoU >= {f.fg_iou}: cannot fine-tune. Check the "
                       "proposals (recall) and the GT boxes, or add more training images.")
    if n_bg == 0:
      raise ValueError(f"no background window (max IoU in [{f.bg_iou_low}, {f.bg_iou_high})) in the training set: "
                       "cannot fine-tune. Use more proposals per image or more images.")
    log(f"  fine-tuning on {n_fg} foreground and {n_bg} background windows of {len(paths)} images, streamed "
        f"{int(f.pool_images)} images at a time")
    sampler = PoolSampler.from_config(paths, f, int(config.seed))
    params, stats = finetune_head(sampler, trunk_head, num_fg + 1, config, log, metrics_dir, checkpoints,
                                  preemption.agreed if preemption is not None else None)
  return params, {**stats, "fg_windows": n_fg, "bg_windows": n_bg}
