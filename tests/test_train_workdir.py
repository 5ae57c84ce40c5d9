"""Workdirs that survive mistakes: config changes before the first checkpoint, extending a run,
a bad evaluation image after the epoch's save, skipped training images, Ctrl-C and resume."""

from __future__ import annotations

import json
import pathlib
import signal
import time

import jax
import numpy as np
import pytest
from PIL import Image

from sppnet_jax import train, workdir
from sppnet_jax.metrics_io import read_metrics

from test_train import final_params, run_cli, tiny_config, write_config_file


def _write_config(workdir: pathlib.Path, config) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort())


def test_a_workdir_without_checkpoints_takes_a_changed_config(tmp_path):
  old = tiny_config("single")
  _write_config(tmp_path, old)
  new = tiny_config("multi")
  train.check_workdir_config(new, tmp_path)  # no checkpoint yet: nothing to protect
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  with pytest.raises(ValueError, match="train.mode"):
    train.check_workdir_config(new, tmp_path)


def test_logging_fields_never_count_and_extend_allows_a_longer_schedule(tmp_path):
  old = tiny_config("single", epochs=2)
  _write_config(tmp_path, old)
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  logging_only = tiny_config("single", epochs=2)
  logging_only.train.update(log_every_steps=7, progress_bar=True)
  train.check_workdir_config(logging_only, tmp_path)
  longer = tiny_config("single", epochs=5)
  longer.train.lr_drop_epochs = (4,)
  with pytest.raises(ValueError, match=r"sppnet train --extend"):
    train.check_workdir_config(longer, tmp_path)
  train.check_workdir_config(longer, tmp_path, extend=True)
  longer.model.fc_width = 64
  with pytest.raises(ValueError, match="model.fc_width"):
    train.check_workdir_config(longer, tmp_path, extend=True)  # extend never covers the model


def test_one_config_policy_refuses_unless_starting_over(tmp_path):
  old = {"a": {"b": 1, "c": [1, 2]}, "log": 3}
  assert workdir.write_config(old, tmp_path) == []
  new = {"a": {"b": 2, "c": [1, 2]}, "log": 4, "d": 5}
  outputs = lambda w: (w / "out.npz").exists()
  assert workdir.write_config(new, tmp_path, has_outputs=outputs, ignore=("log",)) == ["a.b", "d"]  # no outputs yet
  (tmp_path / "out.npz").write_bytes(b"")
  with pytest.raises(workdir.ConfigChangedError, match=r"a\.b, d, log differ.*go on"):
    workdir.write_config(old, tmp_path, has_outputs=outputs, hint="go on")
  assert json.loads((tmp_path / "config.json").read_text())["a"]["b"] == 2  # nothing written when refused
  assert workdir.write_config(old, tmp_path, has_outputs=outputs, start_over=True) == ["a.b", "d", "log"]
  assert json.loads((tmp_path / "config.json").read_text()) == old
  assert workdir.config_changes({"a": {"b": 1}}, {"a": {"b": 9}}, ignore=("a",)) == []


def _folder_dataset(root: pathlib.Path, corrupt: str) -> None:
  """Two classes of 16 training and 4 validation images; one file of split ``corrupt`` does not decode."""
  rng = np.random.default_rng(0)
  for split, n in (("train", 16), ("validation", 4)):
    for k, cls in enumerate(("dark", "light")):
      folder = root / split / cls
      folder.mkdir(parents=True)
      for i in range(n):
        pixels = rng.integers(0, 100, (72, 80, 3)) + 120 * k
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:02d}.png")
  (root / corrupt / "light" / "00.png").write_bytes(b"not a png at all")


def _folder_config(root: pathlib.Path, epochs: int = 1):
  config = tiny_config("single", epochs=epochs, ckpt=1000)
  config.data.update(name=f"folder:{root}", num_train=None, num_eval=None, cache=False)
  return config


def test_a_bad_evaluation_image_comes_after_the_epoch_is_saved(tmp_path):
  _folder_dataset(tmp_path / "data", corrupt="validation")
  config = _folder_config(tmp_path / "data")
  with pytest.raises(ValueError, match="00.png"):
    train.train_and_evaluate(config, tmp_path / "run")
  manager = train.checkpoint_manager(tmp_path / "run", 3)
  assert manager.latest_step() == 2  # 32 images / batch 16: the epoch's checkpoint exists
  assert json.loads((tmp_path / "run" / "classes.json").read_text())["class_names"] == ["dark", "light"]


def test_skipped_training_images_are_counted_in_the_metrics(tmp_path):
  _folder_dataset(tmp_path / "data", corrupt="train")
  config = _folder_config(tmp_path / "data")
  config.data.on_bad_image = "skip"
  train.train_and_evaluate(config, tmp_path / "run")
  counts = [r["data/skipped_images"] for r in read_metrics(tmp_path / "run") if "data/skipped_images" in r]
  assert counts and counts[-1] == 1


def test_ctrl_c_saves_exits_cleanly_and_resumes_to_the_same_parameters(tmp_path):
  config_file = write_config_file(tmp_path / "tiny.py", "single", epochs=3, ckpt=1000)
  reference = tmp_path / "reference"
  assert run_cli(["train", f"--config={config_file}", f"--workdir={reference}"]).wait(300) == 0

  run = tmp_path / "run"
  proc = run_cli(["train", f"--config={config_file}", f"--workdir={run}"])
  deadline = time.time() + 300
  while time.time() < deadline and not ((run / "metrics.jsonl").exists()
                                        and any("train/loss" in r for r in read_metrics(run))):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert '"preempted": true' in out and "Traceback" not in out
  assert not [p for p in (run / "checkpoints").iterdir() if "tmp" in p.name]  # no half-written step
  assert run_cli(["train", f"--config={config_file}", f"--workdir={run}"]).wait(300) == 0
  for a, b in zip(jax.tree.leaves(final_params(reference)), jax.tree.leaves(final_params(run))):
    np.testing.assert_array_equal(a, b)


def test_a_run_saved_before_the_rate_moved_into_the_optimizer_loads_but_does_not_resume(tmp_path):
  from sppnet_jax import state
  from sppnet_jax.checkpoints import checkpoint_manager, save_checkpoint
  config = tiny_config("single", epochs=1)
  old = state.init_state(state.build_model(config, 12), state.legacy_optimizer(config), 64, 3)
  workdir.write_config(config, tmp_path)
  manager = checkpoint_manager(tmp_path, 3)
  save_checkpoint(manager, old, {"epoch": 1, "step": 0, "global_step": 4})
  manager.wait_until_finished()
  _, _, params, mean = workdir.load_run(tmp_path)
  assert mean == "per_image"
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(old.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Training cannot resume such a run: a clear error, and the checkpoint is left as it was.
  with pytest.raises(ValueError, match="cannot resume them"):
    train.train_and_evaluate(config, tmp_path)
  assert checkpoint_manager(tmp_path, 3).all_steps() == [4]


def test_a_metrics_file_cut_short_is_read_and_a_damaged_one_names_its_line(tmp_path):
  from sppnet_jax.metrics_io import MetricWriter, read_metrics
  good = '{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/loss": 2.4}\n'
  (tmp_path / "metrics.jsonl").write_text(good + '{"step": 3, "train/lo')  # killed while writing
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
  writer = MetricWriter(tmp_path, drop_after_step=2)  # resuming rewrites the file without the broken line
  writer.write(3, {"train/loss": 2.3})
  writer.close()
  assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
    read_metrics(tmp_path)


def test_extend_only_lengthens_and_a_refusal_rewrites_nothing(tmp_path):
  old = tiny_config("single", epochs=3)
  old.train.lr_drop_epochs = (2,)
  workdir.write_config(old, tmp_path)
  (tmp_path / "checkpoints" / "12").mkdir(parents=True)
  written = (tmp_path / "config.json").read_bytes()
  shorter = tiny_config("single", epochs=2)
  shorter.train.lr_drop_epochs = (2,)
  with pytest.raises(workdir.ConfigChangedError, match=r"can only lengthen: train.num_epochs=2 is below the run's 3"):
    train.check_workdir_config(shorter, tmp_path, extend=True)
  with pytest.raises(workdir.ConfigChangedError, match="train.num_epochs=2 is below"):
    train.train_and_evaluate(shorter, tmp_path, extend=True)
  assert (tmp_path / "config.json").read_bytes() == written
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "config.json"]  # no metrics, no lock left
  moved = tiny_config("single", epochs=5)
  moved.train.lr_drop_epochs = (1, 4)  # a drop inside the epochs already trained
  with pytest.raises(workdir.ConfigChangedError, match=r"train.lr_drop_epochs=\(1, 4\) moves drops"):
    train.check_workdir_config(moved, tmp_path, extend=True)
  longer = tiny_config("single", epochs=5)
  longer.train.lr_drop_epochs = (2, 4)
  train.check_workdir_config(longer, tmp_path, extend=True)
  same = tiny_config("single", epochs=3)
  same.train.lr_drop_epochs = (2,)
  train.check_workdir_config(same, tmp_path, extend=True)


@pytest.mark.parametrize("text,what", [("", "it is empty"), ('{"model": {"name": "zf5"', "it is cut short at line 1"),
                                       ('{"model": nan-ish}', "Expecting value at line 1, column 11")])
def test_a_damaged_config_json_is_named_with_the_way_out(tmp_path, text, what):
  (tmp_path / "config.json").write_text(text)
  expected = (f"{tmp_path / 'config.json'} is not valid JSON ({what}); delete it to let this run's config be written "
              "again, or restore it")
  with pytest.raises(ValueError) as info:
    train.train_and_evaluate(tiny_config("single", epochs=1), tmp_path)
  assert str(info.value) == expected
  assert (tmp_path / "config.json").read_text() == text
  with pytest.raises(ValueError) as info:
    workdir.read_config(tmp_path)
  assert str(info.value) == expected


def test_config_json_is_written_whole(tmp_path, monkeypatch):
  import errno
  import os
  from sppnet_jax import run_files
  workdir.write_config({"a": 1}, tmp_path)

  def disk_full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(run_files.os, "fsync", disk_full)
  with pytest.raises(OSError, match="No space left"):
    workdir.write_config({"a": 2, "b": "x" * 10_000}, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}  # the old file, whole
  assert os.listdir(tmp_path) == ["config.json"]  # no partial file left


def test_crop_size_too_small_for_the_network_names_the_field_and_writes_nothing(tmp_path):
  config = tiny_config("single", epochs=1)
  config.data.crop_size = 20  # the slim ZF-5 takes at least 25 px
  with pytest.raises(ValueError, match=r"data.crop_size=20 is too small for this network: an integer in \[25, 72\]"):
    train.train_and_evaluate(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def _poisoned_after(steps: int):
  """``train.make_train_step`` whose steps from the ``steps``-th on report a non-finite loss."""
  original = train.make_train_step

  def make(model, tx, padded=False):
    step = original(model, tx, padded)

    def train_step(state, *args):
      new, metrics = step(state, *args)
      return new, {**metrics, "finite": metrics["finite"] & (state.step < steps)}

    return train_step

  return make


def test_after_a_non_finite_stop_the_advised_lower_rate_resumes_the_run(tmp_path, monkeypatch):
  config = tiny_config("single", epochs=1, ckpt=2)  # 4 steps; checkpoint at step 2
  with monkeypatch.context() as patch:
    patch.setattr(train, "make_train_step", _poisoned_after(3))
    with pytest.raises(train.NonFiniteError) as info:
      train.train_and_evaluate(config, tmp_path)
  message = str(info.value)
  assert "is step 2; rerun to resume from it, with a lower train.learning_rate" in message
  lower = tiny_config("single", epochs=1, ckpt=2)
  lower.train.learning_rate = 0.005
  train.train_and_evaluate(lower, tmp_path)  # resumes from step 2 under the advised change
  assert json.loads((tmp_path / "config.json").read_text())["train"]["learning_rate"] == 0.005
  assert [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r] == [1, 2, 3, 4]
  lower.train.learning_rate = 0.001  # a checkpoint was saved since: the run is protected again
  with pytest.raises(workdir.ConfigChangedError, match="train.learning_rate differ"):
    train.check_workdir_config(lower, tmp_path)
