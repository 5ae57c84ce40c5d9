"""Detection configs: validated in full before anything is written; a changed config redoes only
the trained outputs that depend on the changed fields."""

from __future__ import annotations

import json
import pathlib
import runpy

import pytest

from sppnet_jax import workdir as workdir_lib
from sppnet_jax.detection import pipeline
from sppnet_jax.detection.config import detection_config, detection_config_problems, validate_detection_config


def _config():
  c = detection_config("synthetic", scales=(128,), num_train=2, num_test=1)
  c.trunk.width = 0.125
  c.trunk.fc_width = 32
  return c


def test_experiment_configs_are_valid():
  paths = sorted(pathlib.Path(__file__).parent.parent.glob("experiments/detection/*.py"))
  assert paths
  for path in paths:
    assert detection_config_problems(runpy.run_path(str(path))["get_config"]()) == [], path


def test_every_bad_field_is_named_in_one_line():
  c = _config()
  c.svm.C = -1
  c.finetune.fg_fraction = 2
  c.test.nms = 1.5
  with pytest.raises(ValueError) as e:
    validate_detection_config(c)
  message = str(e.value)
  assert "\n" not in message and message.startswith("invalid detection config (3 problems)")
  for part in ("svm.C=-1.0 is not allowed: a finite number > 0", "finetune.fg_fraction=2.0 is not allowed",
               "test.nms=1.5 is not allowed"):
    assert part in message
  c = _config()
  c.num_test = None
  c.finetune.bg_iou_low = 0.6
  c.finetune.update(batch_size=4, fg_fraction=0.9)
  problems = detection_config_problems(c)
  assert any(p.startswith("num_test=None is not allowed with dataset='synthetic'") for p in problems)
  assert any(p.startswith("finetune.bg_iou_low=0.6 is not allowed with finetune.bg_iou_high=0.5") for p in problems)
  assert any(p.startswith("finetune.fg_fraction=0.9 is not allowed with finetune.batch_size=4") for p in problems)


def test_refused_config_leaves_nothing_behind(tmp_path):
  bad = _config()
  bad.svm.C = -1
  with pytest.raises(ValueError, match="svm.C=-1.0"):
    pipeline.train_and_evaluate_detection(bad, tmp_path / "w", log=lambda s: None)
  assert not (tmp_path / "w").exists()
  # A proposal file that is not there is found before the train split's features are computed.
  missing = _config()
  missing.proposals.test_file = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    pipeline.train_and_evaluate_detection(missing, tmp_path / "w", log=lambda s: None)
  assert not (tmp_path / "w").exists()


def test_stale_outputs_follow_what_each_output_reads():
  system = ["system/finetune", "system/head", "system/svms", "system/bbox"]
  test = ["metrics.json", "detections.npz"]
  assert pipeline.stale_outputs([]) == []
  assert pipeline.stale_outputs(["test.nms"]) == test
  assert pipeline.stale_outputs(["num_test"]) == test
  assert pipeline.stale_outputs(["svm.C"]) == ["system/svms", *test]
  assert pipeline.stale_outputs(["bbox.lam"]) == ["system/bbox", *test]
  assert pipeline.stale_outputs(["finetune.lr"]) == ["system/finetune", "system/head", "system/svms", *test]
  assert pipeline.stale_outputs(["features.scales"]) == system + test
  assert pipeline.stale_outputs(["svm.C", "bbox.lam"]) == ["system/svms", "system/bbox", *test]


def _fake_outputs(workdir, names):
  for name in names:
    path = workdir / name
    if name.startswith("system/"):
      path.mkdir(parents=True)
      (path / "data").write_text("x")
    else:
      path.write_text("{}")


def test_a_changed_field_redoes_only_what_depends_on_it(tmp_path):
  config = _config()
  pipeline._write_config(config, tmp_path)
  _fake_outputs(tmp_path, ["system/head", "system/svms", "system/bbox", "metrics.json", "detections.npz"])
  changed = _config()
  changed.svm.C = 0.01
  with pytest.raises(workdir_lib.ConfigChangedError) as e:
    pipeline._write_config(changed, tmp_path)
  message = str(e.value)
  assert "svm.C" in message and "--start_over" in message
  assert "redoes system/svms, metrics.json, detections.npz" in message
  assert "keeps the cached features, system/head, system/bbox" in message
  assert (tmp_path / "system" / "svms").exists()
  pipeline._write_config(changed, tmp_path, start_over=True)
  assert (tmp_path / "system" / "head").exists() and (tmp_path / "system" / "bbox").exists()
  assert not (tmp_path / "system" / "svms").exists() and not (tmp_path / "metrics.json").exists()
  assert json.loads((tmp_path / "config.json").read_text())["svm"]["C"] == 0.01


def test_a_change_that_touches_no_existing_output_is_taken_without_start_over(tmp_path):
  """Fine-tuning finished, then the SVMs failed: the corrected svm.C is taken and the head kept."""
  config = _config()
  pipeline._write_config(config, tmp_path)
  _fake_outputs(tmp_path, ["system/head"])
  corrected = _config()
  corrected.svm.C = 0.002
  pipeline._write_config(corrected, tmp_path)
  assert (tmp_path / "system" / "head" / "data").exists()
  # A field the head reads is still refused.
  retuned = _config()
  retuned.finetune.lr = 0.5
  with pytest.raises(workdir_lib.ConfigChangedError, match="finetune.lr"):
    pipeline._write_config(retuned, tmp_path)
