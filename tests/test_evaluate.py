"""Evaluation views: hand-computed window grids, padded full-image pooling against unpadded
forwards, and every view end to end on a slim network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sppnet_jax import configs, evaluate, models, views
from sppnet_jax.compile_count import count_compiles
from sppnet_jax.data import sources


@pytest.fixture(scope="module")
def net():
  model = models.create_model("zf5", num_classes=12, width=0.125, fc_width=32)
  params = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
  return model, params


def test_window_grid_positions_and_duplicates():
  windows, keep = views.window_grid(np.array([[128, 200], [112, 150]]), 112)
  # 128 x 200: rows at 0, 8, 16 and columns at 0, 44, 88 -> 9 distinct windows.
  assert keep[0].all()
  np.testing.assert_array_equal(windows[0, 4], [44, 8, 155, 119])  # the centre window
  np.testing.assert_array_equal(windows[0, 8], [88, 16, 199, 127])  # bottom-right corner
  # 112 x 150: every row offset is 0, so only the 3 column positions differ.
  assert keep[1].sum() == 3
  np.testing.assert_array_equal(windows[1][keep[1]][:, 0], [0, 19, 38])


def test_flip_valid_mirrors_only_the_valid_columns():
  images = jnp.arange(2 * 1 * 5, dtype=jnp.float32).reshape(2, 1, 5, 1)
  flipped = views._flip_valid(images, jnp.array([[1, 3], [1, 5]]))
  np.testing.assert_array_equal(flipped[0, 0, :, 0], [2, 1, 0, 3, 4])
  np.testing.assert_array_equal(flipped[1, 0, :, 0], [9, 8, 7, 6, 5])


def test_padded_full_view_equals_each_image_alone(net):
  model, params = net
  rng = np.random.default_rng(0)
  sizes = [(64, 96), (80, 64)]
  batch = np.zeros((2, 96, 96, 3), np.float32)
  alone = []
  for i, (h, w) in enumerate(sizes):
    image = rng.normal(size=(h, w, 3)).astype(np.float32)
    batch[i, :h, :w] = image
    alone.append(jax.nn.softmax(model.apply({"params": params}, image[None]))[0])
  padded = views._full_probs(model, params, jnp.asarray(batch), jnp.asarray(sizes), 64)
  np.testing.assert_allclose(padded, np.stack(alone), rtol=1e-5, atol=1e-6)


def test_errors_are_counted_by_hand():
  probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]])
  predictions = views.Predictions(np.arange(3), np.array([1, 2, 0]), probs)
  # top-1: row 0 right, row 1 wrong, row 2 wrong; top-5 (all 3 classes) is always right.
  assert predictions.top1_wrong.tolist() == [False, True, True]
  assert not predictions.top5_wrong.any()
  summary = evaluate.summarize(predictions)
  assert summary["top1_error"] == pytest.approx(200 / 3) and summary["top5_error"] == 0
  assert summary["num_examples"] == 3 and summary["top1_interval"][0] < 200 / 3 < summary["top1_interval"][1]


@pytest.mark.parametrize("view", evaluate.VIEWS)
def test_every_view_runs_end_to_end(net, view):
  model, params = net
  config = configs.synthetic("single")
  config.data.update(crop_size=64, short_side=72)
  config.eval.update(batch_size=4, multiview_scales=(64, 80))
  source = sources.get_source("synthetic", "validation", num_examples=6)
  result = evaluate.evaluate_params(model, params, source, view=view, config=config, mean=np.float32(128.0))
  assert result["num_examples"] == 6 and 0 <= result["top1_error"] <= 100
  assert result["top5_error"] <= result["top1_error"]


def test_unknown_view_is_refused(net):
  model, params = net
  with pytest.raises(ValueError, match="unknown view"):
    evaluate.evaluate_params(model, params, [], view="eleven", config=configs.synthetic("single"), mean=0.0)


def test_multiview_compiles_once_per_fixed_canvas(net):
  model, params = net
  config = configs.synthetic("single")
  config.data.update(crop_size=64, short_side=72)
  config.eval.update(batch_size=4, multiview_scales=(64, 80, 96), max_aspect=16 / 9)
  source = sources.get_source("synthetic", "validation", num_examples=12)  # aspects from 3:4 to 16:9
  shapes = {tuple(source.image_shape(i)) for i in range(12)}
  assert len({h > w for h, w in shapes}) == 2  # landscape and portrait images both present
  with count_compiles() as compiles:
    evaluate.evaluate_params(model, params, source, view="multiview", config=config, mean=np.float32(128.0))
  # Per scale: at most two shapes (landscape, portrait), whatever the 12 images' sizes; the
  # full-view pass adds at most two more. Bucketing by size alone would give more.
  assert compiles["_window_probs_sum"] <= 2 * 3, compiles
  assert compiles["_full_probs"] <= 2 * 2, compiles  # the image and its flip share the compile
  assert views.canvases(72, 32, 16 / 9) == ((96, 128), (128, 96))


def test_non_finite_outputs_are_an_error_not_an_error_rate(net):
  model, params = net
  broken = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), params)
  config = configs.synthetic("single")
  config.data.update(crop_size=64, short_side=72)
  source = sources.get_source("synthetic", "validation", num_examples=4)
  with pytest.raises(FloatingPointError, match="not finite for 4 of 4 examples"):
    evaluate.evaluate_params(model, broken, source, view="crop", config=config, mean=np.float32(128.0))
