"""The sppnet command line: one-line errors, per-command help, check-data, and detect's drawing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet_jax.data import check, sources
from sppnet_jax.detection import config as config_lib
from sppnet_jax.detection import pipeline

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC = str(REPO / "experiments" / "synthetic" / "scale_single.py")


def sppnet(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
  full_env = {k: v for k, v in os.environ.items() if k != "SPPNET_TRACEBACK"}
  full_env.update({"JAX_PLATFORMS": "cpu", **(env or {})})
  return subprocess.run([sys.executable, "-m", "sppnet_jax.cli", *args], cwd=cwd, env=full_env, capture_output=True,
                        text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
  assert proc.returncode == 2, (proc.stdout, proc.stderr)
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert lines[0].startswith(f"sppnet {command}: error: "), lines[0]
  return lines[0]


# --- errors ---------------------------------------------------------------------------------------

def test_evaluate_takes_eval_overrides_only():
  from absl import app

  from sppnet_jax import cli, configs
  config = configs.synthetic("single")
  cli._apply_eval_overrides(config, ["--config.eval.batch_size=16", "--config.eval.views=('crop','multiview')",
                                     "--config.eval.multiview_scales=[112,128]"])
  assert config.eval.batch_size == 16 and tuple(config.eval.views) == ("crop", "multiview")
  assert tuple(config.eval.multiview_scales) == (112, 128)
  with pytest.raises(app.UsageError, match="only --config.eval.FIELD=VALUE"):
    cli._apply_eval_overrides(config, ["--config.model.width=2"])
  with pytest.raises(app.UsageError, match="no field eval.bach_size"):
    cli._apply_eval_overrides(config, ["--config.eval.bach_size=8"])
  with pytest.raises(ValueError, match="eval.batch_size=0"):
    cli._apply_eval_overrides(config, ["--config.eval.batch_size=0"])


def test_evaluate_of_a_missing_workdir_is_one_line(tmp_path):
  line = _one_error_line(sppnet("evaluate", f"--workdir={tmp_path / 'none'}", "--config.eval.batch_size=8"),
                         "evaluate")
  assert "not a training workdir" in line

def test_a_misspelt_override_shows_the_did_you_mean_hint(tmp_path):
  proc = sppnet("train", f"--config={SYNTHETIC}", "--config.train.learning_rat=0.1", f"--workdir={tmp_path / 'w'}")
  line = _one_error_line(proc, "train")
  assert "--config.train.learning_rat" in line and 'Did you mean "learning_rate"' in line
  assert "\\n" not in line and not (tmp_path / "w").exists()


def test_a_bad_value_is_one_line_and_creates_no_workdir(tmp_path):
  proc = sppnet("train", f"--config={SYNTHETIC}", "--config.train.learning_rate=0", f"--workdir={tmp_path / 'w'}")
  line = _one_error_line(proc, "train")
  assert "train.learning_rate=0.0 is not allowed" in line
  assert not (tmp_path / "w").exists()


def test_traceback_on_request(tmp_path):
  args = ("train", f"--config={SYNTHETIC}", "--config.train.batch_size=0", f"--workdir={tmp_path / 'w'}")
  for proc in (sppnet(*args, "--traceback"), sppnet(*args, env={"SPPNET_TRACEBACK": "1"})):
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "train.batch_size=0" in proc.stderr


def test_a_missing_config_file_and_unknown_flags(tmp_path):
  line = _one_error_line(sppnet("train", f"--config={tmp_path / 'nope.py'}", "--workdir=w"), "train")
  assert line.endswith(f"config file not found: {tmp_path / 'nope.py'}")
  assert "bogus" in _one_error_line(sppnet("summary", "--bogus"), "summary")
  assert "--workdir is required" in _one_error_line(sppnet("evaluate"), "evaluate")
  assert "is not a training workdir" in _one_error_line(sppnet("evaluate", f"--workdir={tmp_path}"), "evaluate")
  proc = sppnet("frobnicate")
  assert proc.returncode == 2 and "unknown command 'frobnicate'" in proc.stderr


def _in_process_error(capsys, *argv: str) -> str:
  """The one error line of ``sppnet ARGV`` run in this process (for errors found before any work)."""
  from sppnet_jax import cli
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["sppnet", *argv])
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  return lines[0]


def test_repeated_stray_and_empty_arguments_are_refused(tmp_path, capsys):
  # A tuple override given twice would be appended by absl, not replaced.
  line = _in_process_error(capsys, "train", f"--config={SYNTHETIC}", "--config.model.levels=(4,3,2,1)",
                           "--config.model.levels=(2,1)", f"--workdir={tmp_path / 'w'}")
  assert line.endswith("--config.model.levels is given 2 times; give each override once.")
  line = _in_process_error(capsys, "evaluate", f"--workdir={tmp_path}", "--config.eval.views=('crop',)",
                           "--config.eval.views=('full',)")
  assert "--config.eval.views is given 2 times" in line
  # An override without its dashes used to be ignored, and the run trained with the default.
  line = _in_process_error(capsys, "train", f"--config={SYNTHETIC}", "config.train.num_epochs=1",
                           f"--workdir={tmp_path / 'w'}")
  assert line.endswith("config.train.num_epochs=1: an override needs its leading dashes: --config.train.num_epochs=1")
  assert "unexpected argument 'extra'" in _in_process_error(capsys, "summary", "extra")
  # An empty workdir used to train into the current directory; a file is not a workdir.
  line = _in_process_error(capsys, "train", f"--config={SYNTHETIC}", "--workdir=")
  assert line.endswith("--workdir is empty; give a path, e.g. --workdir=runs/my_run.")
  (tmp_path / "file").write_text("x")
  for command in ("train", "ablation", "budget-curve"):
    args = (f"--config={SYNTHETIC}",) if command == "train" else ()
    line = _in_process_error(capsys, command, *args, f"--workdir={tmp_path / 'file'}")
    assert line.endswith("is a file, not a directory; give a new or existing run directory."), line
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command,flags", [("train", ["--config", "--workdir", "--extend"]),
                                           ("detect", ["--start_over", "--image", "--top_k", "--score_threshold", "--out"]),
                                           ("check-data", ["--config", "--split", "--workers"]),
                                           ("summary", ["--model", "--size", "--nospp"])])
def test_each_command_has_its_own_help(command, flags):
  proc = sppnet(command, "--help")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f"usage: sppnet {command}")
  for flag in flags + ["--traceback"]:
    assert f"  {flag}: " in proc.stdout
  assert "--quick" not in proc.stdout or command == "bench"
  top = sppnet("--help")
  assert top.returncode == 0 and "sppnet check-data" in top.stdout


# --- check-data -----------------------------------------------------------------------------------

def _folder(root: Path) -> None:
  for split, n in (("train", 3), ("validation", 2)):
    for cls, colour in (("ant", 40), ("bee", 200)):
      (root / split / cls).mkdir(parents=True)
      for i in range(n):
        Image.fromarray(np.full((20, 24, 3), colour, np.uint8)).save(root / split / cls / f"{cls}{i}.png")


def _config_file(tmp_path: Path, data_root: Path) -> Path:
  path = tmp_path / "folder_config.py"
  path.write_text("from sppnet_jax import configs\n\n\ndef get_config():\n  c = configs.synthetic('single')\n"
                  f"  c.data.name = 'folder:{data_root}'\n  c.data.num_train = None\n  c.data.num_eval = None\n"
                  "  c.data.cache = False\n  return c\n")
  return path


def test_check_data_lists_every_undecodable_example(tmp_path):
  _folder(tmp_path / "data")
  (tmp_path / "data" / "train" / "bee" / "bee1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
  (tmp_path / "data" / "validation" / "ant" / "ant0.png").write_bytes(b"")
  config = _config_file(tmp_path, tmp_path / "data")
  proc = sppnet("check-data", f"--config={config}", "--workers=2")
  assert proc.returncode == 1, proc.stderr
  out = proc.stdout
  assert "train split 'train': 6 examples, 1 undecodable" in out
  assert "eval split 'validation': 4 examples, 1 undecodable" in out
  assert f"[4] {tmp_path / 'data' / 'train' / 'bee' / 'bee1.png'}: CorruptImageError" in out
  assert f"[0] {tmp_path / 'data' / 'validation' / 'ant' / 'ant0.png'}: CorruptImageError" in out
  assert "2 undecodable example(s)" in out
  only_eval = sppnet("check-data", f"--config={config}", "--split=eval")
  assert "train split" not in only_eval.stdout and "eval split" in only_eval.stdout
  (tmp_path / "data" / "train" / "bee" / "bee1.png").unlink()
  (tmp_path / "data" / "validation" / "ant" / "ant0.png").unlink()
  clean = sppnet("check-data", f"--config={config}")
  assert clean.returncode == 0 and "all examples decode." in clean.stdout


def test_check_source_runs_in_parallel_and_names_files():
  class Slow:
    """Reading takes 50 ms; examples 3 and 7 fail."""

    def __len__(self):
      return 12

    def filename(self, i):
      return f"img{i}.jpg"

    def __getitem__(self, i):
      time.sleep(0.05)
      if i in (3, 7):
        raise sources.CorruptImageError(f"cannot decode image file 'img{i}.jpg'")
      return {"image": np.zeros((1, 1, 3), np.uint8), "label": 0}

  calls = []
  bad, seconds = check.check_source(Slow(), workers=6, block=5, progress=lambda d, n: calls.append((d, n)))
  assert [(b.index, b.filename) for b in bad] == [(3, "img3.jpg"), (7, "img7.jpg")]
  assert bad[0].error.startswith("CorruptImageError: cannot decode")
  assert calls == [(5, 12), (10, 12), (12, 12)]
  assert seconds < 12 * 0.05 * 0.7  # 12 serial reads would take 0.6 s


def test_check_data_refuses_an_unknown_split():
  with pytest.raises(ValueError, match="--split must be one of"):
    check.check_data(None, "test")


# --- detect ---------------------------------------------------------------------------------------

def test_select_drawn_hand_computed():
  scores = np.array([0.2, -1.0, 3.0, 0.7, 0.7, -0.5])
  shown, why = pipeline.select_drawn(scores, top_k=3)
  assert list(shown) == [2, 3, 4] and why == "6 detections; drew 3 (top_k=3), scores 3 to 0.7"
  shown, why = pipeline.select_drawn(scores, top_k=10, score_threshold=0.5)
  assert list(shown) == [2, 3, 4] and why == "6 detections; drew 3 (3 score above score_threshold=0.5), scores 3 to 0.7"
  shown, why = pipeline.select_drawn(scores, top_k=2, score_threshold=0.0)
  assert list(shown) == [2, 3]
  assert why == "6 detections; drew 2 (4 score above score_threshold=0; top_k=2), scores 3 to 0.7"
  shown, why = pipeline.select_drawn(scores, top_k=10, score_threshold=5.0)
  assert list(shown) == [] and why == "6 detections; drew 0 (0 score above score_threshold=5)"
  shown, why = pipeline.select_drawn(np.zeros(0), top_k=10)
  assert list(shown) == [] and "no detections" in why
  assert list(pipeline.select_drawn(scores, top_k=None)[0]) == [2, 3, 4, 0, 5, 1]


def test_draw_detections_draws_boxes_with_labels(tmp_path):
  image = np.full((100, 160, 3), 255, np.uint8)
  det = {"boxes": np.array([[20.0, 30.0, 80.0, 90.0], [100.0, 10.0, 150.0, 60.0]]), "scores": np.array([2.5, 0.1]),
         "labels": np.array([1, 2])}
  pipeline.draw_detections(image, det, ["circle", "square"], [0], tmp_path / "one.png")
  pipeline.draw_detections(image, det, ["circle", "square"], [], tmp_path / "none.png")
  one = np.asarray(Image.open(tmp_path / "one.png").convert("RGB")).astype(int)
  none = np.asarray(Image.open(tmp_path / "none.png").convert("RGB")).astype(int)
  assert one.shape == none.shape == (100, 160, 3)
  assert np.abs(none - 255).max() <= 2  # nothing drawn on the blank image
  changed = np.abs(one - none).sum(-1) > 60
  assert changed[30:90, 19:22].mean() > 0.8  # the first box's left edge
  assert not changed[15:55, 105:145].any()  # the second box was not drawn
  assert changed[18:29, 20:60].mean() > 0.3  # the label above the box


def test_detect_a_missing_image_says_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"^file not found: {tmp_path / 'no.jpg'}$"):
    pipeline.detect_image(tmp_path, tmp_path / "no.jpg", tmp_path / "out.png")
  line = _one_error_line(sppnet("detect", f"--workdir={tmp_path}", "--image=no.jpg"), "detect")
  assert line == "sppnet detect: error: file not found: no.jpg"


def test_the_trunk_path_is_stored_resolved(tmp_path, monkeypatch):
  trunk = tmp_path / "runs" / "trunk"
  trunk.mkdir(parents=True)
  (trunk / "config.json").write_text("{}")
  monkeypatch.chdir(tmp_path / "runs")
  config = pipeline.detection_config("synthetic", trunk_workdir="trunk")
  resolved = config_lib.with_resolved_trunk(config)
  assert resolved.trunk.workdir == str(trunk) and config.trunk.workdir == "trunk"
  # A workdir written with the relative path does not count as a changed config.
  workdir = tmp_path / "det"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json_best_effort(sort_keys=True))))
  (workdir / "head.npz").write_bytes(b"kept")
  pipeline._write_config(resolved, workdir)
  assert (workdir / "head.npz").exists()
  assert json.loads((workdir / "config.json").read_text())["trunk"]["workdir"] == str(trunk)
  # A trunk that is not there stops before the detection workdir is made.
  missing = pipeline.detection_config("synthetic", trunk_workdir="gone")
  with pytest.raises(FileNotFoundError, match="trunk workdir not found: gone"):
    pipeline.train_and_evaluate_detection(missing, tmp_path / "det2", log=lambda s: None)
  assert not (tmp_path / "det2").exists()


# --- config files that do not load, damaged run files, a busy workdir, a full disk -----------------

@pytest.mark.parametrize("source,expected", [
    ("def get_config(:\n  pass\n", "{path}, line 1: invalid syntax (a syntax error); fix the config file."),
    ("x = 1\n", "{path} defines no get_config(); a config file's get_config() returns the experiment's "
                "ml_collections.ConfigDict (see experiments/)."),
    ("import math\n\n\ndef get_config():\n  raise RuntimeError('no data root')\n",
     "{path}, line 5: loading the config raised RuntimeError: no data root; fix the config file."),
    ("def get_config():\n  return 5\n",
     "{path}: get_config() returned int, not an ml_collections.ConfigDict; return the experiment's config."),
], ids=["syntax", "no_get_config", "raises", "not_a_config"])
def test_a_config_file_that_does_not_load_is_one_line(tmp_path, source, expected):
  # In a new process: ml_collections loads every config file as the same module name, so in this
  # one a file lacking get_config would find the one of a config file loaded before.
  path = tmp_path / "broken.py"
  path.write_text(source)
  line = _one_error_line(sppnet("train", f"--config={path}", f"--workdir={tmp_path / 'w'}"), "train")
  assert line == "sppnet train: error: " + expected.format(path=path)
  assert not (tmp_path / "w").exists()


def test_evaluate_names_an_empty_config_json(tmp_path, capsys):
  (tmp_path / "config.json").write_text("")
  line = _in_process_error(capsys, "evaluate", f"--workdir={tmp_path}")
  assert line == (f"sppnet evaluate: error: {tmp_path / 'config.json'} is not valid JSON (it is empty); delete it to "
                  "let this run's config be written again, or restore it")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # the lock is gone


def test_evaluate_in_a_workdir_in_use_is_refused_naming_the_holder(tmp_path, capsys):
  from test_runlock import HOLDER_COMMAND, _hold_in_subprocess
  proc = _hold_in_subprocess(tmp_path)
  try:
    line = _in_process_error(capsys, "evaluate", f"--workdir={tmp_path}")
  finally:
    proc.kill()
    proc.wait(30)
  assert line.startswith(f"sppnet evaluate: error: {tmp_path} is in use by another process (pid {proc.pid} on ")
  assert HOLDER_COMMAND in line


def test_disk_full_messages():
  import errno

  from sppnet_jax import cli
  error = OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl")
  assert cli.disk_full_message(error).startswith("no space left on the device while writing /runs/a/metrics.jsonl; "
                                                 "free some space")
  orbax = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/runs/a/checkpoints/4.orbax-checkpoint-tmp/state'
                     '/_sharding": Failed to write 5607 bytes to file 9: No space left on device [os_error_code=\'28\']')
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = orbax
  assert "while writing checkpoint /runs/a/checkpoints/4; " in cli.disk_full_message(wrapped)
  assert cli.disk_full_message(ValueError("train.batch_size=0")) is None
  assert cli.disk_full_message(OSError(errno.EACCES, "Permission denied")) is None


# A command that fails as a full disk fails inside orbax's save threads: orbax and asyncio log
# the error with tracebacks, then the save's error reaches the command.
_DISK_FULL_COMMAND = """
import asyncio, logging, sys
from absl import logging as absl_logging
from sppnet_jax import cli

ORBAX = compile("def save():\\n  absl_logging.error('save thread failed', exc_info=True)\\n",
                "/site-packages/orbax/checkpoint/future.py", "exec")

def fail(args):
  error = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/runs/a/checkpoints/4.orbax-checkpoint-tmp/s": '
                     "Failed to write 5607 bytes to file 9: No space left on device [os_error_code='28']")
  try:
    raise error
  except ValueError:
    namespace = {"absl_logging": absl_logging}
    exec(ORBAX, namespace)
    namespace["save"]()
    logging.getLogger("asyncio").error("Future exception was never retrieved", exc_info=True)
  raise error

cli.COMMANDS["summary"] = cli.Command(fail, "", "", ())
cli.main(["sppnet", "summary", *sys.argv[1:]])
"""


def test_a_full_disk_is_one_line_and_library_tracebacks_come_only_on_request():
  run = lambda *args: subprocess.run([sys.executable, "-c", _DISK_FULL_COMMAND, *args], cwd=REPO, capture_output=True,
                                     text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  line = _one_error_line(run(), "summary")
  assert line.startswith("sppnet summary: error: no space left on the device while writing checkpoint "
                         "/runs/a/checkpoints/4; free some space")
  shown = run("--traceback")
  assert shown.returncode == 2
  assert "save thread failed" in shown.stderr and "Future exception was never retrieved" in shown.stderr
  assert "Traceback (most recent call last)" in shown.stderr
