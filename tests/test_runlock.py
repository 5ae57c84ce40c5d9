"""The workdir lock: a second process in a workdir is refused at once, naming the holder; a lock
left by a killed process is taken over; nested holds in one process share the lock."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from sppnet_jax import runlock

from test_train import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
HOLDER_COMMAND = "sppnet train --config=experiments/x.py --workdir=w"


def _hold_in_subprocess(workdir: pathlib.Path) -> subprocess.Popen:
  """A process that holds ``workdir``'s lock until killed (started once it holds it)."""
  code = ("import sys, time\nfrom sppnet_jax import runlock\n"
          f"with runlock.hold({str(workdir)!r}, command={HOLDER_COMMAND!r}):\n"
          "  print('held', flush=True)\n  time.sleep(120)\n")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


@pytest.fixture
def holder(tmp_path):
  proc = _hold_in_subprocess(tmp_path / "run")
  yield proc
  proc.kill()
  proc.wait(30)


def test_a_second_process_is_refused_at_once_naming_the_workdir_and_holder(tmp_path, holder):
  workdir = tmp_path / "run"
  start = time.perf_counter()
  with pytest.raises(runlock.WorkdirBusyError) as info:
    with runlock.hold(workdir):
      pass
  message = str(info.value)
  assert message.startswith(f"{workdir} is in use by another process (pid {holder.pid} on ")
  assert HOLDER_COMMAND in message and "give another --workdir" in message and "\n" not in message
  assert time.perf_counter() - start < 5
  assert json.loads((workdir / ".lock").read_text())["pid"] == holder.pid  # the holder's record is untouched


def test_training_is_refused_before_anything_is_written(tmp_path, holder):
  from sppnet_jax import train
  workdir = tmp_path / "run"
  with pytest.raises(runlock.WorkdirBusyError, match=f"pid {holder.pid}"):
    train.train_and_evaluate(tiny_config("single", epochs=1), workdir)
  assert sorted(p.name for p in workdir.iterdir()) == [".lock"]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
  workdir = tmp_path / "run"
  proc = _hold_in_subprocess(workdir)
  proc.kill()  # SIGKILL: no clean-up, the lock file stays with the dead holder's record
  proc.wait(30)
  assert json.loads((workdir / ".lock").read_text())["pid"] == proc.pid
  with runlock.hold(workdir, command="sppnet evaluate --workdir=w") as path:
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid() and record["command"] == "sppnet evaluate --workdir=w"
  assert not path.exists() and workdir.is_dir()  # released: the file goes, the workdir stays


def test_nested_holds_share_the_lock_and_a_workdir_made_for_nothing_is_removed(tmp_path):
  workdir = tmp_path / "new" / "run"
  with runlock.hold(workdir) as path:
    with runlock.hold(workdir):  # the same process again: no refusal
      assert path.exists()
    assert path.exists()  # still held by the outer call
    with runlock.hold(workdir, process_index=1) as other:  # another JAX process's own file
      assert other.name == ".lock.1"
  assert not (tmp_path / "new").exists()  # made by the hold, nothing written: removed
  with runlock.hold(workdir):
    (workdir / "config.json").write_text("{}")
  assert sorted(p.name for p in workdir.iterdir()) == ["config.json"]


def test_the_command_line_shown_is_the_one_typed():
  assert runlock.command_line(["/x/bin/sppnet", "train", "--workdir=a b"]) == "sppnet train '--workdir=a b'"
  assert runlock.command_line(["prog", "x" * 400]).endswith("...")
  assert len(runlock.command_line(["prog", "x" * 400])) == 300
