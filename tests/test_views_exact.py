"""Ten-view, crop, full and multi-view evaluation with a hand-set network whose scores are known,
so each view's probabilities and errors are known exactly.

The network: one 1x1 conv with the identity kernel, SPP with one level (a max over the window),
fc6/fc7/fc8 identity. Its logits are the per-channel maxima of the (ReLU'd) input over the pooled
region, so on images painted with pure red / green / blue columns on black (mean 0, scale 64: a
painted channel is L = 255 / 64, black 0), the logit of class c is L when the pooled region holds
colour c and 0 otherwise. Every image is 32 x 48 (crop 32, short side 32: nothing is resized).

Columns: red 0..11, green 20..23, blue 36..47, black elsewhere. The three 32-px windows along
the image hold: x 0..31 red+green, x 8..39 all three, x 16..47 green+blue. Window edges are at
least 3 px from a colour edge, so the projection of a window onto the map changes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sppnet_jax import evaluate, models

L = 255.0 / 64.0


def _softmax(logits) -> np.ndarray:
  z = np.exp(np.asarray(logits, np.float64) - max(logits))
  return z / z.sum()


RG, RGB, GB = _softmax([L, L, 0]), _softmax([L, L, L]), _softmax([0, L, L])


@pytest.fixture(scope="module")
def net():
  model = models.SPPNet(layers=(models.Conv(3, 1, 1, 0),), num_classes=3, levels=(1,), fc_width=3, dropout=0.0)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  eye = jnp.eye(3, dtype=jnp.float32)
  params = jax.tree.map(jnp.zeros_like, params)
  params["trunk"]["conv1"]["kernel"] = eye.reshape(1, 1, 3, 3)
  for name in ("fc6", "fc7", "fc8"):
    params["head"][name]["kernel"] = eye
  return model, params


def _image(flip: bool = False) -> np.ndarray:
  image = np.zeros((32, 48, 3), np.uint8)
  image[:, 0:12, 0] = 255
  image[:, 20:24, 1] = 255
  image[:, 36:48, 2] = 255
  return image[:, ::-1].copy() if flip else image


class Source:
  """Image A labelled 1, image A labelled 0, image A mirrored labelled 2."""

  def __init__(self):
    self.examples = [(_image(), 1), (_image(), 0), (_image(flip=True), 2)]

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    image, label = self.examples[i]
    return {"image": image, "label": label}


def _config(multiview_scales=()):
  return ml_collections.ConfigDict({
      "data": {"crop_size": 32, "short_side": 32},
      "eval": {"batch_size": 2, "bucket": 32, "multiview_scales": tuple(multiview_scales), "max_aspect": 2.0,
               "progress_bar": False}})


def _predict(net, view, config=None):
  model, params = net
  return evaluate.predict(model, params, Source(), view=view, config=config or _config(), mean=0.0)


def test_the_hand_set_network_scores_colour_presence(net):
  model, params = net
  x = np.zeros((1, 32, 32, 3), np.float32)
  x[0, 5, 7, 2] = L
  np.testing.assert_allclose(model.apply({"params": params}, jnp.asarray(x))[0], [0, 0, L], rtol=1e-6)


def test_ten_view_averages_the_softmax_of_ten_known_crops(net):
  # Centre crop (x 8..39) and its flip: all three colours; the two left corners and their flips:
  # red+green; the two right corners and their flips: green+blue.
  expected = (2 * RGB + 4 * RG + 4 * GB) / 10
  pred = _predict(net, "ten")
  np.testing.assert_array_equal(pred.index, [0, 1, 2])
  np.testing.assert_allclose(pred.probs, np.tile(expected, (3, 1)), rtol=1e-5)
  assert pred.top1_wrong.tolist() == [False, True, True]  # green wins: label 1 right, 0 and 2 wrong
  result = evaluate.summarize(pred)
  assert result["top1_error"] == pytest.approx(200 / 3) and result["top5_error"] == 0.0


def test_crop_view_sees_only_the_centre(net):
  pred = _predict(net, "crop")
  np.testing.assert_allclose(pred.probs, np.full((3, 3), 1 / 3), rtol=1e-6)  # all colours: a three-way tie
  assert np.argmax(pred.probs, -1).tolist() == [0, 0, 0]  # ties go to the first class
  assert pred.top1_wrong.tolist() == [True, False, True]
  assert evaluate.summarize(pred)["top1_error"] == pytest.approx(200 / 3)


def test_full_view_pools_the_whole_image(net):
  pred = _predict(net, "full")
  np.testing.assert_allclose(pred.probs, np.tile(RGB, (3, 1)), rtol=1e-6)


def test_multiview_averages_windows_of_the_image_and_its_flip_and_two_full_views(net):
  # One scale (short side 32): the windows at x 0, 8, 16 (the other six grid positions repeat
  # them) on the image and on its flip, so each of the three windows twice; then the full image
  # and its flip. 8 softmaxes averaged.
  expected = (2 * RG + 2 * RGB + 2 * GB + 2 * RGB) / 8
  pred = _predict(net, "multiview", _config(multiview_scales=(32,)))
  np.testing.assert_array_equal(pred.index, [0, 1, 2])
  np.testing.assert_allclose(pred.probs, np.tile(expected, (3, 1)), rtol=1e-5)
  assert pred.top1_wrong.tolist() == [False, True, True]
  assert evaluate.summarize(pred)["top1_error"] == pytest.approx(200 / 3)
