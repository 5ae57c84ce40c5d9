"""The network's jitted functions compile with XLA's own convolutions, not YNNPACK fusions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sppnet_jax import compiler, configs, models, train
from sppnet_jax.state import init_state, make_optimizer, make_train_step


def _conv_weight_grad(x, w):
  def loss(w):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.square(y))

  return jax.grad(loss)(w)


def test_network_jit_gives_xla_default_values_without_ynnpack():
  """A 3×3 conv's weight gradient: a YNNPACK fusion under XLA's defaults, an XLA convolution under the
  project's options, the same values either way."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 16)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 16, 32)), jnp.float32)
  default = jax.jit(_conv_weight_grad).lower(x, w).compile()
  ours = compiler.jit(_conv_weight_grad).lower(x, w).compile()
  assert "ynn_fusion" in default.as_text()
  assert "ynn_fusion" not in ours.as_text() and "convolution(" in ours.as_text()
  np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(default(x, w)), rtol=1e-4, atol=1e-3)


def _copied_state(hlo_text: str) -> list[str]:
  """The entry computation's copies of the (donated) training state."""
  entry = hlo_text[hlo_text.index("ENTRY"):]
  return [line for line in entry.splitlines() if " copy(%state_" in line]


def test_training_step_compiles_without_ynnpack_fusions_or_state_copies():
  """The compiled training step (``train.CompiledSteps``) of a small ZF-5: XLA's defaults would put
  YNNPACK fusions in it and copy the donated parameters before updating them; the project's
  options leave neither."""
  model = models.create_model("zf5", num_classes=4, width=0.0625, fc_width=16)
  tx = make_optimizer(configs.synthetic("single"), [4])
  state = init_state(model, tx, 64, seed=0)
  step = make_train_step(model, tx)
  specs = lambda hw: (jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32))
  default = jax.jit(step, donate_argnums=0).lower(state, *specs((64, 64)), jax.random.key(0)).compile().as_text()
  assert "ynn_fusion" in default and any("params" in line for line in _copied_state(default))
  ours = train.CompiledSteps(lambda hw: step, specs, state, Mesh(jax.devices()[:1], ("data",)))[(64, 64)].as_text()
  assert "ynn_fusion" not in ours and "convolution(" in ours
  assert _copied_state(ours) == []
