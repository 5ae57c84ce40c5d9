"""On-device augmentation against the host implementation (sppnet_jax.data.augment) and Pillow."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from PIL import Image

from sppnet_jax.data import augment, device_augment, pipeline, synthetic


def _pillow_float_crop(image, rng, *, crop_size, short_side, positions="five"):
  """The training crop of the short-side-resized image, resampled by Pillow in float ('F' mode, no
  rounding to uint8) over the crop's box: the oracle of the device resampling."""
  big_h, big_w = image.shape[:2]
  h, w = augment.short_side_shape(big_h, big_w, short_side)
  if positions == "five":
    top, left = augment.five_crop_offsets(h, w, crop_size)[int(rng.integers(5))]
  else:
    top, left = augment.random_crop_offset(h, w, crop_size, rng)
  sy, sx = big_h / h, big_w / w
  box = (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F").resize(
      (crop_size, crop_size), Image.BILINEAR, box=box)) for c in range(3)], axis=-1)


def _host_float(image, rng, *, crop_size, short_side, resize_to, pca_std, mean):
  """``augment.train_example`` in float32 throughout (no rounding to uint8), with its draws."""
  x = augment.random_flip(_pillow_float_crop(image, rng, crop_size=crop_size, short_side=short_side), rng)
  if resize_to is not None:
    x = augment.resize_image(np.ascontiguousarray(x, np.float32), resize_to)
  return augment.normalize(augment.pca_color_noise(x, rng, pca_std), mean)


_resample = jax.jit(device_augment.resample_crops, static_argnums=2)


@pytest.mark.parametrize("positions", ["five", "random"])
@pytest.mark.parametrize("shape", [(36, 36), (40, 60), (60, 40), (30, 20), (36, 50), (20, 200), (66, 90), (60, 66)])
def test_device_resampling_is_pillows_float_resampling(shape, positions):
  # Random pixels (the hardest case for any shortcut) at sizes that shrink (up to 1.83x), keep
  # (36: the crop is a plain cut) and enlarge (20, 30) the image; all within the canvas.
  pixels = np.random.default_rng(shape)
  for i in range(4):
    image = pixels.integers(0, 256, (*shape, 3)).astype(np.uint8)
    rng, rng_oracle = np.random.default_rng(i), np.random.default_rng(i)
    canvas, window = device_augment.crop_region(image, rng, crop_size=32, short_side=36, positions=positions)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8 and window.shape == (6,)
    assert window[2] != 1 or 36 in shape  # the source pixels, not a crop finished on the host
    want = _pillow_float_crop(image, rng_oracle, crop_size=32, short_side=36, positions=positions)
    got = np.asarray(_resample(canvas[None], window[None], 32))[0]
    np.testing.assert_allclose(got, want, atol=0.01)  # grey levels, float32 against Pillow's float64 weights
    assert rng.random() == rng_oracle.random()  # the same draws were taken
    if shape[0] == 36 or shape[1] == 36:  # no resize: the device reads the crop pixel for pixel
      assert np.array_equal(got, want)


def test_a_source_too_large_for_the_canvas_is_resampled_on_the_host():
  image = np.asarray(Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 12, 3)).astype(np.uint8))
                     .resize((120, 90), Image.BILINEAR))  # short side 90 = 2.5 x 36: the crop spans 80 > 64 pixels
  rng, rng_oracle = np.random.default_rng(3), np.random.default_rng(3)
  canvas, window = device_augment.crop_region(image, rng, crop_size=32, short_side=36, positions="random")
  np.testing.assert_array_equal(window, [0, 0, 1, 1, 32, 32])
  want = _pillow_float_crop(image, rng_oracle, crop_size=32, short_side=36, positions="random")
  got = np.asarray(_resample(canvas[None], window[None], 32))[0]
  np.testing.assert_array_equal(got, canvas[:32, :32])
  assert np.abs(got - want).max() <= 1.0  # Pillow's rounding to uint8


@pytest.mark.parametrize("mean_kind", ["image", "per_image", "none"])
@pytest.mark.parametrize("resize_to", [None, 26])
def test_device_batches_equal_the_host_transform(mean_kind, resize_to):
  source = synthetic.SyntheticClassification("train", 12, seed=5, min_side=40, max_side=60)
  rng = np.random.default_rng(0)
  mean = {"image": rng.uniform(60, 190, (32, 32, 3)).astype(np.float32), "per_image": augment.PER_IMAGE,
          "none": None}[mean_kind]
  common = dict(batch_size=6, seed=3, epoch=1, crop_size=32, short_side=36, pca_std=0.1)
  size = resize_to or 32
  host = next(pipeline.train_batches(source, resize_to=resize_to, mean=mean, **common))
  device = next(pipeline.train_batches(source, on_device=True, **common))
  assert device["image"].dtype == np.uint8 and device["image"].shape == (6, 64, 64, 3)
  assert device["window"].dtype == np.float32 and device["window"].shape == (6, 6)
  finish = jax.jit(lambda *a: device_augment.finish_batch(*a, device_augment.device_mean(mean, size), 32, size))
  out = np.asarray(finish(device["image"], device["window"], device["flip"], device["alpha"]))
  np.testing.assert_array_equal(device["label"], host["label"])
  # One grey level: the host rounds the resized image (and, with resize_to, the resized crop)
  # to uint8; the device does not.
  grey = 1 / 8 if mean_kind == "per_image" else 1 / augment.NORM_SCALE
  np.testing.assert_allclose(out, host["image"], atol=(2.01 if resize_to else 1.01) * grey)


def test_device_augmentation_matches_the_host_transform_in_float():
  source = synthetic.SyntheticClassification("train", 4, seed=2, min_side=40, max_side=60)
  mean = np.full((32, 32, 3), 100.0, np.float32)
  for i in range(4):
    image = source[i]["image"]
    rng_host, rng_draws = np.random.default_rng([7, i]), np.random.default_rng([7, i])
    want = _host_float(image, rng_host, crop_size=32, short_side=36, resize_to=26, pca_std=0.1, mean=mean)
    canvas, window, flip, alpha = device_augment.draws(image, rng_draws, crop_size=32, short_side=36,
                                                       positions="five", pca_std=0.1)
    got = device_augment.finish_batch(canvas[None], window[None], np.array([flip]), alpha[None],
                                      device_augment.device_mean(mean, 26), 32, 26)[0]
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


@pytest.mark.parametrize("mean", [augment.PER_IMAGE, np.array([100.0, 120.0, 90.0], np.float32), None])
def test_whole_image_batches_on_device_equal_the_host_transform(mean):
  source = synthetic.SyntheticClassification("train", 24, seed=4, min_side=30, max_side=70)
  plan = pipeline.full_epoch_plan(pipeline.image_shapes(source), batch_size=4, seed=2, epoch=1, short_range=(24, 40),
                                  bucket=16)
  common = dict(seed=2, epoch=1, pca_std=0.1, mean=mean)
  host = list(pipeline.full_train_batches(source, plan, **common))
  device = list(pipeline.full_train_batches(source, plan, on_device=True, **common))
  assert len(host) == len(device) == len(plan) > 0
  device_mean = device_augment.device_mean(pipeline.full_mode_mean(mean))
  finish = jax.jit(lambda *a: device_augment.finish_full_batch(*a, device_mean))
  flipped = 0
  for h, d in zip(host, device):
    assert d["image"].dtype == np.uint8 and d["image"].shape == h["image"].shape
    np.testing.assert_array_equal(d["valid_hw"], h["valid_hw"])
    out = np.asarray(finish(d["image"], d["valid_hw"], d["flip"], d["alpha"]))
    # The same uint8 resize on both sides: only float rounding differs (per-image statistics
    # are float64 on the host, float32 here), and the padding is zero on both.
    np.testing.assert_allclose(out, h["image"], rtol=1e-4, atol=2e-4)
    flipped += int(d["flip"].sum())
  assert 0 < flipped < 4 * len(plan)  # both kinds of rows were compared
