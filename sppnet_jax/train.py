"""Training: single-size, multi-size (alternating per epoch), random-size and whole-image
('full', beyond the paper) SPP-net training.

One parameter pytree; one jitted step per input shape (:class:`CompiledSteps`): the fixed-size
modes compile every size of their schedule up front, 'full' mode each bucket shape on first
use, so a whole run compiles exactly once per shape. Data-parallel over all devices through a
``Mesh`` with a ``'data'`` axis, with the train state donated. The run lives in its workdir:
``config.json``, ``metrics.jsonl``, TensorBoard events under ``tensorboard/``, orbax
checkpoints under ``checkpoints/`` (holding the train state and the position in the data and
size schedule) and ``mean.npy``. Calling ``train_and_evaluate`` again on the same workdir
resumes where the last checkpoint left off and replays exactly the batches an uninterrupted
run would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sppnet_jax import compiler, evaluate, models, ops, run_files, runlock
from sppnet_jax import workdir as workdir_lib
from sppnet_jax.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from sppnet_jax.config_checks import validate_config, validate_input_sizes
from sppnet_jax.data import device_augment, pipeline, sources
from sppnet_jax.metrics_io import MetricWriter, read_metrics
from sppnet_jax import state as state_lib
from sppnet_jax.state import TrainState, build_model, init_state, make_optimizer, make_train_step
from sppnet_jax.workdir import config_source

Array = jax.Array


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN or inf; the workdir keeps the last good checkpoint."""


MODES = ("single", "multi", "random", "full")


def size_schedule(config: ml_collections.ConfigDict) -> list[int]:
  """The input size of every epoch: 'single' crop size; 'multi' alternates crop and second size
  (starting with the crop size); 'random' draws a size from ``random_range`` per epoch; 'full'
  (whole images, their short side drawn per example from ``full_short_range``) lists the crop
  size, which only sets the shape the parameters are initialised at."""
  t, crop = config.train, config.data.crop_size
  if t.mode in ("single", "full"):
    return [crop] * t.num_epochs
  if t.mode == "multi":
    sizes = (crop, config.data.second_size)
    return [sizes[e % 2] for e in range(t.num_epochs)]
  if t.mode == "random":
    lo, hi = t.random_range
    rng = np.random.default_rng([t.seed, 7])
    return [int(s) for s in rng.integers(lo, hi + 1, size=t.num_epochs)]
  raise ValueError(f"train.mode must be one of {MODES}; got {t.mode!r}.")


def epoch_steps(config: ml_collections.ConfigDict, source, shapes: np.ndarray | None) -> list[int]:
  """Steps of every epoch up to the last learning-rate drop (what the schedule's boundaries need):
  equal for the fixed-size modes, the length of each epoch's bucket plan in 'full' mode."""
  t = config.train
  drops = [int(e) for e in t.lr_drop_epochs] if t.lr_schedule == "steps" else []
  horizon = min(max(drops, default=0), int(t.num_epochs))
  if t.mode != "full":
    return [pipeline.steps_per_epoch(source, t.batch_size)] * horizon
  return [len(_full_plan(config, shapes, e)) for e in range(horizon)]


def _full_plan(config: ml_collections.ConfigDict, shapes: np.ndarray, epoch: int) -> list:
  t = config.train
  return pipeline.full_epoch_plan(shapes, batch_size=t.batch_size, seed=t.seed, epoch=epoch,
                                  short_range=tuple(t.full_short_range), bucket=t.full_bucket)


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


class CompiledSteps:
  """The train step compiled ahead of time once per input shape, on first use.

  ``steps[(h, w)]`` is the executable for inputs of (h, w); fixed-size modes compile every
  size of their schedule up front (``precompile``), 'full' mode compiles each bucket shape the
  first time a batch of that shape comes (``len(steps)`` is the compile count).
  ``make_step(shape)`` gives the step function for a shape and ``input_specs(shape)`` its
  batch arguments (all split over the mesh's 'data' axis); the state comes first and the
  dropout key last, both replicated.
  """

  def __init__(self, make_step: Callable, input_specs: Callable, state: TrainState, mesh: Mesh):
    self._replicated, self._data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    self._make_step, self._input_specs = make_step, input_specs
    self._state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    self._compiled: dict[tuple[int, int], Callable] = {}

  def __len__(self) -> int:
    return len(self._compiled)

  def __getitem__(self, shape: tuple[int, int]) -> Callable:
    shape = (int(shape[0]), int(shape[1]))
    if shape not in self._compiled:
      inputs = self._input_specs(shape)
      jitted = compiler.jit(self._make_step(shape), in_shardings=(self._replicated, *[self._data] * len(inputs),
                                                                  self._replicated),
                            out_shardings=(self._replicated, self._replicated), donate_argnums=0)
      key = jax.eval_shape(lambda: jax.random.key(0))
      self._compiled[shape] = jitted.lower(self._state, *inputs, key).compile()
    return self._compiled[shape]

  def precompile(self, sizes: list[int]) -> "CompiledSteps":
    for size in sorted(set(sizes)):
      self[(size, size)]
    return self


def _spec(shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(int(x) for x in shape), dtype)


def compiled_steps(config: ml_collections.ConfigDict, model: nn.Module, tx, state: TrainState, mesh: Mesh,
                   mean) -> tuple[CompiledSteps, tuple[str, ...]]:
  """The run's compiled steps and the batch keys they take, in argument order.

  Host augmentation: float32 inputs of each shape (with ``valid_hw`` in 'full' mode). Device
  augmentation (``data.device_augment``): in the fixed-size modes uint8 canvases of each crop's
  source pixels with its ``window``, ``flip`` and ``alpha``, resampled and finished on the
  device at each input size (:func:`device_augment.finish_batch`); in 'full' mode the resized
  uint8 images with ``valid_hw``, ``flip`` and ``alpha``
  (:func:`device_augment.finish_full_batch`); inside the same compiled step.
  """
  b, crop = config.train.batch_size, config.data.crop_size
  padded = config.train.mode == "full"
  step = make_train_step(model, tx, padded)
  on_device = uses_device_augment(config)
  if padded and not on_device:
    specs = lambda hw: (_spec((b, *hw, 3), jnp.float32), _spec((b, 2), jnp.int32), _spec((b,), jnp.int32))
    return CompiledSteps(lambda hw: step, specs, state, mesh), ("image", "valid_hw", "label")
  if padded:
    full_mean = device_augment.device_mean(pipeline.full_mode_mean(mean))

    def train_step_full_augmented_on_device(state, images, valid_hw, flip, alpha, labels, key):
      return step(state, device_augment.finish_full_batch(images, valid_hw, flip, alpha, full_mean), valid_hw,
                  labels, key)

    specs = lambda hw: (_spec((b, *hw, 3), jnp.uint8), _spec((b, 2), jnp.int32), _spec((b,), jnp.bool_),
                        _spec((b, 3), jnp.float32), _spec((b,), jnp.int32))
    return (CompiledSteps(lambda hw: train_step_full_augmented_on_device, specs, state, mesh),
            ("image", "valid_hw", "flip", "alpha", "label"))
  if not on_device:
    specs = lambda hw: (_spec((b, *hw, 3), jnp.float32), _spec((b,), jnp.int32))
    return CompiledSteps(lambda hw: step, specs, state, mesh), ("image", "label")

  def make_step(hw):
    size, m = hw[0], device_augment.device_mean(mean, hw[0])

    def train_step_augmented_on_device(state, canvases, windows, flip, alpha, labels, key):
      return step(state, device_augment.finish_batch(canvases, windows, flip, alpha, m, crop, size), labels, key)

    return train_step_augmented_on_device

  side = device_augment.canvas_side(crop)
  specs = lambda hw: (_spec((b, side, side, 3), jnp.uint8), _spec((b, len(device_augment.WINDOW_FIELDS)), jnp.float32),
                      _spec((b,), jnp.bool_), _spec((b, 3), jnp.float32), _spec((b,), jnp.int32))
  return CompiledSteps(make_step, specs, state, mesh), ("image", "window", "flip", "alpha", "label")


def uses_device_augment(config: ml_collections.ConfigDict) -> bool:
  """Whether the float work of the augmentation runs on the device (``data.device_augment``)."""
  return bool(config.data.get("device_augment", False))


def global_batch(batch: dict, mesh: Mesh, names: tuple[str, ...] = ("image", "label")) -> tuple[Array, ...]:
  """The global batch on the mesh from this process's part of it (its rows, in process order;
  see ``pipeline.train_batches(shard=...)``)."""
  sharding = NamedSharding(mesh, P("data"))
  n = jax.process_count()
  return tuple(jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * n, *x.shape[1:]))
               for x in (np.asarray(batch[name]) for name in names))


def shard_of_this_process() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


class Preemption:
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks after every step:
  the run saves its state and stops cleanly. A second Ctrl-C aborts at once.

  With several JAX processes, :meth:`agreed` is a cross-process agreement: every process
  calls it after the same steps (those it logs, and an epoch's last), and it is true on all
  of them when any one received the signal, so all save the same step and stop together. One
  process needs no agreement and checks after every step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous: dict = {}

  def __enter__(self):
    try:
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
    except ValueError:  # not the main thread: no handler, no preemption support
      self._previous = {}
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt("second Ctrl-C: stopped without saving the steps since the last checkpoint.")
    self.requested = True
    if signum == signal.SIGINT:
      print("\nCtrl-C: saving a checkpoint and stopping (press Ctrl-C again to abort at once).", flush=True)

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)

  def agreed(self) -> bool:
    """Whether any process has been asked to stop (a collective call with several processes)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    self.requested = bool(np.any(flags))
    return self.requested


def load_mean(config: ml_collections.ConfigDict, source, workdir: pathlib.Path) -> np.ndarray | str:
  """The input normalisation of ``config.data.normalize``: the mean image at the crop size
  ('mean_image', estimated once and kept in the workdir) or ``'per_image'``."""
  path = workdir / "mean.npy"
  if config.data.get("normalize", "mean_image") != "mean_image" or path.exists() or source is None:
    return workdir_lib.load_mean_file(config, workdir)
  mean = pipeline.estimate_mean_image(source, n=config.data.mean_samples, crop_size=config.data.crop_size,
                                      short_side=config.data.short_side, worker_count=worker_count(config))
  if _is_primary():  # written whole, then renamed: another process never reads half a file
    partial = path.with_name(f"mean.{os.getpid()}.npy")
    np.save(partial, mean.astype(np.float32))
    partial.replace(path)
  return mean


# Fields a workdir's config may differ in without refusal: logging, how the input is read, and
# what evaluation reads.
IGNORED_FIELDS = workdir_lib.LOGGING_FIELDS + ("data.worker_count", "data.prefetch", "eval", "paper")


# Written when a non-finite loss stops a run: the last good checkpoint then (see _non_finite).
NONFINITE_FILE = "nonfinite.json"
# The field a run stopped by a non-finite loss may change until it saves a new checkpoint.
RATE_FIELD = "train.learning_rate"


def _extend_hint(changed: list[str]) -> str:
  if set(changed) <= set(workdir_lib.EXTENDABLE_FIELDS):
    return "To train the run further with a longer schedule, pass extend=True (sppnet train --extend)."
  return ""


def latest_saved_step(workdir: pathlib.Path) -> int | None:
  """The newest step directory under ``workdir/checkpoints`` (None: none), without opening it."""
  directory = workdir / "checkpoints"
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
  return max(steps, default=None)


def rate_change_allowed(workdir: pathlib.Path) -> bool:
  """Whether the run in ``workdir`` stopped on a non-finite loss and has saved no checkpoint since,
  so it may resume from its last good checkpoint with another ``train.learning_rate``."""
  path = workdir / NONFINITE_FILE
  if not path.exists():
    return False
  record = run_files.read_json(path, "delete it; it only lets a run stopped by a non-finite loss resume with a "
                               "lower train.learning_rate")
  return isinstance(record, dict) and record.get("last_checkpoint") == latest_saved_step(workdir)


def _shortened(old: dict, config: ml_collections.ConfigDict) -> list[str]:
  """How ``config``'s schedule fails to lengthen the run of JSON config ``old``: fewer epochs,
  fewer plateau drops, or other step drops within the epochs the run was set to train."""
  before, t = old.get("train") or {}, config.train
  epochs = int(before.get("num_epochs", 0))
  problems = []
  if int(t.num_epochs) < epochs:
    problems.append(f"train.num_epochs={t.num_epochs} is below the run's {epochs}")
  if t.lr_schedule == "plateau" and int(t.max_lr_drops) < int(before.get("max_lr_drops", 0)):
    problems.append(f"train.max_lr_drops={t.max_lr_drops} is below the run's {before['max_lr_drops']}")
  within = lambda drops: sorted(int(e) for e in drops if int(e) < epochs)
  if t.lr_schedule == "steps" and within(t.lr_drop_epochs) != within(before.get("lr_drop_epochs") or ()):
    problems.append(f"train.lr_drop_epochs={tuple(t.lr_drop_epochs)} moves drops within the run's {epochs} epochs "
                    f"(it has {tuple(before.get('lr_drop_epochs') or ())})")
  return problems


def check_workdir_config(config: ml_collections.ConfigDict, workdir: pathlib.Path, extend: bool = False) -> None:
  """Refuses a config that differs from the run already in ``workdir``; writes nothing.

  A workdir with no checkpoint yet takes any config (a mistake before the first save never
  locks it). With checkpoints, only the logging and evaluation fields may differ; with
  ``extend`` also ``train.num_epochs``, ``train.lr_drop_epochs`` and ``train.max_lr_drops``,
  so long as the schedule only grows (:func:`_shortened`); and after a non-finite loss, until
  the next checkpoint, ``train.learning_rate`` (:func:`rate_change_allowed`).
  """
  workdir = pathlib.Path(workdir)
  workdir_lib.check_config(config, workdir, ignore=_ignored_fields(workdir, extend),
                           hint="" if extend else _extend_hint)
  old = workdir_lib.read_config(workdir) if extend and workdir_lib.has_checkpoint(workdir) else None
  problems = _shortened(old, config) if old is not None else []
  if problems:
    raise workdir_lib.ConfigChangedError(
        f"{workdir} holds a run that --extend (extend=True) can only lengthen: {'; '.join(problems)}. Give at least "
        "the run's schedule, or a new workdir.")


def _ignored_fields(workdir: pathlib.Path, extend: bool) -> tuple[str, ...]:
  rate = (RATE_FIELD,) if rate_change_allowed(workdir) else ()
  return IGNORED_FIELDS + (workdir_lib.EXTENDABLE_FIELDS if extend else ()) + rate


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, extend: bool = False) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates the result.

  Everything is checked before anything is written. ``extend=True`` lets a run in
  ``workdir`` continue under a longer schedule (see :func:`check_workdir_config`).
  Returns the final evaluation (also in ``workdir/eval.json``), or ``{'preempted': True, ...}``
  when SIGTERM or Ctrl-C stopped the run after saving.

  With several JAX processes (``jax.distributed.initialize``), every process calls this with
  the same config and workdir (a shared file system): each reads and decodes only its part of
  every global batch, a signal on any process stops all of them at the same saved step, and
  process 0 writes the workdir's files other than checkpoints.

  Another process training, evaluating or detecting in ``workdir`` is refused at once
  (``runlock.WorkdirBusyError``), before anything is written; the lock is held until this returns.
  """
  with Preemption() as preemption, contextlib.ExitStack() as held:  # a signal during set-up still stops cleanly
    return _run(config, pathlib.Path(workdir), preemption, extend, held)


def train_unless_finished(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """:func:`train_and_evaluate`, except that a run in ``workdir`` which already finished under the
  same config (its final metrics logged, ``eval.json`` written) is returned as it stands instead of
  being evaluated again; a changed config is refused as by ``train_and_evaluate``."""
  workdir = pathlib.Path(workdir)
  path = workdir / evaluate.EVAL_FILE
  if path.exists() and any(k.startswith("final/") for r in read_metrics(workdir) for k in r):
    check_workdir_config(config, workdir)
    return run_files.read_json(path, "delete it to have the finished run evaluated again")
  return train_and_evaluate(config, workdir)


def _scalars(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclasses.dataclass(frozen=True)
class Progress:
  """Where a run stands; saved with every checkpoint.

  ``epoch``: the epoch being trained (``num_epochs`` when done); ``step``: steps of it done, so
  its data resumes at global batch ``step``; ``global_step``: steps since the start;
  ``pending_eval``: the previous epoch was saved before its validation ran.
  """
  epoch: int = 0
  step: int = 0
  global_step: int = 0
  pending_eval: bool = False

  @classmethod
  def from_record(cls, record: dict) -> "Progress":
    """From a checkpoint's JSON (older records also hold plateau fields, now in the optimizer state)."""
    return cls(**{f.name: type(f.default)(record[f.name]) for f in dataclasses.fields(cls) if f.name in record})

  def record(self) -> dict:
    return dataclasses.asdict(self)


def worker_count(config: ml_collections.ConfigDict) -> int:
  """``data.worker_count``, or when None the cores available less one (``pipeline.default_worker_count``)."""
  n = config.data.get("worker_count")
  return pipeline.default_worker_count() if n is None else int(n)


class _Epoch:
  """One epoch's batches (this process's rows of each) and their number."""

  def __init__(self, config, source, mean, epoch: int, size: int, start_step: int, shapes: np.ndarray | None):
    t, d = config.train, config.data
    reading = dict(worker_count=worker_count(config), prefetch=d.get("prefetch", 2), shard=shard_of_this_process())
    if t.mode == "full":
      plan = _full_plan(config, shapes, epoch)
      self.num_steps = len(plan)
      self.batches = pipeline.full_train_batches(source, plan, seed=t.seed, epoch=epoch, pca_std=d.pca_std, mean=mean,
                                                 start_step=start_step, on_device=uses_device_augment(config),
                                                 **reading)
    else:
      self.num_steps = pipeline.steps_per_epoch(source, t.batch_size)
      self.batches = pipeline.train_batches(
          source, batch_size=t.batch_size, seed=t.seed, epoch=epoch, crop_size=d.crop_size,
          resize_to=None if size == d.crop_size else size, short_side=d.short_side, positions=d.positions,
          pca_std=d.pca_std, mean=mean, start_step=start_step, on_device=uses_device_augment(config), **reading)


@dataclasses.dataclass
class _Run:
  """What every part of a run shares, fixed once it is set up."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  model: models.SPPNet
  train_source: Any
  eval_source: Any
  curve_source: Any
  fit_source: Any  # the fixed subset of training images of the fit diagnostics (None: off)
  mean: Any
  shapes: np.ndarray | None
  sizes: list[int]
  mesh: Mesh
  steps: CompiledSteps
  names: tuple[str, ...]
  manager: Any
  writer: Any
  base_key: Array
  preemption: Preemption
  observe: Callable  # (opt_state, validation error) -> opt_state: the plateau rule, compiled once


class _NoWriter:
  """The metric writer of processes other than 0: they compute the same values and write none."""

  def write(self, step: int, scalars: dict) -> None:
    del step, scalars

  def close(self) -> None:
    pass


def _barrier(name: str, timeout_s: int = 900) -> None:
  """Waits until every process is here (through the coordination service, not a collective).

  The CPU collectives (gloo) give a process 30 s to join the first collective of a device
  group; a process that compiles or reads more slowly would fail it, so the processes meet
  here before the first collectives (the checkpoint manager's, the first step's).
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the client jax.distributed.initialize made
  client = distributed.global_state.client
  if client is not None:
    _BARRIERS[name] = _BARRIERS.get(name, 0) + 1  # a barrier's name is used once per job
    client.wait_at_barrier(f"sppnet:{name}:{_BARRIERS[name]}", timeout_s * 1000)


_BARRIERS: dict[str, int] = {}


def _is_primary() -> bool:
  return jax.process_index() == 0


def _local(tree):
  """A host copy of a replicated pytree (on any process, also when the arrays span processes)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x, tree)


def _replicated(tree, mesh: Mesh):
  """A pytree of host or single-device arrays, equal on every process, replicated over the mesh."""
  sharding = NamedSharding(mesh, P())
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index, x=np.asarray(x): x[index]), tree)


def smallest_input(model: models.SPPNet) -> int:
  """The smallest input side ``model`` takes: its last conv map (and the no-SPP head's pool5) at least one cell."""
  layers = models.spatial_layers(model.layers)
  if model.levels is None:
    layers = [*layers, (*model.baseline_pool, 0)]
  return ops.min_input_size(layers)


def _set_up(config: ml_collections.ConfigDict, workdir: pathlib.Path, preemption: Preemption,
            extend: bool, held: contextlib.ExitStack) -> tuple[_Run, TrainState, Progress]:
  t, d = config.train, config.data
  # Everything that can be refused is checked before anything is written.
  sizes = size_schedule(config)
  padded = t.mode == "full"
  if padded and not config.model.spp:
    raise ValueError("train.mode='full' feeds whole images of varying sizes, which needs an SPP network "
                     "(model.spp=True).")
  validate_config(config)
  # The lock comes before the data are read (that can take a while); a refusal from here on
  # leaves no trace, as the lock removes a workdir it made that is still empty.
  held.enter_context(runlock.hold(workdir, process_index=jax.process_index()))
  train_source = config_source(d, "train")
  class_names = getattr(train_source, "class_names", None)
  eval_source = config_source(d, "eval", **({"class_names": class_names} if class_names else {}))
  num_classes = sources.num_classes(d.name, train_split=d.train_split, holdout_fraction=d.get("holdout_fraction"))
  model = build_model(config, num_classes)
  validate_input_sizes(config, smallest_input(model))
  mesh = make_mesh()
  if t.batch_size % mesh.size:
    raise ValueError(f"train.batch_size={t.batch_size} must be a multiple of the {mesh.size} devices.")
  if pipeline.steps_per_epoch(train_source, t.batch_size) < 1:
    raise ValueError(f"the training split has fewer than batch_size={t.batch_size} examples.")
  shapes = pipeline.image_shapes(train_source) if padded else None
  if padded and not _full_plan(config, shapes, 0):
    raise ValueError(f"train.mode='full': no shape bucket of {t.full_bucket} px fills a batch of {t.batch_size} in an "
                     "epoch, so there is nothing to train on; raise train.full_bucket, narrow "
                     "train.full_short_range or lower train.batch_size.")
  tx = make_optimizer(config, epoch_steps(config, train_source, shapes))
  check_workdir_config(config, workdir, extend)

  if _is_primary():
    workdir_lib.write_config(config, workdir, ignore=_ignored_fields(workdir, extend))
    if not rate_change_allowed(workdir):  # a checkpoint was saved since: the record is spent
      (workdir / NONFINITE_FILE).unlink(missing_ok=True)
    if class_names:
      sources.save_class_names(workdir, class_names)
  mean = load_mean(config, train_source, workdir)
  state = init_state(model, tx, d.crop_size, t.seed)
  _barrier("checkpoints")
  manager = checkpoint_manager(workdir, t.keep_checkpoints)
  progress = Progress()
  if manager.latest_step() is not None:
    if not workdir_lib.rate_in_optimizer(manager):
      raise ValueError(f"{workdir} holds checkpoints saved before the learning rate moved into the optimizer "
                       "state, so training cannot resume them. Their parameters still load for 'sppnet evaluate', "
                       "detection and transfer; to train on, give a new --workdir.")
    state, restored = restore_checkpoint(manager, state)
    progress = Progress.from_record(restored)
    logging.info("resumed from %s at epoch %d, step %d", workdir, progress.epoch, progress.step)
  writer = MetricWriter(workdir, drop_after_step=progress.global_step) if _is_primary() else _NoWriter()
  curve_source = evaluate.first_examples(eval_source, config.eval.get("curve_examples") or len(eval_source))
  fit_source = evaluate.train_subset(train_source, config)

  replicated = NamedSharding(mesh, P())
  state = _replicated(state, mesh)
  steps, names = compiled_steps(config, model, tx, state, mesh, mean)
  if not padded:
    steps.precompile(sizes[progress.epoch:] or sizes[-1:])
  _barrier("compiled")
  run = _Run(config, workdir, model, train_source, eval_source, curve_source, fit_source, mean, shapes, sizes, mesh,
             steps,
             names, manager, writer, jax.jit(lambda: jax.random.key(t.seed), out_shardings=replicated)(), preemption,
             jax.jit(lambda opt_state, error: state_lib.observe_validation(config, opt_state, error)))
  return run, state, progress


def _validate(run: _Run, state: TrainState, progress: Progress) -> tuple[TrainState, Progress]:
  """The crop-view validation error on the curve examples, logged and shown to the plateau rule,
  with the same view's error on the fixed training subset beside it (``train_subset/*``)."""
  run.manager.wait_until_finished()  # the epoch's checkpoint is complete before anything can fail
  params = _local(state.params)
  score = lambda source: evaluate.evaluate_params(run.model, params, source, view="crop", config=run.config,
                                                  mean=run.mean)
  with pipeline.eval_workers(worker_count(run.config)):
    val = score(run.curve_source)
    fit = score(run.fit_source) if run.fit_source is not None else {}
  run.writer.write(progress.global_step, {f"val/{k}": v for k, v in _scalars(val).items()}
                   | {f"train_subset/{k}": v for k, v in _scalars(fit).items()} | {"epoch": progress.epoch})
  opt_state = run.observe(_local(state.opt_state), np.float32(val["top1_error"]))
  opt_state = _replicated(opt_state, run.mesh)
  return state.replace(opt_state=opt_state), dataclasses.replace(progress, pending_eval=False)


def _stop(run: _Run, progress: Progress) -> dict:
  run.manager.wait_until_finished()
  run.writer.close()
  logging.warning("stop requested: saved step %d to %s.", progress.global_step, run.workdir)
  return {"preempted": True, "global_step": progress.global_step}


def _non_finite(run: _Run, window: tuple[int, int], epoch: int, shape, lr: float) -> NonFiniteError:
  run.manager.wait_until_finished()  # a save still in flight is the last good checkpoint
  last = run.manager.latest_step()
  if _is_primary():
    run_files.write_json(run.workdir / NONFINITE_FILE, {"last_checkpoint": last, "global_steps": list(window),
                                                        "epoch": epoch, "lr": lr})
  saved = (f"The last good checkpoint in {run.workdir / 'checkpoints'} is step {last}; rerun to resume from it, with "
           f"a lower {RATE_FIELD} (this workdir takes that change until it saves a new checkpoint) or after checking "
           "the input data." if last is not None else
           f"No checkpoint was saved yet, so the workdir takes a changed config: rerun with a lower {RATE_FIELD} or "
           "after checking the input data.")
  return NonFiniteError(
      f"non-finite loss or gradient between global steps {window[0]} and {window[1]} (epoch {epoch}, input "
      f"{tuple(shape)}, lr {lr:g}); the update was skipped. {saved}")


def _train_epoch(run: _Run, state: TrainState, progress: Progress, bar) -> tuple[TrainState, Progress, bool, bool]:
  """Trains the rest of ``progress.epoch``; (state, progress, stop, finished). ``stop``: the
  processes agreed to stop after the last step; when not ``finished`` (inside the epoch) that
  step is saved, at the epoch's end :func:`_end_epoch` saves it."""
  t = run.config.train
  epoch = progress.epoch
  data = _Epoch(run.config, run.train_source, run.mean, epoch, run.sizes[epoch], progress.step, run.shapes)
  skipped = ((lambda: {"data/skipped_images": run.train_source.num_skipped()})
             if hasattr(run.train_source, "num_skipped") else dict)
  finite, window_start, tick = jnp.bool_(True), progress.global_step, time.perf_counter()
  canvases = uses_device_augment(run.config) and t.mode != "full"  # the input size is not the batch's
  for batch in data.batches:
    inputs = global_batch(batch, run.mesh, run.names)
    hw = (run.sizes[epoch],) * 2 if canvases else inputs[0].shape[1:3]
    state, metrics = run.steps[hw](state, *inputs, run.base_key)
    finite = finite & metrics["finite"]
    progress = dataclasses.replace(progress, step=progress.step + 1, global_step=progress.global_step + 1)
    at_end = progress.step == data.num_steps
    logged = progress.global_step % t.log_every_steps == 0 or at_end
    # One process checks its flag after every step; several agree where the host waits for the
    # step anyway (the logged steps and the epoch's end), so agreeing never stalls dispatch.
    stop = run.preemption.agreed() if logged or jax.process_count() == 1 else False
    if logged or stop:
      h, w = hw
      if not bool(finite):
        raise _non_finite(run, (window_start, progress.global_step), epoch, (h, w), float(metrics["lr"]))
      elapsed = time.perf_counter() - tick
      images_per_s = (progress.global_step - window_start) * t.batch_size / max(elapsed, 1e-9)
      run.writer.write(progress.global_step, {
          "train/loss": float(metrics["loss"]), "train/top1_error": float(metrics["top1_error"]),
          "train/grad_norm": float(metrics["grad_norm"]), "train/lr": float(metrics["lr"]), "train/input_h": h,
          "train/input_w": w, "train/images_per_s": images_per_s, "train/compiled_shapes": len(run.steps),
          "epoch": epoch + progress.step / max(data.num_steps, 1)} | skipped())
      bar.set_postfix(step=progress.global_step, input=f"{h}x{w}", loss=f"{float(metrics['loss']):.3f}",
                      img_s=f"{images_per_s:.0f}")
      window_start, tick, finite = progress.global_step, time.perf_counter(), jnp.bool_(True)
    if at_end:
      return state, progress, stop, True
    if progress.global_step % t.checkpoint_every_steps == 0 or stop:
      save_checkpoint(run.manager, state, progress.record())
    if stop:
      return state, progress, True, False
  return state, progress, False, True


def _end_epoch(run: _Run, state: TrainState, progress: Progress, stop: bool) -> tuple[Progress, bool]:
  """Moves ``progress`` past a finished epoch and saves it when due; (progress, validate now).

  An epoch that is validated is saved first, so a failing evaluation never loses it; other
  epoch ends are saved only on the checkpoint interval or a stop (resuming mid-epoch replays
  the same batches).
  """
  t = run.config.train
  due = (progress.epoch + 1) % t.get("eval_every_epochs", 1) == 0 or progress.epoch + 1 == len(run.sizes)
  progress = dataclasses.replace(progress, epoch=progress.epoch + 1, step=0, pending_eval=due)
  if due or stop or progress.global_step % t.checkpoint_every_steps == 0:
    save_checkpoint(run.manager, state, progress.record())
  return progress, due


def _final_evaluation(run: _Run, state: TrainState, progress: Progress) -> dict:
  params = _local(state.params)
  with pipeline.eval_workers(worker_count(run.config)):
    return _evaluate_and_close(run, params, progress)


def _evaluate_and_close(run: _Run, params, progress: Progress) -> dict:
  # Every process scores its share of the examples; process 0 writes the results.
  results = evaluate.evaluate_run(run.model, params, run.eval_source, config=run.config, mean=run.mean,
                                  workdir=run.workdir, write=_is_primary(), train_source=run.train_source)
  final = {f"final/{v}/{k}": x for v, r in evaluate.view_results(results).items() for k, x in _scalars(r).items()}
  final |= {f"final/train_subset/{v}/{k}": x for v, r in results.get(evaluate.TRAIN_SUBSET, {}).items()
            for k, x in _scalars(r).items()}
  run.writer.write(progress.global_step, final)
  run.writer.close()
  return results


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path, preemption: Preemption, extend: bool,
         held: contextlib.ExitStack) -> dict:
  run, state, progress = _set_up(config, workdir, preemption, extend, held)
  t = config.train
  if progress.pending_eval:  # the last run saved an epoch and stopped before its validation
    state, progress = _validate(run, state, progress)
  try:
    with tqdm.tqdm(total=t.num_epochs, initial=progress.epoch, unit="epoch",
                   disable=not t.progress_bar or not _is_primary(), dynamic_ncols=True) as bar:
      while progress.epoch < t.num_epochs:
        state, progress, stop, finished = _train_epoch(run, state, progress, bar)
        if not finished:  # stopped inside the epoch, saved
          return _stop(run, progress)
        progress, due = _end_epoch(run, state, progress, stop)
        bar.update(1)
        if stop:
          return _stop(run, progress)
        if due:
          state, progress = _validate(run, state, progress)
  finally:  # a save still in flight completes even when an error stops the run
    run.manager.wait_until_finished()
  return _final_evaluation(run, state, progress)
