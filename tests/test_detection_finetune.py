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
  f.update(dict(batch_size=8, fg_fraction=0.25, pool_images=2, pool_steps=3, **kw))
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
  pools = finetune.WindowPools(paths, f, seed=0)
  sizes = []
  for _, (x, y) in zip(range(4), pools.pools()):
    sizes.append(len(y))
    assert (y > 0).sum() == (y == 0).sum() == 2  # two images: one fg and one bg window each
  assert sizes == [4] * 4
  batches = iter(pools)
  seen = set()
  for _ in range(6):
    x, y = next(batches)
    assert x.dtype == np.float32 and x.shape == (8, 4) and y.dtype == np.int32
    assert (y == 3).sum() == 2 and (y == 0).sum() == 6  # 25 % foreground, of class 2 + 1
    seen |= set(np.unique(x[:, 0]).tolist())
    assert len(np.unique(x[:, 0])) <= 2  # rows of one pool: at most two images
  assert len(seen) >= 3  # the next pool came in after pool_steps batches


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
