"""The train state, the model a config names, its optimizer with the learning-rate rule inside
it, and the training step: what classification training, detection fine-tuning and reading a
trained run (:func:`sppnet_jax.workdir.load_run`) share.

The optimizer (:func:`make_optimizer`) is one optax chain: weight decay on kernels, the update
direction (SGD momentum or Adam), the learning rate of the step-drop schedule
(``optax.inject_hyperparams`` over a ``piecewise_constant_schedule`` of the step count), and the
plateau rule (``optax.contrib.reduce_on_plateau``) that scales it. The rate lives in the
optimizer state as arrays, so a drop never recompiles the step; the plateau rule's state
(best error, epochs without improvement, scale) is part of the train state and so of every
checkpoint. The plateau rule watches the validation error, not the loss: a training step only
applies its scale (:func:`plateau_scaled`), and :func:`observe_validation` feeds it one error
per validation.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sppnet_jax import models

Array = jax.Array

LR_DROP_FACTOR = 0.1
# Positions in the optimizer chain of :func:`make_optimizer`.
_RATE, _PLATEAU = 2, 3


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models.SPPNet:
  m = config.model
  return models.create_model(m.name, num_classes=num_classes, spp=m.spp, levels=tuple(m.levels), width=m.width,
                             depth=m.get("depth"), fc_width=m.fc_width, dropout=m.dropout,
                             initializer=m.initializer, dtype=m.dtype, channels=m.get("channels"))


def lr_schedule(config: ml_collections.ConfigDict, epoch_steps: Sequence[int]) -> optax.Schedule:
  """The learning rate as a function of the optimizer's step count.

  ``train.lr_schedule='steps'``: ``learning_rate`` divided by 10 at the first step of every
  epoch in ``lr_drop_epochs`` (``epoch_steps[e]`` is the number of steps of epoch ``e``; 'full'
  mode epochs differ in length). ``'plateau'``: constant here; :func:`observe_validation`
  divides it.
  """
  t = config.train
  if t.lr_schedule == "plateau":
    return optax.constant_schedule(float(t.learning_rate))
  if t.lr_schedule != "steps":
    raise ValueError(f"train.lr_schedule must be 'steps' or 'plateau'; got {t.lr_schedule!r}.")
  starts = [0]
  for n in epoch_steps:
    starts.append(starts[-1] + int(n))
  boundaries: dict[int, float] = {}
  for e in sorted(int(e) for e in t.lr_drop_epochs):
    if e < len(starts):
      boundaries[starts[e]] = boundaries.get(starts[e], 1.0) * LR_DROP_FACTOR
  return optax.piecewise_constant_schedule(float(t.learning_rate), boundaries)


def plateau_scaled(rule: optax.GradientTransformationExtraArgs) -> optax.GradientTransformationExtraArgs:
  """``rule`` (``optax.contrib.reduce_on_plateau``) applied in two roles: called without
  ``value`` (a training step) it only scales the updates by the current scale and keeps its
  state; called with ``value`` (a validation error) it runs the rule."""

  def update(updates, state, params=None, *, value=None, **extra):
    if value is None:
      return jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates), state
    return rule.update(updates, state, params, value=value, **extra)

  return optax.GradientTransformationExtraArgs(rule.init, update)


def plateau_rule(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """Divide by 10 after ``plateau_patience`` validations without an improvement of more than
  ``plateau_min_delta``, at most ``max_lr_drops`` times (never, under the 'steps' schedule)."""
  t = config.train
  drops = int(t.max_lr_drops) if t.lr_schedule == "plateau" else 0
  delta = float(t.plateau_min_delta)
  return optax.contrib.reduce_on_plateau(
      factor=LR_DROP_FACTOR, patience=int(t.plateau_patience), atol=delta, rtol=0.0 if delta > 0 else 1e-12,
      min_scale=LR_DROP_FACTOR**drops if drops else 1.0)


def kernel_weight_decay(weight_decay: float) -> optax.GradientTransformation:
  """L2 weight decay on the conv and dense kernels only (no biases)."""
  kernels = lambda params: jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)
  return optax.masked(optax.add_decayed_weights(float(weight_decay)), kernels)


def _direction(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  t = config.train
  if t.optimizer == "sgd":
    return optax.trace(decay=t.momentum)
  if t.optimizer == "adam":
    return optax.scale_by_adam()
  raise ValueError(f"train.optimizer must be 'sgd' or 'adam'; got {t.optimizer!r}.")


def legacy_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of runs saved before the rate moved into optax (weight decay and direction only):
  its state's structure, to read the parameters of such a run."""
  return optax.chain(kernel_weight_decay(config.train.weight_decay), _direction(config))


def chain_optimizer(weight_decay: float, direction: optax.GradientTransformation, schedule: optax.Schedule,
                    plateau: optax.GradientTransformationExtraArgs | None = None
                    ) -> optax.GradientTransformationExtraArgs:
  """The project's optimizer layout, shared by classification training and detection fine-tuning:
  weight decay on kernels, ``direction``, the rate of ``schedule`` (in the state, so a drop never
  recompiles), then the plateau rule's scale (``plateau``; None: a rule that never drops)."""
  rate = optax.inject_hyperparams(optax.scale_by_learning_rate)(learning_rate=schedule)
  plateau = plateau if plateau is not None else optax.contrib.reduce_on_plateau(min_scale=1.0)
  return optax.chain(kernel_weight_decay(weight_decay), direction, rate, plateau_scaled(plateau))


def make_optimizer(config: ml_collections.ConfigDict,
                   epoch_steps: Sequence[int] | None = None) -> optax.GradientTransformationExtraArgs:
  """Weight decay on kernels (not biases) added to the gradient, the update direction, then the
  learning rate (see the module docstring); the step applies ``params + updates``.

  ``train.optimizer='sgd'`` (the paper's): heavy-ball momentum,
  ``v = momentum * v + (g + wd * w)``, ``w -= lr * v``. ``'adam'``: Adam's scaled direction
  (used by the slim CPU experiments, which must leave the initial plateau within minutes).
  ``epoch_steps``: steps of each epoch, for the step-drop boundaries (default: one step per
  epoch, enough to build the state's structure).
  """
  t = config.train
  schedule = lr_schedule(config, [1] * int(t.num_epochs) if epoch_steps is None else epoch_steps)
  return chain_optimizer(t.weight_decay, _direction(config), schedule, plateau_rule(config))


def current_learning_rate(opt_state) -> Array:
  """The rate the last step applied (before any step: the first step's): schedule times plateau scale."""
  return opt_state[_RATE].hyperparams["learning_rate"] * opt_state[_PLATEAU].scale


def lr_drops(opt_state) -> Array:
  """How many times the plateau rule has divided the rate."""
  return jnp.round(-jnp.log10(opt_state[_PLATEAU].scale)).astype(jnp.int32)


def observe_validation(config: ml_collections.ConfigDict, opt_state, error) -> Any:
  """``opt_state`` after the plateau rule has seen one validation error (the rule's state only)."""
  rule = plateau_rule(config)
  _, plateau = rule.update(jnp.zeros(()), opt_state[_PLATEAU], value=jnp.asarray(error, jnp.float32))
  return (*opt_state[:_PLATEAU], plateau, *opt_state[_PLATEAU + 1:])


def init_state(model: nn.Module, tx: optax.GradientTransformation, image_size: int, seed: int) -> TrainState:
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = model.init(jax.random.key(seed), images)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def cross_entropy(logits: Array, labels: Array) -> Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, padded: bool = False) -> Callable:
  """(state, images, labels, key) -> (state, metrics). A non-finite step leaves the state unchanged.

  The learning rate is part of ``tx`` and its state (:func:`make_optimizer`), so a drop
  changes arrays, never the compiled step. ``padded=True`` (whole-image training): (state,
  images, valid_hw, labels, key), each zero-padded image taken at its own size ``valid_hw``
  (``SPPNet.padded``).
  """

  def train_step(state: TrainState, images: Array, *args):
    valid_hw, (labels, key) = (args[0], args[1:]) if padded else (None, args)
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
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                           opt_state=keep(opt_state, state.opt_state))
    metrics = {"loss": loss, "top1_error": jnp.mean(jnp.argmax(logits, -1) != labels), "grad_norm": grad_norm,
               "finite": finite, "lr": current_learning_rate(opt_state)}
    return new_state, metrics

  return train_step
