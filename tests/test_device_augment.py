"""On-device augmentation against the host implementation (sppnet_jax.data.augment)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sppnet_jax.data import augment, device_augment, pipeline, synthetic


def _host_float(image, rng, *, crop_size, short_side, resize_to, pca_std, mean):
  """``augment.train_example`` with the resize in float32 (no rounding to uint8 in between), from
  the same crop as the device path."""
  x = device_augment.crop_of_resized(image, rng, crop_size=crop_size, short_side=short_side, positions="five")
  x = augment.random_flip(x, rng)
  if resize_to is not None:
    x = augment.resize_image(np.ascontiguousarray(x, np.float32), resize_to)
  return augment.normalize(augment.pca_color_noise(x, rng, pca_std), mean)


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
  assert device["image"].dtype == np.uint8 and device["image"].shape == (6, 32, 32, 3)
  finish = jax.jit(lambda x, f, a: device_augment.finish_batch(x, f, a, device_augment.device_mean(mean, size), size))
  out = np.asarray(finish(device["image"], device["flip"], device["alpha"]))
  np.testing.assert_array_equal(device["label"], host["label"])
  # One grey level: the crop resampled alone (crop_of_resized) and, with resize_to, the host's
  # rounding of the resized crop to uint8, which the device does not do.
  grey = 1 / 8 if mean_kind == "per_image" else 1 / augment.NORM_SCALE
  np.testing.assert_allclose(out, host["image"], atol=(2.01 if resize_to else 1.01) * grey)


@pytest.mark.parametrize("positions", ["five", "random"])
def test_the_crop_alone_is_the_crop_of_the_resized_image(positions):
  source = synthetic.SyntheticClassification("train", 6, seed=1, min_side=40, max_side=90)
  for i in range(6):
    image = source[i]["image"]
    rng_host, rng = np.random.default_rng(i), np.random.default_rng(i)
    want = augment.train_crop(image, rng_host, crop_size=32, short_side=36, positions=positions)
    got = device_augment.crop_of_resized(image, rng, crop_size=32, short_side=36, positions=positions)
    assert got.shape == want.shape == (32, 32, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert rng.random() == rng_host.random()  # the same draws were taken



def test_device_resize_matches_the_host_float_resize():
  source = synthetic.SyntheticClassification("train", 4, seed=2, min_side=40, max_side=60)
  mean = np.full((32, 32, 3), 100.0, np.float32)
  for i in range(4):
    image = source[i]["image"]
    rng_host, rng_draws = np.random.default_rng([7, i]), np.random.default_rng([7, i])
    want = _host_float(image, rng_host, crop_size=32, short_side=36, resize_to=26, pca_std=0.1, mean=mean)
    crop, flip, alpha = device_augment.draws(image, rng_draws, crop_size=32, short_side=36, positions="five",
                                             pca_std=0.1)
    got = device_augment.finish_batch(crop[None], np.array([flip]), alpha[None],
                                      device_augment.device_mean(mean, 26), 26)[0]
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)
