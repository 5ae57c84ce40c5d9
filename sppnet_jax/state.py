"""The train state, the model a config names, and its optimizer: what both training and
reading a trained run (:func:`sppnet_jax.workdir.load_run`) need."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sppnet_jax import models

Array = jax.Array


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
