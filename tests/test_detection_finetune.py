"""Fine-tuning streamed from the feature cache: labels, window counts, balanced batches, the step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sppnet_jax.detection import cache, finetune
from sppnet_jax.detection.config import detection_config


def _write(path, feature_value: float):
  # GT class 2 at [0, 0, 19, 19]; windows: the GT itself (fg), IoU 0.25 (bg), far away (unused).
  windows = np.array([[0, 0, 19, 19], [10, 0, 29, 19], [60, 60, 79, 79]], np.float32)
  cache.atomic_savez(path, windows=windows, num_gt=np.int64(1), pool5=np.full((3, 4), feature_value, np.float16),
                     scale_index=np.zeros(3, np.int32), gt_boxes=windows[:1], gt_labels=np.array([2]),
                     gt_difficult=np.array([False]), image_hw=np.array([100, 100]), id=np.asarray("x"))


def _f(**kw):
  f = detection_config().finetune
  f.update({**dict(batch_size=8, fg_fraction=0.25, pool_images=2, pool_steps=3), **kw})
  return f


def test_window_labels_put_background_only_inside_fine_tuning():
  windows = np.array([[0, 0, 19, 19], [10, 0, 29, 19], [60, 60, 79, 79], [0, 0, 9, 9]], float)
  # IoUs with the GT: 1, 200/600 = 1/3, 0, 100/400 = 1/4.
  lab = finetune.window_labels(windows, windows[:1], np.array([2]), np.array([False]))
  assert lab.tolist() == [3, finetune.BACKGROUND, finetune.UNUSED, finetune.BACKGROUND]
  assert finetune.window_labels(windows, windows[:1], np.array([2]), np.array([True])).tolist() == [-1] * 4


def test_pools_stream_balanced_batches_from_a_few_images_at_a_time(tmp_path):
  paths = [tmp_path / f"{i:06d}.npz" for i in range(5)]
  for i, p in enumerate(paths):
    _write(p, i)
  f = _f()
  assert finetune.count_windows(paths, f) == (5, 5)
  sampler = finetune.PoolSampler.from_config(paths, f, seed=0)
  assert sampler.pools_per_epoch == 3
  order = np.random.default_rng((0, 1)).permutation(5)
  for k, images in enumerate([order[:2], order[2:4], order[4:]]):
    x, y = sampler((1, k))
    assert x.dtype == np.float16 and x.shape == (3, 8, 4) and y.shape == (3, 8)
    assert set(np.unique(x).tolist()) <= set(images.tolist())  # a pool reads only its own images
    assert ((y == 3).sum(1) == 2).all() and ((y == 0).sum(1) == 6).all()  # 25 % foreground, of class 2 + 1
  np.testing.assert_array_equal(sampler((1, 2))[0], sampler((1, 2))[0])  # seeded per pool, not per call
  # 3 pools per epoch of 3 steps: 20 steps read 7 pools, the last in part; the same with worker processes.
  batches = list(finetune.window_batches(paths, f, 0, 20))
  assert len(batches) == 20
  for x, y in batches:
    assert x.dtype == np.float32 and x.shape == (8, 4) and y.dtype == np.int32
  expected = [sampler(divmod(p, 3))[0][s] for p in range(7) for s in range(3)][:20]
  np.testing.assert_array_equal(np.stack([x for x, _ in batches]), np.stack(expected).astype(np.float32))
  f.worker_count = 2
  workers = list(finetune.window_batches(paths, f, 0, 20))
  np.testing.assert_array_equal(np.stack([x for x, _ in workers]), np.stack([x for x, _ in batches]))


def test_a_pool_without_background_reads_on_until_it_has_one(tmp_path):
  paths = [tmp_path / f"{i:06d}.npz" for i in range(3)]
  for i, p in enumerate(paths):
    _write(p, i)
  only_fg = np.array([[0, 0, 19, 19]] * 3, np.float32)
  cache.atomic_savez(paths[0], windows=only_fg, num_gt=np.int64(1), pool5=np.full((3, 4), 0, np.float16),
                     scale_index=np.zeros(3, np.int32), gt_boxes=only_fg[:1], gt_labels=np.array([2]),
                     gt_difficult=np.array([False]), image_hw=np.array([100, 100]), id=np.asarray("x"))
  sampler = finetune.PoolSampler.from_config(paths, _f(pool_images=1), seed=0)
  k = int(np.flatnonzero(np.random.default_rng((0, 0)).permutation(3) == 0)[0])
  x, y = sampler((0, k))
  assert (y == 0).any() and len(np.unique(x)) == 2  # image 0 and the next one in the order


def test_fine_tuning_lowers_the_loss_and_keeps_fc6_fc7_shapes(tmp_path):
  paths = [tmp_path / f"{i:06d}.npz" for i in range(4)]
  for i, p in enumerate(paths):
    _write(p, 1.0 + i)
  config = detection_config()
  config.finetune.update(dict(batch_size=8, pool_images=2, pool_steps=4, steps=40, lr=0.05, lr_boundaries=(30,),
                              log_every=20, dropout=0.0))
  key = jax.random.key(0)
  trunk_head = {"fc6": {"kernel": 0.5 * jax.random.normal(key, (4, 6)), "bias": jnp.zeros(6)},
                "fc7": {"kernel": 0.5 * jax.random.normal(key, (6, 6)), "bias": jnp.zeros(6)}}
  logs = []
  params, stats = finetune.finetune_from_cache(paths, trunk_head, 3, config, logs.append)
  assert params["fc8"]["kernel"].shape == (6, 4) and params["fc6"]["kernel"].shape == (4, 6)
  assert stats["fg_windows"] == 4 and stats["bg_windows"] == 4 and stats["steps"] == 40
  losses = [float(line.split("loss ")[1].split()[0]) for line in logs if "fine-tune step" in line]
  assert len(losses) == 2 and losses[1] < losses[0] < np.log(4) + 0.1
  with pytest.raises(ValueError, match="IoU >= 1.1: cannot fine-tune"):
    finetune.finetune_from_cache(paths, trunk_head, 3, _config_without_fg(config), logs.append)


def _config_without_fg(config):
  c = ml_collections.ConfigDict(config.to_dict())
  c.finetune.fg_iou = 1.1
  return c


def test_svm_images_are_read_several_at_a_time_with_fc7_by_hand(tmp_path):
  """Reads of two files: every image's fc7 is ReLU(ReLU(x W6 + b6) W7 + b7) of its own rows, the GT
  rows first (``gt_features``), and the reader can be iterated twice (the SVMs' two passes)."""
  from sppnet_jax.detection.pipeline import CachedFc7Images
  rng = np.random.default_rng(0)
  paths = [tmp_path / f"{i:06d}.npz" for i in range(3)]
  for i, p in enumerate(paths):
    _write(p, 0.0)
    c = cache.read(p)
    c["pool5"] = rng.normal(0, 1, (3, 4)).astype(np.float16)
    cache.atomic_savez(p, **c)
  head = {"fc6": {"kernel": rng.normal(0, 1, (4, 6)).astype(np.float32), "bias": rng.normal(0, 1, 6).astype(np.float32)},
          "fc7": {"kernel": rng.normal(0, 1, (6, 6)).astype(np.float32), "bias": rng.normal(0, 1, 6).astype(np.float32)}}
  images = CachedFc7Images(paths, head, window_batch=4, read_images=2)
  assert len(images) == 3
  for _ in range(2):
    seen = list(images)
    assert len(seen) == 3
    for im, p in zip(seen, paths):
      x = cache.read(p)["pool5"].astype(np.float64)
      fc7 = np.maximum(np.maximum(x @ head["fc6"]["kernel"] + head["fc6"]["bias"], 0) @ head["fc7"]["kernel"]
                       + head["fc7"]["bias"], 0)
      np.testing.assert_allclose(im.gt_features, fc7[:1], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(im.features, fc7[1:], rtol=1e-5, atol=1e-5)
      assert im.boxes.shape == (2, 4) and im.gt_labels.tolist() == [2]
  with pytest.raises(ValueError, match="read_images"):
    CachedFc7Images(paths, head, 4, 0)


def test_svm_images_do_not_keep_their_read_alive(tmp_path):
  """An image kept by the consumer owns its arrays: it must not hold the read's whole fc7 block."""
  from sppnet_jax.detection.pipeline import CachedFc7Images
  paths = [tmp_path / f"{i:06d}.npz" for i in range(4)]
  for p in paths:
    _write(p, 1.0)
  head = {"fc6": {"kernel": np.ones((4, 6), np.float32), "bias": np.zeros(6, np.float32)},
          "fc7": {"kernel": np.ones((6, 6), np.float32), "bias": np.zeros(6, np.float32)}}
  for im in CachedFc7Images(paths, head, window_batch=4, read_images=4):
    assert im.features.base is None and im.gt_features.base is None
