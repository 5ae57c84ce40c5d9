"""Scale-out of the input and the run: grain worker processes, per-process sharding of every
global batch, the learning-rate rule inside optax, and two JAX processes against one."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from sppnet_jax import configs, state as state_lib, train, workdir as workdir_lib
from sppnet_jax.checkpoints import checkpoint_manager, restore_checkpoint
from sppnet_jax.compile_count import count_compiles
from sppnet_jax.config_checks import validate_config
from sppnet_jax.data import augment, pipeline, synthetic
from sppnet_jax.metrics_io import read_metrics

from test_train import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


class CountingSource:
  """A source that records the indices read from it (in this process)."""

  def __init__(self, source):
    self.source, self.reads = source, []

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads.append(int(index))
    return self.source[index]


def _source(n=48):
  return synthetic.SyntheticClassification("train", n, seed=3, min_side=40, max_side=56)


def _batches(it):
  return [{k: np.asarray(v) for k, v in b.items()} for b in it]


def _assert_same(a, b):
  assert len(a) == len(b) and a
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_worker_processes_give_the_in_process_batches():
  source = _source()
  common = dict(batch_size=8, seed=1, epoch=2, crop_size=32, short_side=36, pca_std=0.1, mean=None, start_step=1)
  inline = _batches(pipeline.train_batches(source, worker_count=0, **common))
  workers = _batches(pipeline.train_batches(source, worker_count=2, **common))
  _assert_same(inline, workers)
  plan = pipeline.full_epoch_plan(pipeline.image_shapes(source), batch_size=4, seed=1, epoch=0, short_range=(30, 40),
                                  bucket=16)
  full = dict(seed=1, epoch=0, pca_std=0.1, mean="per_image", start_step=1)
  _assert_same(_batches(pipeline.full_train_batches(source, plan, worker_count=0, **full)),
               _batches(pipeline.full_train_batches(source, plan, worker_count=2, **full)))
  np.testing.assert_array_equal(pipeline.estimate_mean_image(source, 20, crop_size=32, short_side=36, worker_count=0),
                                pipeline.estimate_mean_image(source, 20, crop_size=32, short_side=36, worker_count=2))


def test_evaluation_workers_give_the_in_process_batches():
  source = _source(20)
  prepare = functools.partial(augment.full_view, short_side=36)
  kwargs = dict(prepare=prepare, batch_size=6, bucket=16)
  inline = _batches(pipeline.eval_batches(source, **kwargs))
  with pipeline.eval_workers(2):
    workers = _batches(pipeline.eval_batches(source, **kwargs))
  _assert_same(inline, workers)


def test_each_process_reads_only_its_rows_of_every_global_batch():
  source = _source()
  common = dict(batch_size=12, seed=0, epoch=1, crop_size=32, short_side=36, start_step=1)
  whole = _batches(pipeline.train_batches(source, **common))
  parts = []
  for index in range(3):
    counting = CountingSource(source)
    parts.append(_batches(pipeline.train_batches(counting, shard=(index, 3), **common)))
    assert len(counting.reads) == len(set(counting.reads)) == 4 * (48 // 12 - 1)  # its 4 rows of 3 batches
  stacked = [{k: np.concatenate([p[s][k] for p in parts]) for k in whole[0]} for s in range(len(whole))]
  _assert_same(whole, stacked)
  with pytest.raises(ValueError, match="multiple of the 5 processes"):
    pipeline.train_batches(source, shard=(0, 5), **common)
  plan = pipeline.full_epoch_plan(pipeline.image_shapes(source), batch_size=4, seed=1, epoch=0, short_range=(30, 40),
                                  bucket=16)
  full = dict(seed=1, epoch=0, pca_std=0.0, mean=None)
  whole = _batches(pipeline.full_train_batches(source, plan, **full))
  halves = [_batches(pipeline.full_train_batches(source, plan, shard=(i, 2), **full)) for i in range(2)]
  _assert_same(whole, [{k: np.concatenate([h[s][k] for h in halves]) for k in whole[0]} for s in range(len(whole))])


def test_default_worker_count_leaves_one_core_to_the_step():
  assert pipeline.default_worker_count(16) == 15 and pipeline.default_worker_count(1) == 0
  assert pipeline.default_worker_count() >= 0


def test_the_step_schedule_and_the_plateau_rule_live_in_optax():
  c = configs.synthetic("single")  # 3e-4, divided by 10 after epochs 9 and 11
  schedule = state_lib.lr_schedule(c, [10] * 12)
  assert [float(schedule(s)) for s in (0, 89, 90, 109, 110, 119)] == pytest.approx([3e-4, 3e-4, 3e-5, 3e-5, 3e-6, 3e-6])
  c.train.update(lr_schedule="plateau", plateau_patience=2, plateau_min_delta=0.5, max_lr_drops=1)
  with pytest.raises(ValueError, match="eval_every_epochs=3 is not allowed"):
    validate_config(c)
  c.train.eval_every_epochs = 1
  tx = state_lib.make_optimizer(c, [10] * 12)
  opt_state = tx.init({"w": np.zeros(3, np.float32)})
  scales = []
  for error in (60.0, 59.0, 58.8, 58.6, 50.0, 49.9, 49.8, 49.7, 49.6):  # improvements of > 0.5 reset the count
    opt_state = state_lib.observe_validation(c, opt_state, error)
    scales.append(int(state_lib.lr_drops(opt_state)))
  assert scales == [0, 0, 0, 1, 1, 1, 1, 1, 1]  # one drop after 2 flat validations; max_lr_drops=1
  assert float(state_lib.current_learning_rate(opt_state)) == pytest.approx(3e-5)


def test_a_plateau_drop_never_recompiles_and_is_checkpointed(tmp_path):
  config = tiny_config("single", epochs=3)
  config.train.update(lr_schedule="plateau", plateau_patience=1, plateau_min_delta=100.0, max_lr_drops=1)
  config.data.device_augment = True  # also: uint8 canvases in, finished inside the one compiled step
  with count_compiles() as compiles:
    train.train_and_evaluate(config, tmp_path)
  assert sum(n for name, n in compiles.items() if "train_step" in name) == 1, compiles
  rates = [r["train/lr"] for r in read_metrics(tmp_path) if "train/lr" in r]
  assert rates == pytest.approx([0.01] * 8 + [0.001] * 4)  # flat after epoch 1: dropped for epoch 2
  model = state_lib.build_model(config, 12)
  tx = state_lib.make_optimizer(config)
  abstract = jax.eval_shape(lambda: state_lib.init_state(model, tx, 64, 0))
  restored, progress = restore_checkpoint(checkpoint_manager(tmp_path, 3), abstract)
  assert int(state_lib.lr_drops(restored.opt_state)) == 1 and progress["epoch"] == 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, devices, process_id, processes, port, env=None):
  return subprocess.Popen([sys.executable, str(REPO / "tests" / "multiprocess_train.py"), str(workdir), str(devices),
                           str(process_id), str(processes), str(port), "single"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_two_processes_train_like_one_and_each_reads_half(tmp_path):
  one = _launch(tmp_path / "one", 4, 0, 1, 0)
  out, _ = one.communicate(timeout=600)
  assert one.returncode == 0, out[-3000:]
  port = _free_port()
  procs = [_launch(tmp_path / "two", 2, i, 2, port) for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
  losses = {name: [r["train/loss"] for r in read_metrics(tmp_path / name) if "train/loss" in r] for name in ("one", "two")}
  assert len(losses["one"]) == 8
  np.testing.assert_allclose(losses["two"], losses["one"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(workdir_lib.load_run(tmp_path / "one")[2]),
                  jax.tree.leaves(workdir_lib.load_run(tmp_path / "two")[2])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  everything = json.loads((tmp_path / "one" / "decodes-0.json").read_text())
  halves = [json.loads((tmp_path / "two" / f"decodes-{i}.json").read_text()) for i in range(2)]
  for epoch in ("0", "1"):
    assert sorted(everything[epoch]) == list(range(64))
    assert len(halves[0][epoch]) == len(halves[1][epoch]) == 32  # each process decodes its half
    assert sorted(halves[0][epoch] + halves[1][epoch]) == list(range(64))
  # Evaluation (every validation and the final views) is split the same way, and every process
  # returns the one-process results.
  assert sorted(halves[0]["eval"] + halves[1]["eval"]) == sorted(everything["eval"])
  assert not set(halves[0]["eval"]) & set(halves[1]["eval"])
  results = [json.loads((tmp_path / name / f"result-{i}.json").read_text()) for name, i in (("one", 0), ("two", 0),
                                                                                           ("two", 1))]
  assert results[1] == results[2]
  views = [v for v, r in results[0].items() if isinstance(r, dict) and "top1_error" in r]
  assert views
  for view in views:
    one = results[0][view]
    for key in ("top1_error", "top5_error", "num_examples"):
      assert results[1][view][key] == one[key], (view, key)


@pytest.mark.slow
def test_a_sigterm_on_one_process_stops_both_at_the_same_saved_step(tmp_path):
  port = _free_port()
  procs = [_launch(tmp_path / "run", 2, i, 2, port, env={"SIGTERM_AT": "2"}) for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
  results = [json.loads((tmp_path / "run" / f"result-{i}.json").read_text()) for i in range(2)]
  assert results[0] == results[1] and results[0]["preempted"], results
  step = results[0]["global_step"]
  assert 2 <= step < 8  # stopped early, after the step the signal came in
  assert checkpoint_manager(tmp_path / "run", 3).latest_step() == step
