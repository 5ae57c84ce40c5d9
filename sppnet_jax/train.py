"""Training: single-size, multi-size (alternating per epoch) and random-size SPP-net training.

One parameter pytree; one jitted step per input size, compiled up front (``compile_steps``),
so a whole run compiles exactly once per size. Data-parallel over all devices through a
``Mesh`` with a ``'data'`` axis, with the train state donated. The run lives in its workdir:
``config.json``, ``metrics.jsonl``, TensorBoard events under ``tensorboard/``, orbax
checkpoints under ``checkpoints/`` (holding the train state and the position in the data and
size schedule) and ``mean.npy``. Calling ``train_and_evaluate`` again on the same workdir
resumes where the last checkpoint left off and replays exactly the batches an uninterrupted
run would have seen.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sppnet_jax import evaluate, models
from sppnet_jax.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from sppnet_jax.data import augment, pipeline, sources
from sppnet_jax.metrics_io import MetricWriter

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN or inf; the workdir keeps the last good checkpoint."""


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models.SPPNet:
  m = config.model
  return models.create_model(m.name, num_classes=num_classes, spp=m.spp, levels=tuple(m.levels), width=m.width,
                             depth=m.get("depth"), fc_width=m.fc_width, dropout=m.dropout,
                             initializer=m.initializer, dtype=m.dtype)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Weight decay on kernels (not biases) added to the gradient, then the update direction.

  ``train.optimizer='sgd'`` (the paper's): heavy-ball momentum,
  ``v = momentum * v + (g + wd * w)``, ``w -= lr * v``. ``'adam'``: Adam's scaled direction
  (used by the slim CPU experiments, which must leave the initial plateau within minutes).
  The learning rate is applied in the step (it is an argument, so changing it never
  recompiles).
  """
  kernels = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)
  decay = optax.masked(optax.add_decayed_weights(config.train.weight_decay), kernels)
  if config.train.optimizer == "sgd":
    return optax.chain(decay, optax.trace(decay=config.train.momentum))
  if config.train.optimizer == "adam":
    return optax.chain(decay, optax.scale_by_adam())
  raise ValueError(f"train.optimizer must be 'sgd' or 'adam'; got {config.train.optimizer!r}.")


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_size: int, seed: int) -> TrainState:
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init(jax.random.key(seed), images)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def cross_entropy(logits: Array, labels: Array) -> Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: nn.Module, tx: optax.GradientTransformation) -> Callable:
  """(state, images, labels, lr, key) -> (state, metrics). A non-finite step leaves the state unchanged."""

  def train_step(state: TrainState, images: Array, labels: Array, lr: Array, key: Array):
    dropout_key = jax.random.fold_in(key, state.step)

    def loss_fn(params):
      logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_key})
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


def size_schedule(config: ml_collections.ConfigDict) -> list[int]:
  """The input size of every epoch: 'single' crop size; 'multi' alternates crop and second size
  (starting with the crop size); 'random' draws a size from ``random_range`` per epoch."""
  t, crop = config.train, config.data.crop_size
  if t.mode == "single":
    return [crop] * t.num_epochs
  if t.mode == "multi":
    sizes = (crop, config.data.second_size)
    return [sizes[e % 2] for e in range(t.num_epochs)]
  if t.mode == "random":
    lo, hi = t.random_range
    rng = np.random.default_rng([t.seed, 7])
    return [int(s) for s in rng.integers(lo, hi + 1, size=t.num_epochs)]
  raise ValueError(f"train.mode must be 'single', 'multi' or 'random'; got {t.mode!r}.")


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


def compile_steps(train_step: Callable, state: TrainState, sizes: list[int], batch_size: int,
                  mesh: Mesh) -> dict[int, Callable]:
  """One ahead-of-time compiled step per distinct input size."""
  replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  jitted = jax.jit(train_step, in_shardings=(replicated, data, data, replicated, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)
  abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  compiled = {}
  for size in sorted(set(sizes)):
    images = jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    compiled[size] = jitted.lower(abstract_state, images, labels, scalar, key).compile()
  return compiled


def global_batch(batch: dict, mesh: Mesh) -> tuple[Array, Array]:
  """Places this process's slice of a host batch on the mesh (every process builds the same global batch)."""
  sharding = NamedSharding(mesh, P("data"))
  n, i = jax.process_count(), jax.process_index()
  arrays = []
  for name in ("image", "label"):
    x = np.asarray(batch[name])
    local = x.shape[0] // n
    arrays.append(jax.make_array_from_process_local_data(sharding, x[i * local:(i + 1) * local], x.shape))
  return arrays[0], arrays[1]


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after every step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, no preemption support
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def load_mean(config: ml_collections.ConfigDict, source, workdir: pathlib.Path) -> np.ndarray | str:
  """The input normalisation of ``config.data.normalize``: the mean image at the crop size
  ('mean_image', estimated once and kept in the workdir) or ``augment.PER_IMAGE``."""
  kind = config.data.get("normalize", "mean_image")
  if kind == "per_image":
    return augment.PER_IMAGE
  if kind != "mean_image":
    raise ValueError(f"data.normalize must be 'mean_image' (the paper) or 'per_image'; got {kind!r}.")
  path = workdir / "mean.npy"
  if path.exists():
    return np.load(path)
  if source is None:
    raise FileNotFoundError(f"{path} is missing: the run's mean image is needed to normalise its inputs.")
  mean = pipeline.estimate_mean_image(source, n=config.data.mean_samples, crop_size=config.data.crop_size,
                                      short_side=config.data.short_side)
  np.save(path, mean.astype(np.float32))
  return mean


def _write_config(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  path = workdir / "config.json"
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if path.exists():
    old, new = json.loads(path.read_text()), json.loads(text)
    for cfg in (old, new):
      cfg["train"].pop("progress_bar", None)
    changed = [k for k in ("model", "data", "train", "variant") if old.get(k) != new.get(k)]
    if changed:
      raise ValueError(f"{workdir} holds a run whose {', '.join(changed)} config differs from this one ({path}). "
                       "Resume it with the same config, or give a new --workdir.")
  path.write_text(text)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates the result.

  Returns the final evaluation metrics (also written to ``workdir/eval.json``), or
  ``{'preempted': True, ...}`` when SIGTERM stopped the run after saving.
  """
  with _Preemption() as preemption:  # installed first: a SIGTERM during set-up still stops cleanly
    return _run(config, pathlib.Path(workdir), preemption)


def config_source(data: ml_collections.ConfigDict, which: str):
  """The ``which`` ('train' or 'eval') split of the dataset named by a config's ``data`` fields."""
  sides = data.get("synthetic_short_side")
  return sources.get_source(data.name, data[f"{which}_split"], data_dir=data.get("data_dir"),
                            num_examples=data.get(f"num_{which}"), seed=data.seed,
                            synthetic_short_side=tuple(sides) if sides else None)


def _run(config: ml_collections.ConfigDict, workdir: pathlib.Path, preemption: _Preemption) -> dict:
  workdir.mkdir(parents=True, exist_ok=True)
  _write_config(config, workdir)
  t, d = config.train, config.data

  train_source = config_source(d, "train")
  eval_source = config_source(d, "eval")
  num_classes = sources.num_classes(d.name)
  model = build_model(config, num_classes)
  tx = make_optimizer(config)
  mesh = make_mesh()
  if t.batch_size % mesh.size:
    raise ValueError(f"train.batch_size={t.batch_size} must be a multiple of the {mesh.size} devices.")
  mean = load_mean(config, train_source, workdir)

  sizes = size_schedule(config)
  steps_per_epoch = pipeline.steps_per_epoch(train_source, t.batch_size)
  if steps_per_epoch < 1:
    raise ValueError(f"the training split has fewer than batch_size={t.batch_size} examples.")
  state = init_state(model, tx, d.crop_size, t.seed)
  manager = checkpoint_manager(workdir, t.keep_checkpoints)
  progress = {"epoch": 0, "step": 0, "global_step": 0, "plateau_drops": 0, "best_error": None, "bad_epochs": 0}
  if manager.latest_step() is not None:
    state, progress = restore_checkpoint(manager, state)
    logging.info("resumed from %s at epoch %d, step %d", workdir, progress["epoch"], progress["step"])
  writer = MetricWriter(workdir, drop_after_step=progress["global_step"])

  replicated = NamedSharding(mesh, P())
  state = jax.device_put(state, replicated)
  steps = compile_steps(make_train_step(model, tx), state, sizes[progress["epoch"]:] or sizes[-1:], t.batch_size, mesh)
  base_key = jax.device_put(jax.random.key(t.seed), replicated)
  total_steps = t.num_epochs * steps_per_epoch

  with tqdm.tqdm(total=total_steps, initial=progress["global_step"], unit="step", disable=not t.progress_bar,
                 dynamic_ncols=True) as bar:
    while progress["epoch"] < t.num_epochs:
      epoch, size = progress["epoch"], sizes[progress["epoch"]]
      lr = jnp.float32(learning_rate(config, epoch, progress["plateau_drops"]))
      batches = pipeline.train_batches(
          train_source, batch_size=t.batch_size, seed=t.seed, epoch=epoch, crop_size=d.crop_size,
          resize_to=None if size == d.crop_size else size, short_side=d.short_side, positions=d.positions,
          pca_std=d.pca_std, mean=mean, start_step=progress["step"])
      finite, window_start, tick = jnp.bool_(True), progress["global_step"], time.perf_counter()
      for batch in batches:
        images, labels = global_batch(batch, mesh)
        state, metrics = steps[size](state, images, labels, lr, base_key)
        finite = finite & metrics["finite"]
        progress["step"] += 1
        progress["global_step"] += 1
        at_end = progress["step"] == steps_per_epoch
        if progress["global_step"] % t.log_every_steps == 0 or at_end or preemption.requested:
          if not bool(finite):
            raise NonFiniteError(
                f"non-finite loss or gradient between global steps {window_start} and {progress['global_step']} "
                f"(epoch {epoch}, input {size}, lr {float(lr):g}); the update was skipped and nothing was saved. "
                f"The last good checkpoint in {workdir / 'checkpoints'} is step {manager.latest_step()}. "
                "Lower train.learning_rate or check the input data, then rerun to resume.")
          elapsed = time.perf_counter() - tick
          images_per_s = (progress["global_step"] - window_start) * t.batch_size / max(elapsed, 1e-9)
          writer.write(progress["global_step"], {
              "train/loss": float(metrics["loss"]), "train/top1_error": float(metrics["top1_error"]),
              "train/grad_norm": float(metrics["grad_norm"]), "train/lr": float(lr), "train/input_size": size,
              "train/images_per_s": images_per_s, "epoch": epoch + progress["step"] / steps_per_epoch})
          bar.set_postfix(epoch=epoch, size=size, loss=f"{float(metrics['loss']):.3f}", img_s=f"{images_per_s:.0f}")
          window_start, tick, finite = progress["global_step"], time.perf_counter(), jnp.bool_(True)
        bar.update(1)
        if at_end:
          break
        if progress["global_step"] % t.checkpoint_every_steps == 0 or preemption.requested:
          save_checkpoint(manager, state, progress)
        if preemption.requested:
          manager.wait_until_finished()
          writer.close()
          logging.warning("SIGTERM: saved step %d to %s and stopped.", progress["global_step"], workdir)
          return {"preempted": True, "global_step": progress["global_step"]}

      if (epoch + 1) % t.get("eval_every_epochs", 1) == 0 or epoch + 1 == len(sizes):
        val = evaluate.evaluate_params(model, state.params, eval_source, view="crop", config=config, mean=mean)
        writer.write(progress["global_step"], {f"val/{k}": v for k, v in val.items()} | {"epoch": epoch + 1})
        _update_plateau(config, progress, val["top1_error"])
      progress.update(epoch=epoch + 1, step=0)
      save_checkpoint(manager, state, progress)
      if preemption.requested:
        manager.wait_until_finished()
        writer.close()
        return {"preempted": True, "global_step": progress["global_step"]}

  manager.wait_until_finished()
  results = {view: evaluate.evaluate_params(model, state.params, eval_source, view=view, config=config, mean=mean)
             for view in config.eval.views}
  (workdir / "eval.json").write_text(json.dumps(results, indent=2))
  writer.write(progress["global_step"], {f"final/{v}/{k}": x for v, r in results.items() for k, x in r.items()})
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


def load_run(workdir: str | os.PathLike):
  """(config, model, params, mean) of the latest checkpoint in a training workdir."""
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json); train into it with 'sppnet train'.")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  d = config.data
  num_classes = sources.num_classes(d.name)
  model = build_model(config, num_classes)
  manager = checkpoint_manager(workdir, config.train.keep_checkpoints)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint yet.")
  tx = make_optimizer(config)
  state = jax.eval_shape(lambda: init_state(model, tx, d.crop_size, 0))
  state, _ = restore_checkpoint(manager, state)
  return config, model, state.params, load_mean(config, None, workdir)

