"""The one layer-shape iterator (ops.geometry.layer_shapes) and its users."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sppnet_jax import models, ops
from sppnet_jax.bench import hardware


def test_layer_shapes_hand_computed():
  layers = [(7, 2, 1), (3, 2, 0), (5, 2, 2)]  # ZF-5's conv1, pool1, conv2
  # 224: (224 + 2 - 7) // 2 + 1 = 110, (110 - 3) // 2 + 1 = 54, (54 + 4 - 5) // 2 + 1 = 27.
  assert list(ops.layer_shapes(layers, 224)) == [110, 54, 27]
  out = [s.tolist() for s in ops.layer_shapes(layers, np.array((224, 180)))]
  assert out == [[110, 88], [54, 43], [27, 22]]
  assert ops.final_shape(layers, np.array([[224, 180], [100, 60]])).tolist() == [[27, 22], [12, 7]]
  assert ops.final_shape([], 5) == 5 and ops.output_size(layers, 224) == 27 and ops.output_size(layers, 8) < 1


def test_models_and_flop_counts_use_it():
  model = models.create_model("zf5")
  layers = models.spatial_layers(model.layers)
  h, w = (int(s) for s in ops.final_shape(layers, np.array((224, 260))))
  assert models.map_extent(model.layers, jnp.array([[224, 260]])).tolist() == [[h, w]]
  assert f"{h}x{w}x256" in models.summary(model, (224, 260))
  _, (fh, fw, channels) = hardware.conv_flops(model.layers, (224, 260))
  assert (fh, fw, channels) == (h, w, 256)
