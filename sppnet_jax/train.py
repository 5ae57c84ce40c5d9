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
import optax
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sppnet_jax import evaluate, models
from sppnet_jax import workdir as workdir_lib
from sppnet_jax.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from sppnet_jax.config_checks import validate_config
from sppnet_jax.data import augment, pipeline, sources
from sppnet_jax.metrics_io import MetricWriter
from sppnet_jax.state import TrainState, build_model, init_state, make_optimizer
from sppnet_jax.workdir import config_source, load_run  # noqa: F401  (load_run: detection still reads it from here)

Array = jax.Array


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN or inf; the workdir keeps the last good checkpoint."""


def cross_entropy(logits: Array, labels: Array) -> Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, padded: bool = False) -> Callable:
  """(state, images, labels, lr, key) -> (state, metrics). A non-finite step leaves the state unchanged.

  ``padded=True`` (whole-image training): (state, images, valid_hw, labels, lr, key), each
  zero-padded image taken at its own size ``valid_hw`` (``SPPNet.padded``).
  """

  def train_step(state: TrainState, images: Array, *args):
    valid_hw, (labels, lr, key) = (args[0], args[1:]) if padded else (None, args)
    dropout_key = jax.random.fold_in(key, state.step)

    def loss_fn(params):
      variables, rngs = {"params": params}, {"dropout": dropout_key}
      if padded:
        logits = model.apply(variables, images, valid_hw, train=True, rngs=rngs, method=models.SPPNet.padded)
      else:
        logits = model.apply(variables, images, train=True, rngs=rngs)
      return cross_entropy(logits, labels), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "top1_error": jnp.mean(jnp.argmax(logits, -1) != labels), "grad_norm": grad_norm,
               "finite": finite}
    return new_state, metrics

  return train_step


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


def learning_rate(config: ml_collections.ConfigDict, epoch: int, plateau_drops: int) -> float:
  t = config.train
  if t.lr_schedule == "steps":
    drops = sum(epoch >= e for e in t.lr_drop_epochs)
  elif t.lr_schedule == "plateau":
    if t.get("eval_every_epochs", 1) != 1:
      raise ValueError("train.lr_schedule='plateau' watches the validation error after every epoch; "
                       f"set train.eval_every_epochs=1 (got {t.eval_every_epochs}).")
    drops = plateau_drops
  else:
    raise ValueError(f"train.lr_schedule must be 'steps' or 'plateau'; got {t.lr_schedule!r}.")
  return t.learning_rate * 0.1**drops


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


class CompiledSteps:
  """The train step compiled ahead of time once per input shape, on first use.

  ``steps[(h, w)]`` is the executable for (batch, h, w, 3) inputs; fixed-size modes compile
  every size of their schedule up front (``precompile``), 'full' mode compiles each bucket
  shape the first time a batch of that shape comes (``len(steps)`` is the compile count).
  """

  def __init__(self, train_step: Callable, state: TrainState, batch_size: int, mesh: Mesh, padded: bool = False):
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    inputs = (data, data, data) if padded else (data, data)
    self._jitted = jax.jit(train_step, in_shardings=(replicated, *inputs, replicated, replicated),
                           out_shardings=(replicated, replicated), donate_argnums=0)
    self._state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    self._batch_size, self._padded = batch_size, padded
    self._compiled: dict[tuple[int, int], Callable] = {}

  def __len__(self) -> int:
    return len(self._compiled)

  def __getitem__(self, shape: tuple[int, int]) -> Callable:
    shape = (int(shape[0]), int(shape[1]))
    if shape not in self._compiled:
      b = self._batch_size
      images = jax.ShapeDtypeStruct((b, *shape, 3), jnp.float32)
      labels = jax.ShapeDtypeStruct((b,), jnp.int32)
      extra = (jax.ShapeDtypeStruct((b, 2), jnp.int32),) if self._padded else ()
      scalar = jax.ShapeDtypeStruct((), jnp.float32)
      key = jax.eval_shape(lambda: jax.random.key(0))
      self._compiled[shape] = self._jitted.lower(self._state, images, *extra, labels, scalar, key).compile()
    return self._compiled[shape]

  def precompile(self, sizes: list[int]) -> "CompiledSteps":
    for size in sorted(set(sizes)):
      self[(size, size)]
    return self


def global_batch(batch: dict, mesh: Mesh, names: tuple[str, ...] = ("image", "label")) -> tuple[Array, ...]:
  """Places this process's slice of a host batch on the mesh (every process builds the same global batch)."""
  sharding = NamedSharding(mesh, P("data"))
  n, i = jax.process_count(), jax.process_index()
  arrays = []
  for name in names:
    x = np.asarray(batch[name])
    local = x.shape[0] // n
    arrays.append(jax.make_array_from_process_local_data(sharding, x[i * local:(i + 1) * local], x.shape))
  return tuple(arrays)


class _Preemption:
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a flag the loop checks after every step:
  the run saves its state and stops cleanly. A second Ctrl-C aborts at once."""

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


def load_mean(config: ml_collections.ConfigDict, source, workdir: pathlib.Path) -> np.ndarray | str:
  """The input normalisation of ``config.data.normalize``: the mean image at the crop size
  ('mean_image', estimated once and kept in the workdir) or ``augment.PER_IMAGE``."""
  path = workdir / "mean.npy"
  if config.data.get("normalize", "mean_image") != "mean_image" or path.exists() or source is None:
    return workdir_lib.load_mean_file(config, workdir)
  mean = pipeline.estimate_mean_image(source, n=config.data.mean_samples, crop_size=config.data.crop_size,
                                      short_side=config.data.short_side)
  np.save(path, mean.astype(np.float32))
  return mean


# Fields a workdir's config may differ in without refusal: logging, and what evaluation reads.
IGNORED_FIELDS = workdir_lib.LOGGING_FIELDS + ("eval", "paper")


def _extend_hint(changed: list[str]) -> str:
  if set(changed) <= set(workdir_lib.EXTENDABLE_FIELDS):
    return "To train the run further with a longer schedule, pass extend=True (sppnet train --extend)."
  return ""


def check_workdir_config(config: ml_collections.ConfigDict, workdir: pathlib.Path, extend: bool = False) -> None:
  """Refuses a config that differs from the run already in ``workdir``; writes nothing.

  A workdir with no checkpoint yet takes any config (a mistake before the first save never
  locks it). With checkpoints, only the logging and evaluation fields may differ, and with
  ``extend`` also ``train.num_epochs``, ``train.lr_drop_epochs`` and ``train.max_lr_drops``.
  """
  workdir_lib.check_config(config, workdir, ignore=_ignored_fields(extend), hint="" if extend else _extend_hint)


def _ignored_fields(extend: bool) -> tuple[str, ...]:
  return IGNORED_FIELDS + (workdir_lib.EXTENDABLE_FIELDS if extend else ())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, extend: bool = False) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates the result.

  Everything is checked before anything is written. ``extend=True`` lets a run in
  ``workdir`` continue under a longer schedule (see :func:`check_workdir_config`).
  Returns the final evaluation (also in ``workdir/eval.json``), or ``{'preempted': True, ...}``
  when SIGTERM or Ctrl-C stopped the run after saving.
  """
  with _Preemption() as preemption:  # installed first: a signal during set-up still stops cleanly
    return _run(config, pathlib.Path(workdir), preemption, extend)


def _scalars(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _Epoch:
  """One epoch's batches, their number, and how each batch reaches its compiled step."""

  def __init__(self, config, source, mean, epoch: int, size: int, start_step: int, shapes: np.ndarray | None):
    t, d = config.train, config.data
    if t.mode == "full":
      plan = pipeline.full_epoch_plan(shapes, batch_size=t.batch_size, seed=t.seed, epoch=epoch,
                                      short_range=tuple(t.full_short_range), bucket=t.full_bucket)
      self.num_steps = len(plan)
      self.batches = pipeline.full_train_batches(source, plan, seed=t.seed, epoch=epoch, pca_std=d.pca_std, mean=mean,
                                                 start_step=start_step)
      self.names = ("image", "valid_hw", "label")
    else:
      self.num_steps = pipeline.steps_per_epoch(source, t.batch_size)
      self.batches = pipeline.train_batches(
          source, batch_size=t.batch_size, seed=t.seed, epoch=epoch, crop_size=d.crop_size,
          resize_to=None if size == d.crop_size else size, short_side=d.short_side, positions=d.positions,
          pca_std=d.pca_std, mean=mean, start_step=start_step)
      self.names = ("image", "label")


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path, preemption: _Preemption, extend: bool) -> dict:
  t, d = config.train, config.data
  # Everything that can be refused is checked before anything is written.
  sizes = size_schedule(config)
  padded = t.mode == "full"
  if padded and not config.model.spp:
    raise ValueError("train.mode='full' feeds whole images of varying sizes, which needs an SPP network "
                     "(model.spp=True).")
  validate_config(config)
  train_source = config_source(d, "train")
  class_names = getattr(train_source, "class_names", None)
  eval_source = config_source(d, "eval", **({"class_names": class_names} if class_names else {}))
  num_classes = sources.num_classes(d.name, train_split=d.train_split, holdout_fraction=d.get("holdout_fraction"))
  model = build_model(config, num_classes)
  tx = make_optimizer(config)
  learning_rate(config, 0, 0)
  mesh = make_mesh()
  if t.batch_size % mesh.size:
    raise ValueError(f"train.batch_size={t.batch_size} must be a multiple of the {mesh.size} devices.")
  if pipeline.steps_per_epoch(train_source, t.batch_size) < 1:
    raise ValueError(f"the training split has fewer than batch_size={t.batch_size} examples.")
  shapes = pipeline.image_shapes(train_source) if padded else None
  if padded and not pipeline.full_epoch_plan(shapes, batch_size=t.batch_size, seed=t.seed, epoch=0,
                                             short_range=tuple(t.full_short_range), bucket=t.full_bucket):
    raise ValueError(f"train.mode='full': no shape bucket of {t.full_bucket} px fills a batch of {t.batch_size} in an "
                     "epoch, so there is nothing to train on; raise train.full_bucket, narrow "
                     "train.full_short_range or lower train.batch_size.")
  check_workdir_config(config, workdir, extend)

  workdir_lib.write_config(config, workdir, ignore=_ignored_fields(extend))
  if class_names:
    sources.save_class_names(workdir, class_names)
  mean = load_mean(config, train_source, workdir)
  state = init_state(model, tx, d.crop_size, t.seed)
  manager = checkpoint_manager(workdir, t.keep_checkpoints)
  progress = {"epoch": 0, "step": 0, "global_step": 0, "plateau_drops": 0, "best_error": None, "bad_epochs": 0,
              "pending_eval": False}
  if manager.latest_step() is not None:
    state, restored = restore_checkpoint(manager, state)
    progress.update(restored)
    logging.info("resumed from %s at epoch %d, step %d", workdir, progress["epoch"], progress["step"])
  writer = MetricWriter(workdir, drop_after_step=progress["global_step"])

  curve_source = evaluate.first_examples(eval_source, config.eval.get("curve_examples") or len(eval_source))

  def validate():
    manager.wait_until_finished()  # the epoch's checkpoint is complete before anything can fail
    val = evaluate.evaluate_params(model, state.params, curve_source, view="crop", config=config, mean=mean)
    writer.write(progress["global_step"], {f"val/{k}": v for k, v in _scalars(val).items()} |
                 {"epoch": progress["epoch"]})
    _update_plateau(config, progress, val["top1_error"])
    progress["pending_eval"] = False

  def skipped() -> dict:  # images that failed to decode and were stood in for (data.on_bad_image='skip')
    return {"data/skipped_images": train_source.num_skipped()} if hasattr(train_source, "num_skipped") else {}

  def stop() -> dict:
    manager.wait_until_finished()
    writer.close()
    logging.warning("stop requested: saved step %d to %s.", progress["global_step"], workdir)
    return {"preempted": True, "global_step": progress["global_step"]}

  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  steps = CompiledSteps(make_train_step(model, tx, padded), state, t.batch_size, mesh, padded)
  if not padded:
    steps.precompile(sizes[progress["epoch"]:] or sizes[-1:])
  base_key = jax.device_put(jax.random.key(t.seed), replicated)
  if progress["pending_eval"]:  # the last run saved an epoch and stopped before its validation
    validate()

  try:
    with tqdm.tqdm(total=t.num_epochs, initial=progress["epoch"], unit="epoch", disable=not t.progress_bar,
                   dynamic_ncols=True) as bar:
      while progress["epoch"] < t.num_epochs:
        epoch, size = progress["epoch"], sizes[progress["epoch"]]
        lr = jnp.float32(learning_rate(config, epoch, progress["plateau_drops"]))
        data = _Epoch(config, train_source, mean, epoch, size, progress["step"], shapes)
        finite, window_start, tick = jnp.bool_(True), progress["global_step"], time.perf_counter()
        for batch in data.batches:
          inputs = global_batch(batch, mesh, data.names)
          state, metrics = steps[inputs[0].shape[1:3]](state, *inputs, lr, base_key)
          finite = finite & metrics["finite"]
          progress["step"] += 1
          progress["global_step"] += 1
          at_end = progress["step"] == data.num_steps
          if progress["global_step"] % t.log_every_steps == 0 or at_end or preemption.requested:
            if not bool(finite):
              manager.wait_until_finished()  # a save still in flight is the last good checkpoint
              last = manager.latest_step()
              saved = (f"The last good checkpoint in {workdir / 'checkpoints'} is step {last}; rerun to resume from it."
                       if last is not None else "No checkpoint was saved yet, so the workdir takes a changed config.")
              raise NonFiniteError(
                  f"non-finite loss or gradient between global steps {window_start} and {progress['global_step']} "
                  f"(epoch {epoch}, input {tuple(inputs[0].shape[1:3])}, lr {float(lr):g}); the update was skipped. "
                  f"{saved} Lower train.learning_rate or check the input data.")
            elapsed = time.perf_counter() - tick
            images_per_s = (progress["global_step"] - window_start) * t.batch_size / max(elapsed, 1e-9)
            h, w = inputs[0].shape[1:3]
            writer.write(progress["global_step"], {
                "train/loss": float(metrics["loss"]), "train/top1_error": float(metrics["top1_error"]),
                "train/grad_norm": float(metrics["grad_norm"]), "train/lr": float(lr), "train/input_h": h,
                "train/input_w": w, "train/images_per_s": images_per_s, "train/compiled_shapes": len(steps),
                "epoch": epoch + progress["step"] / max(data.num_steps, 1)} | skipped())
            bar.set_postfix(step=progress["global_step"], input=f"{h}x{w}", loss=f"{float(metrics['loss']):.3f}",
                            img_s=f"{images_per_s:.0f}")
            window_start, tick, finite = progress["global_step"], time.perf_counter(), jnp.bool_(True)
          if at_end:
            break
          if progress["global_step"] % t.checkpoint_every_steps == 0 or preemption.requested:
            save_checkpoint(manager, state, progress)
          if preemption.requested:
            return stop()

        # An epoch that is validated is saved first, so a failing evaluation never loses it;
        # other epoch ends are saved only on the checkpoint interval (resuming mid-epoch replays
        # the same batches).
        due = (epoch + 1) % t.get("eval_every_epochs", 1) == 0 or epoch + 1 == len(sizes)
        progress.update(epoch=epoch + 1, step=0, pending_eval=due)
        if due or preemption.requested or progress["global_step"] % t.checkpoint_every_steps == 0:
          save_checkpoint(manager, state, progress)
        bar.update(1)
        if preemption.requested:
          return stop()
        if due:
          validate()

  finally:  # a save still in flight completes even when an error stops the run
    manager.wait_until_finished()
  results = evaluate.evaluate_run(model, state.params, eval_source, config=config, mean=mean, workdir=workdir)
  writer.write(progress["global_step"], {f"final/{v}/{k}": x for v, r in results.items() if v != "sweep"
                                         for k, x in _scalars(r).items()})
  writer.close()
  return results


def _update_plateau(config: ml_collections.ConfigDict, progress: dict, error: float) -> None:
  """Divides the learning rate by 10 (up to ``max_lr_drops`` times) when the val error stops improving."""
  t = config.train
  best = progress["best_error"]
  if best is None or error < best - t.plateau_min_delta:
    progress.update(best_error=error, bad_epochs=0)
    return
  progress["bad_epochs"] += 1
  if t.lr_schedule == "plateau" and progress["bad_epochs"] >= t.plateau_patience and progress["plateau_drops"] < t.max_lr_drops:
    progress.update(plateau_drops=progress["plateau_drops"] + 1, bad_epochs=0)
