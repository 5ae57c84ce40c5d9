"""Fine-tuning streamed from the feature cache: labels, window counts, balanced batches, the step."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sppnet_jax.checkpoints import checkpoint_manager
from sppnet_jax import run_files
from sppnet_jax.detection import cache, finetune
from sppnet_jax.detection.config import detection_config
from sppnet_jax.metrics_io import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]


def _write(path, feature_value: float):
  # GT class 2 at [0, 0, 19, 19]; windows: the GT itself (fg), IoU 0.25 (bg), far away (unused).
  windows = np.array([[0, 0, 19, 19], [10, 0, 29, 19], [60, 60, 79, 79]], np.float32)
  run_files.write_npz(path, windows=windows, num_gt=np.int64(1), pool5=np.full((3, 4), feature_value, np.float16),
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
  run_files.write_npz(paths[0], windows=only_fg, num_gt=np.int64(1), pool5=np.full((3, 4), 0, np.float16),
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
    run_files.write_npz(p, **c)
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


# ------------------------------------------------------------------------------------- checkpoints

def _resumable_setup(tmp_path, steps: int = 12):
  """4 cached images, a tiny trunk head and a config whose stop step (6) falls inside a pool (4 steps each,
  2 pools an epoch), with dropout and a learning-rate drop (step 7) after it."""
  paths = [tmp_path / "cache" / f"{i:06d}.npz" for i in range(4)]
  paths[0].parent.mkdir()
  for i, p in enumerate(paths):
    _write(p, 1.0 + i)
  config = detection_config()
  config.finetune.update(dict(batch_size=8, pool_images=2, pool_steps=4, steps=steps, lr=0.05, lr_boundaries=(7,),
                              log_every=6, dropout=0.5, checkpoint_every=4))
  key = jax.random.key(0)
  trunk_head = {"fc6": {"kernel": 0.5 * jax.random.normal(key, (4, 6)), "bias": jnp.zeros(6)},
                "fc7": {"kernel": 0.5 * jax.random.normal(key, (6, 6)), "bias": jnp.zeros(6)}}
  return paths, trunk_head, config


def _assert_same_params(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) == 6
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _signal_at(sig: int, step: int, steps: int, logs: list):
  """A log callback that sends ``sig`` to this process when step ``step`` is logged."""
  def log(line: str) -> None:
    logs.append(line)
    if f"fine-tune step {step}/{steps}:" in line:
      os.kill(os.getpid(), sig)
  return log


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The cached images, head and config of :func:`_resumable_setup` with the result of fine-tuning them
  for 12 steps without a stop."""
  tmp_path = tmp_path_factory.mktemp("uninterrupted")
  paths, trunk_head, config = _resumable_setup(tmp_path)
  params, stats = finetune.finetune_from_cache(paths, trunk_head, 3, config, lambda s: None,
                                               checkpoint_dir=tmp_path / "run")
  return paths, trunk_head, config, params, stats


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_fine_tuning_saves_and_resumes_to_bit_identical_parameters(tmp_path, capsys, uninterrupted, sig):
  paths, trunk_head, config, reference, ref_stats = uninterrupted
  run, logs, handler = tmp_path / "run", [], signal.getsignal(sig)
  with pytest.raises(finetune.Stopped, match="stopped at step 6 of 12.*rerun the same command") as stopped:
    finetune.finetune_from_cache(paths, trunk_head, 3, config, _signal_at(sig, 6, 12, logs), metrics_dir=run,
                                 checkpoint_dir=run)
  assert stopped.value.step == 6
  assert checkpoint_manager(run, 2).all_steps() == [4, 6]  # the interval's step and the stop's
  assert signal.getsignal(sig) is handler  # the handler is given back
  if sig == signal.SIGINT:
    assert "Ctrl-C: saving a checkpoint and stopping" in capsys.readouterr().out

  logs.clear()
  params, stats = finetune.finetune_from_cache(paths, trunk_head, 3, config, logs.append, metrics_dir=run,
                                               checkpoint_dir=run)
  _assert_same_params(params, reference)
  assert stats["final_loss"] == ref_stats["final_loss"]
  assert any("resumed at step 6/12" in line for line in logs)
  assert [line.split("/")[0].split()[-1] for line in logs if "fine-tune step" in line] == ["12"]
  assert [r["step"] for r in read_metrics(run)] == [6, 12]
  assert checkpoint_manager(run, 2).all_steps() == [8, 12]  # the newest two kept

  # A finished fine-tuning is restored, not redone.
  logs.clear()
  again, again_stats = finetune.finetune_from_cache(paths, trunk_head, 3, config, logs.append, checkpoint_dir=run)
  _assert_same_params(again, reference)
  assert again_stats["final_loss"] == ref_stats["final_loss"]
  assert not [line for line in logs if "fine-tune step" in line]


def test_resumed_batches_are_the_uninterrupted_ones(tmp_path):
  paths, _, config = _resumable_setup(tmp_path)
  f = config.finetune
  whole = list(finetune.window_batches(paths, f, 0, 12))
  for start in (0, 3, 4, 6, 11, 12):
    rest = list(finetune.window_batches(paths, f, 0, 12, start))
    assert len(rest) == 12 - start
    for (x, y), (xr, yr) in zip(whole[start:], rest):
      np.testing.assert_array_equal(x, xr), np.testing.assert_array_equal(y, yr)
  sampler = finetune.PoolSampler.from_config(paths, f, 0)
  assert finetune.data_position(6, sampler) == {"global_step": 6, "epoch": 0, "pool": 1, "pool_step": 2}
  assert finetune.data_position(9, sampler) == {"global_step": 9, "epoch": 1, "pool": 0, "pool_step": 1}


def test_checkpoint_every_is_validated_and_a_changed_sampling_is_refused(tmp_path):
  paths, trunk_head, config = _resumable_setup(tmp_path, steps=4)
  for bad in (0, -3, 2.5, True, None, "100"):
    loose = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    loose.finetune.checkpoint_every = bad
    with pytest.raises(ValueError, match=r"^finetune.checkpoint_every must be a whole number of steps >= 1"):
      finetune.finetune_from_cache(paths, trunk_head, 3, loose, lambda s: None, checkpoint_dir=tmp_path / "run")
  assert not (tmp_path / "run").exists()
  config.finetune.checkpoint_every = 3
  finetune.finetune_from_cache(paths, trunk_head, 3, config, lambda s: None, checkpoint_dir=tmp_path / "run")
  changed = ml_collections.ConfigDict(config.to_dict())
  changed.finetune.pool_steps = 3
  with pytest.raises(ValueError, match="another window sampling"):
    finetune.finetune_from_cache(paths, trunk_head, 3, changed, lambda s: None, checkpoint_dir=tmp_path / "run")
  assert checkpoint_manager(tmp_path / "run", 2).all_steps() == [3, 4]  # nothing removed


_FINETUNE_SCRIPT = """
import json, pathlib, sys, time
import jax, ml_collections, numpy as np
from sppnet_jax.detection import finetune

work, out, hang_at = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
config = ml_collections.ConfigDict(json.loads((work / "config.json").read_text()))
head = dict(np.load(work / "trunk_head.npz"))
trunk_head = {layer: {"kernel": head[layer + "/kernel"], "bias": head[layer + "/bias"]} for layer in ("fc6", "fc7")}

def log(line):
  print(line, flush=True)
  if f"fine-tune step {hang_at}/" in line:
    print("HANGING", flush=True)
    time.sleep(600)

params, _ = finetune.finetune_from_cache(sorted((work / "cache").glob("*.npz")), trunk_head, 3, config, log,
                                         metrics_dir=pathlib.Path(out).parent, checkpoint_dir=pathlib.Path(out).parent)
np.savez(out, **{"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
                 for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]})
"""


def _start_script(tmp_path, run: str, hang_at: int = -1) -> subprocess.Popen:
  (tmp_path / run).mkdir(exist_ok=True)
  return subprocess.Popen([sys.executable, str(tmp_path / "finetune_script.py"), str(tmp_path),
                           str(tmp_path / run / "params.npz"), str(hang_at)], cwd=REPO,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_fine_tuning_resumes_to_bit_identical_parameters(tmp_path):
  paths, trunk_head, config = _resumable_setup(tmp_path, steps=16)
  config.finetune.log_every = 5  # logs 5, 10, 15, 16; checkpoints 4, 8, 12, 16
  (tmp_path / "config.json").write_text(config.to_json())
  np.savez(tmp_path / "trunk_head.npz", **{f"{layer}/{name}": np.asarray(v) for layer, d in trunk_head.items()
                                          for name, v in d.items()})
  (tmp_path / "finetune_script.py").write_text(_FINETUNE_SCRIPT)
  reference = _start_script(tmp_path, "reference")
  out, _ = reference.communicate(timeout=300)
  assert reference.returncode == 0, out

  killed = _start_script(tmp_path, "run", hang_at=10)
  try:
    lines = []
    for line in killed.stdout:  # the run writes step 10's log line, then hangs past checkpoint 8
      lines.append(line)
      if line.startswith("HANGING"):
        break
    assert lines and lines[-1].startswith("HANGING"), "".join(lines)
    deadline = time.time() + 120
    while time.time() < deadline and checkpoint_manager(tmp_path / "run", 2).latest_step() != 8:
      time.sleep(0.1)
  finally:
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
  assert checkpoint_manager(tmp_path / "run", 2).all_steps() == [4, 8]
  assert [r["step"] for r in read_metrics(tmp_path / "run")] == [5]  # written before the hang

  rerun = _start_script(tmp_path, "run")
  out, _ = rerun.communicate(timeout=300)
  assert rerun.returncode == 0, out
  assert "fine-tuning resumed at step 8/16" in out
  ref, got = np.load(tmp_path / "reference" / "params.npz"), np.load(tmp_path / "run" / "params.npz")
  assert sorted(ref) == sorted(got) and len(ref) == 6
  for name in ref:
    np.testing.assert_array_equal(ref[name], got[name])
  assert [r["step"] for r in read_metrics(tmp_path / "run")] == [5, 10, 15, 16]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:class .* has no positive:RuntimeWarning")
def test_the_detection_pipeline_returns_preempted_on_sigterm_and_a_rerun_resumes(tmp_path):
  from sppnet_jax.detection import pipeline
  from test_detection_pipeline import _tiny_config
  config = _tiny_config()  # 10 fine-tuning steps, logged every 5
  logs = []
  result = pipeline.train_and_evaluate_detection(config, tmp_path, log=_signal_at(signal.SIGTERM, 5, 10, logs))
  assert result["preempted"] and result["stage"] == "head" and result["global_step"] == 5
  assert any("stopped at step 5 of 10" in line and "rerun the same command" in line for line in logs)
  assert not (tmp_path / "system" / "head").exists() and not (tmp_path / "metrics.json").exists()
  assert checkpoint_manager(tmp_path / "system" / "finetune", 2).all_steps() == [5]

  logs.clear()
  metrics = pipeline.train_and_evaluate_detection(config, tmp_path, log=logs.append)
  assert np.isfinite(metrics["mAP"]) and metrics["finetune"]["steps"] == 10
  assert any("fine-tuning resumed at step 5/10" in line for line in logs)
  assert [r["step"] for r in read_metrics(tmp_path) if "finetune/loss" in r] == [5, 10]
