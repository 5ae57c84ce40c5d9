"""A run's results stay tied to the checkpoint they were computed from, and damage to one file of a
workdir is reported as what it is: a fallback step never mixes with the newest one's results, a
damaged step never condemns its neighbours, an unreadable eval.json is set aside, and a changed
class list is not called corruption.

The workdirs here are built without training: train states of a tiny network holding random
parameters (each step from its own seed), saved as checkpoint steps."""

from __future__ import annotations

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from sppnet_jax import ablation, checkpoints, evaluate, report, state
from sppnet_jax import workdir as workdir_lib

from test_train import tiny_config

STEPS = (2, 4, 6)


def _config(data_name: str | None = None):
  config = tiny_config("single", epochs=1)
  config.data.update(num_eval=8)
  config.eval.update(views=("crop",), batch_size=8, train_subset_examples=4)
  if data_name is not None:
    config.data.update(name=data_name, num_train=None, num_eval=None, cache=False)
  return config


def _saved_state(config, tx, num_classes: int, seed: int) -> state.TrainState:
  """A train state of the run's structure holding random parameters drawn with ``seed`` (no
  compile: the structure comes from ``jax.eval_shape``)."""
  model = state.build_model(config, num_classes)
  abstract = jax.eval_shape(lambda: state.init_state(model, tx, config.data.crop_size, 0))
  rng = np.random.default_rng(seed)
  fill = lambda x: (rng.normal(0.0, 0.05, x.shape) if jnp.issubdtype(x.dtype, jnp.floating) else np.zeros(x.shape))
  state_ = jax.tree.map(lambda x: jnp.asarray(fill(x), x.dtype), abstract)
  return state_.replace(step=jnp.asarray(seed, jnp.int32))


def _make_run(workdir: pathlib.Path, config=None, num_classes: int = 12, steps=STEPS, legacy=()) -> pathlib.Path:
  """A workdir with ``config.json`` and one checkpoint per step, as training leaves it (the steps
  in ``legacy`` in the layout saved before the rate moved into the optimizer)."""
  config = config or _config()
  workdir_lib.write_config(config, workdir)
  manager = checkpoints.checkpoint_manager(workdir, 3)
  for k in steps:
    tx = state.legacy_optimizer(config) if k in legacy else state.make_optimizer(config)
    checkpoints.save_checkpoint(manager, _saved_state(config, tx, num_classes, k),
                                {"epoch": 1, "step": 0, "global_step": k})
  manager.wait_until_finished()
  return workdir


def _step_params(workdir: pathlib.Path, step: int):
  """The parameters saved at ``step``."""
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  legacy = workdir_lib.step_rate_in_optimizer(checkpoints.checkpoint_manager(workdir, 3), step) is False
  tx = state.legacy_optimizer(config) if legacy else state.make_optimizer(config)
  return _saved_state(config, tx, 12, step).params


def _flip_every_997th_byte(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  for i in range(0, len(data), 997):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _evaluate(workdir: pathlib.Path, train: bool = False) -> dict:
  """``sppnet evaluate --workdir DIR``: the newest intact checkpoint scored under the crop view
  (with ``train``, on the fixed training subset too) and recorded."""
  run = workdir_lib.load_trained_run(workdir)
  source = workdir_lib.config_source(run.config.data, "eval")
  fit = workdir_lib.config_source(run.config.data, "train") if train else None
  return evaluate.evaluate_run(run.model, run.params, source, config=run.config, mean=run.mean, workdir=workdir,
                               sweep=False, train_source=fit, step=run.step)


def _steps_in(results: dict) -> dict[str, int | None]:
  return {name: evaluate.entry_step(entry) for name, entry in evaluate.entries(results)}


def _warnings(caplog, logger: str = "sppnet_jax") -> str:
  return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith(logger))


def test_results_of_a_fallback_step_never_merge_with_the_newest_steps(tmp_path, caplog):
  run = _make_run(tmp_path / "run")
  _evaluate(run, train=True)
  first = evaluate.read_eval(run)
  assert _steps_in(first) == {"crop": 6, "train_subset/crop": 6}
  digest6 = first["crop"]["checkpoint"]["digest"]
  assert digest6 == checkpoints.params_digest(_step_params(run, 6))
  assert evaluate.record_checkpoint(run, "train:crop@64") == {"step": 6, "digest": digest6}

  _flip_every_997th_byte(_largest_file(run / "checkpoints" / "6"))
  with caplog.at_level(logging.WARNING):
    results = _evaluate(run)
  # Step 6 is damaged, so step 4 was scored; its result names step 4, and step 6's results are
  # set aside (the file copied whole), not left beside it.
  assert _steps_in(results) == {"crop": 4}
  assert _steps_in(evaluate.read_eval(run)) == {"crop": 4}
  assert json.loads((run / "eval.step6.json").read_text()) == first
  assert evaluate.record_checkpoint(run, "crop@64")["step"] == 4
  with pytest.raises(KeyError, match="no record 'train:crop@64'"):
    evaluate.load_mistakes(run, "train:crop@64")
  with np.load(run / "predictions.step6.npz") as kept:
    assert int(kept["train:crop@64/checkpoint_step"]) == 6
  warnings = _warnings(caplog, "sppnet_jax.evaluate")
  assert "eval.json held results of step 6" in warnings and "this evaluation is of step 4" in warnings
  assert "(crop, train_subset/crop)" in warnings and "predictions.npz held records of step 6" in warnings

  # Evaluated again, the training subset is of step 4 too: nothing is set aside now.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    _evaluate(run, train=True)
  assert not _warnings(caplog, "sppnet_jax.evaluate")
  assert _steps_in(evaluate.read_eval(run)) == {"crop": 4, "train_subset/crop": 4}
  assert evaluate.record_checkpoint(run, "train:crop@64")["step"] == 4


def test_the_step_scored_is_found_from_the_parameters_when_not_given(tmp_path):
  run = _make_run(tmp_path / "run")
  config, model, _, mean = workdir_lib.load_run(run)
  source = workdir_lib.config_source(config.data, "eval")
  results = evaluate.evaluate_run(model, _step_params(run, 4), source, config=config, mean=mean, workdir=run,
                                  sweep=False)
  assert results["crop"]["checkpoint"]["step"] == 4
  # Parameters no checkpoint holds are recorded with their digest and no step.
  other = jax.tree.map(lambda x: x + 1, _step_params(run, 4))
  assert evaluate.checkpoint_of(other, run)["step"] is None


def _mixed_run(root: pathlib.Path) -> pathlib.Path:
  """A run directory whose eval.json and predictions.npz hold the crop view of step 6 beside the
  full view of step 4, as an evaluation of a fallback step used to leave them."""
  run = root / "single"
  _make_run(run)
  at = lambda step: {"step": step, "digest": f"{step}" * 64}
  entry = lambda error, step: {"num_examples": 4, "top1_error": error, "top1_interval": [10.0, 90.0],
                               "top5_error": 0.0, "top5_interval": [0.0, 50.0], "checkpoint": at(step)}
  (run / evaluate.EVAL_FILE).write_text(json.dumps({"crop": entry(50.0, 6), "full": entry(25.0, 4)}))
  record = lambda step: {"index": np.arange(4), "top1_wrong": np.array([1, 1, 0, 0], bool),
                         "top5_wrong": np.zeros(4, bool), "checkpoint_step": np.int64(step),
                         "params_digest": np.str_(at(step)["digest"])}
  np.savez(run / evaluate.PREDICTIONS_FILE, **{f"{view}@64/{k}": v for view, step in (("crop", 6), ("full", 4))
                                               for k, v in record(step).items()})
  return run


def test_reports_mark_or_refuse_results_of_mixed_checkpoints(tmp_path):
  run = _mixed_run(tmp_path)
  with pytest.raises(ValueError, match=r"'full@64' is of step 4 .* but 'crop@64' of step 6"):
    evaluate.paired(run, run, "full@64", key_b="crop@64")
  assert evaluate.mixed_checkpoints(evaluate.read_eval(run)).startswith("crop: step 6")
  text = report.write_report([str(run)], str(tmp_path / "report.md"))
  rows = [line for line in text.splitlines() if line.startswith("| single")]
  assert [row.split(" | ")[5] for row in rows] == ["6 (mixed)", "4 (mixed)"]
  assert "**Warning: single mixes checkpoints** (crop: step 6" in text
  with pytest.raises(ValueError, match=r"single/eval.json holds results of different checkpoints \(crop: step 6"):
    ablation.write_ablation_report(tmp_path)


def test_a_damaged_metadata_file_condemns_only_its_own_step(tmp_path, caplog):
  run = _make_run(tmp_path / "run")
  metadata = run / "checkpoints" / "6" / "state" / "_METADATA"
  metadata.write_text(metadata.read_text()[:200])  # cut short: the optimizer layout cannot be read from it
  manager = checkpoints.checkpoint_manager(run, 3)
  assert workdir_lib.step_rate_in_optimizer(manager, 6) is None
  assert workdir_lib.rate_in_optimizer(manager)  # steps 4 and 2 say what the layout is
  with caplog.at_level(logging.WARNING, logger="sppnet_jax.checkpoints"):
    loaded = workdir_lib.load_trained_run(run)
  assert loaded.step == 4
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(_step_params(run, 4))):
    np.testing.assert_array_equal(a, b)
  assert "checkpoint step 6 in" in _warnings(caplog) and "_METADATA is unreadable" in _warnings(caplog)


def test_steps_of_different_optimizer_layouts_restore_each_in_its_own(tmp_path):
  # A step saved before the rate moved into the optimizer beside a newer, damaged one: the older
  # step is read in its own (legacy) layout, whatever the newest step's says.
  run = _make_run(tmp_path / "run", steps=(2, 4), legacy=(2,))
  _flip_every_997th_byte(_largest_file(run / "checkpoints" / "4"))
  loaded = workdir_lib.load_trained_run(run)
  assert loaded.step == 2
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(_step_params(run, 2))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_unreadable_eval_json_is_set_aside_and_the_new_results_kept(tmp_path, caplog):
  run = _make_run(tmp_path / "run", steps=(2,))
  broken = '{"crop": {"num_examples": 8, "top1_err'
  (run / evaluate.EVAL_FILE).write_text(broken)
  (run / evaluate.PREDICTIONS_FILE).write_bytes(b"PK\x03\x04 cut short")
  with pytest.raises(ValueError, match=r"run/eval.json is not valid JSON \(.*line 1.*\); evaluate the run again"):
    evaluate.read_eval(run)
  with pytest.raises(ValueError, match=r"run/eval.json is not valid JSON"):
    report.load_runs([str(run)])
  with caplog.at_level(logging.WARNING, logger="sppnet_jax.evaluate"):
    results = _evaluate(run)
  set_aside = sorted(p.name for p in run.iterdir() if ".corrupt-" in p.name)
  assert [name.split(".corrupt-")[0] for name in set_aside] == ["eval.json", "predictions.npz"]
  assert (run / set_aside[0]).read_text() == broken
  assert evaluate.read_eval(run) == json.loads(json.dumps(results))
  assert evaluate.record_checkpoint(run, "crop@64")["step"] == 2
  assert f"{run / 'eval.json'} could not be read" in _warnings(caplog)
  assert not [p for p in run.iterdir() if "tmp" in p.name]


def _folder_dataset(root: pathlib.Path, classes=("dark", "light")) -> None:
  for split, n in (("train", 2), ("validation", 1)):
    for k, cls in enumerate(classes):
      folder = root / split / cls
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(n):
        Image.fromarray(np.full((72, 80, 3), 60 * k, np.uint8)).save(folder / f"{i:02d}.png")


def test_a_changed_class_list_is_reported_as_such_not_as_corruption(tmp_path):
  data = tmp_path / "data"
  _folder_dataset(data)
  run = _make_run(tmp_path / "run", _config(f"folder:{data}"), num_classes=2, steps=(2,))
  assert workdir_lib.load_trained_run(run).step == 2  # no classes.json: the data's two folders fit
  _folder_dataset(data, classes=("dark", "light", "medium"))
  with pytest.raises(ValueError, match=r"checkpoints classify 2 classes but the dataset folder:.* now has 3 class "
                                       r"folders, and .*classes.json .* is missing") as info:
    workdir_lib.load_run(run)
  assert not isinstance(info.value, checkpoints.CorruptCheckpointError)
  (run / "classes.json").write_text(json.dumps({"class_names": ["dark", "light", "medium"]}))
  with pytest.raises(ValueError, match=r"classes.json lists 3 classes but the run's checkpoints classify 2"):
    workdir_lib.load_run(run)
