"""Training-loop tests: real training of a tiny SPP-net on the built-in synthetic data."""

from __future__ import annotations

import atexit
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from sppnet_jax import configs, train
from sppnet_jax import workdir as workdir_lib
from sppnet_jax.compile_count import count_compiles
from sppnet_jax.data import pipeline
from sppnet_jax.metrics_io import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY_OVERRIDES = """
  c.model.width = 0.0625
  c.model.channels = None
  c.model.fc_width = 32
  c.data.update(num_train=64, num_eval=32, crop_size=64, short_side=72, second_size=52, mean_samples=16)
  c.train.update(batch_size=16, num_epochs={epochs}, log_every_steps=1, checkpoint_every_steps={ckpt},
                 lr_drop_epochs=(), optimizer="sgd", learning_rate=0.01, progress_bar=False, eval_every_epochs=1,
                 full_short_range=(52, 72), full_bucket=32)
  if c.train.mode == "full":  # 5-6 filled buckets of 8 per epoch, in 4-5 shapes
    c.train.batch_size = 8
  c.eval.update(views=("crop",), batch_size=16, sweep_sizes=(), train_subset_examples=16)
"""


def tiny_config(mode: str = "multi", epochs: int = 2, ckpt: int = 2):
  c = configs.synthetic(mode)
  namespace = {"c": c}
  exec("def f():\n" + TINY_OVERRIDES.format(epochs=epochs, ckpt=ckpt), namespace)
  namespace["f"]()
  return c


def write_config_file(path: pathlib.Path, mode: str, epochs: int, ckpt: int) -> pathlib.Path:
  path.write_text("from sppnet_jax import configs\n\n\ndef get_config():\n"
                  f"  c = configs.synthetic({mode!r})\n" + TINY_OVERRIDES.format(epochs=epochs, ckpt=ckpt) +
                  "  return c\n")
  return path


# The command-line runs of the tests share one persistent compilation cache, so a command run
# again (a reference, then an interrupted run and its resumption) loads the programs the first
# one compiled instead of compiling them again; the programs are the same, so are the results.
CLI_COMPILATION_CACHE = {"JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="sppnet-tests-xla-"),
                         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
atexit.register(shutil.rmtree, CLI_COMPILATION_CACHE["JAX_COMPILATION_CACHE_DIR"], True)


def run_cli(args, env=None, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "sppnet_jax.cli", *args], cwd=REPO,
                          env={**os.environ, **CLI_COMPILATION_CACHE, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kwargs)


def final_params(workdir):
  _, _, params, _ = workdir_lib.load_run(workdir)
  return jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("device_augment", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_multi_size_trains_with_one_compile_per_size(tmp_path, device_augment):
  config = tiny_config("multi", epochs=4)
  config.data.device_augment = device_augment  # True: uint8 canvases in, resampled and resized to 52 inside the step
  with count_compiles() as compiles:
    results = train.train_and_evaluate(config, tmp_path)
  steps = {name: n for name, n in compiles.items() if "train_step" in name}
  assert sum(steps.values()) == 2, compiles  # 64 and 52, each compiled once for the whole run
  records = read_metrics(tmp_path)
  sizes = [r["train/input_h"] for r in records if "train/input_h" in r]
  assert sizes[:4] == [64] * 4 and sizes[4:8] == [52] * 4 and sizes[8:12] == [64] * 4
  losses = [r["train/loss"] for r in records if "train/loss" in r]
  assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
  assert 0 <= results["crop"]["top1_error"] <= 100
  assert (tmp_path / "eval.json").exists() and (tmp_path / "tensorboard").is_dir()


def test_size_schedules():
  c = configs.synthetic("multi")
  assert train.size_schedule(c)[:4] == [96, 77, 96, 77]
  c = configs.synthetic("random")
  sizes = train.size_schedule(c)
  assert all(77 <= s <= 96 for s in sizes) and sizes == train.size_schedule(c)
  c.train.mode = "sideways"
  with pytest.raises(ValueError, match=r"one of \('single', 'multi', 'random', 'full'\); got 'sideways'"):
    train.size_schedule(c)


@pytest.mark.parametrize("device_augment", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_full_mode_compiles_once_per_bucket_shape(tmp_path, device_augment):
  config = tiny_config("full", epochs=3)
  config.data.device_augment = device_augment  # True: resized uint8 images in, finished inside the step
  with count_compiles() as compiles:
    train.train_and_evaluate(config, tmp_path)
  records = [r for r in read_metrics(tmp_path) if "train/input_h" in r]
  shapes = {(r["train/input_h"], r["train/input_w"]) for r in records}
  assert [r["step"] for r in records] == list(range(1, len(records) + 1))  # every step's shape is logged
  assert len(records) >= 3 * 5 and len(shapes) > 1, shapes
  assert all(h % 32 == 0 and w % 32 == 0 for h, w in shapes), shapes
  steps = sum(n for name, n in compiles.items() if "train_step" in name)
  assert steps == len(shapes), (compiles, shapes)  # one compile per bucket shape for the whole run


# One real SIGKILL in the default tier (multi-size, the mode with two compiled steps); the whole-image
# mode and worker processes in the slow tier.
@pytest.mark.parametrize("mode,workers", [("multi", 0), pytest.param("full", 0, marks=pytest.mark.slow),
                                          pytest.param("multi", 1, marks=pytest.mark.slow)])
def test_sigkill_and_resume_gives_the_uninterrupted_parameters(tmp_path, mode, workers):
  config_file = write_config_file(tmp_path / "tiny.py", mode, epochs=3, ckpt=1)
  reference = tmp_path / "reference"
  assert run_cli(["train", f"--config={config_file}", f"--workdir={reference}"]).wait(300) == 0
  reading = [f"--config.data.worker_count={workers}"]  # the reference read in-process

  interrupted = tmp_path / "interrupted"
  kill_at = int(np.random.default_rng().integers(2, 10))
  proc = run_cli(["train", f"--config={config_file}", f"--workdir={interrupted}", *reading])
  deadline = time.time() + 300
  while time.time() < deadline:
    steps = [r["step"] for r in read_metrics(interrupted)] if (interrupted / "metrics.jsonl").exists() else []
    if steps and max(steps) >= kill_at:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert run_cli(["train", f"--config={config_file}", f"--workdir={interrupted}", *reading]).wait(300) == 0

  for a, b in zip(jax.tree.leaves(final_params(reference)), jax.tree.leaves(final_params(interrupted))):
    np.testing.assert_array_equal(a, b)
  steps = [r["step"] for r in read_metrics(interrupted) if "train/loss" in r]
  assert steps == sorted(set(steps))  # replayed steps were not logged twice


def test_sigterm_saves_and_exits_cleanly(tmp_path):
  config_file = write_config_file(tmp_path / "tiny.py", "single", epochs=50, ckpt=1000)
  proc = run_cli(["train", f"--config={config_file}", f"--workdir={tmp_path / 'run'}"])
  deadline = time.time() + 300
  while time.time() < deadline and not read_metrics(tmp_path / "run"):
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert '"preempted": true' in out
  step = json.loads(out[out.index("{"):])["global_step"]
  manager = train.checkpoint_manager(tmp_path / "run", 3)
  assert manager.latest_step() == step


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  config = tiny_config("single", epochs=2, ckpt=2)
  original = pipeline.train_batches

  def poisoned(*args, **kwargs):
    for i, batch in enumerate(original(*args, **kwargs)):
      if kwargs["epoch"] == 1 and i == 1:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(pipeline, "train_batches", poisoned)
  with pytest.raises(train.NonFiniteError, match="last good checkpoint"):
    train.train_and_evaluate(config, tmp_path)
  manager = train.checkpoint_manager(tmp_path, 3)
  assert manager.latest_step() == 4  # the end of epoch 0; the poisoned step 6 was never saved
  for leaf in jax.tree.leaves(final_params(tmp_path)):
    assert np.isfinite(leaf).all()


def test_eight_devices_give_the_same_loss_as_one(tmp_path):
  # Also the paper's mean-image normalisation (the synthetic configs standardise per image).
  config_file = write_config_file(tmp_path / "tiny.py", "single", epochs=1, ckpt=1000)
  losses = {}
  for devices in (1, 8):
    workdir = tmp_path / f"devices{devices}"
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = run_cli(["train", f"--config={config_file}", f"--workdir={workdir}", "--config.data.normalize=mean_image"],
                   env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (workdir / "mean.npy").exists()
    losses[devices] = [r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r]
  np.testing.assert_allclose(losses[8], losses[1], rtol=2e-4)


def test_changed_config_in_an_existing_workdir_is_refused(tmp_path):
  config = tiny_config("single", epochs=1)
  train.train_and_evaluate(config, tmp_path)
  config.model.fc_width = 64
  with pytest.raises(ValueError, match="model.fc_width differ"):
    train.train_and_evaluate(config, tmp_path)


def test_unknown_input_normalisation_is_refused(tmp_path):
  config = tiny_config("single", epochs=1)
  config.data.normalize = "zscore"
  with pytest.raises(ValueError, match="data.normalize='zscore' is not allowed"):
    train.train_and_evaluate(config, tmp_path)
