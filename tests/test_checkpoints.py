"""Checkpoint integrity: damaged steps are reported and skipped, never deleted."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sppnet_jax import checkpoints


@flax.struct.dataclass
class State:
  step: jax.Array
  params: Any
  opt_state: Any


def _state(k: int) -> State:
  """A small train-state-like pytree whose values say which step saved it."""
  params = {"conv": {"kernel": jnp.full((3, 3, 2, 4), float(k)), "bias": jnp.arange(4.0) + k},
            "fc": {"kernel": jnp.full((8, 5), -float(k), jnp.float32)}}
  return State(step=jnp.asarray(k, jnp.int32), params=params, opt_state=(jax.tree.map(jnp.zeros_like, params),))


def _save_steps(workdir: Path, steps=(2, 4, 6)):
  manager = checkpoints.checkpoint_manager(workdir, 3)
  for k in steps:
    checkpoints.save_checkpoint(manager, _state(k), {"global_step": k, "epoch": k // 2})
  manager.wait_until_finished()
  return manager


def _files(directory: Path) -> set[str]:
  return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def _data_files(step_dir: Path) -> list[Path]:
  """The array data files of a step's state (OCDBT data blobs)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files, sorted(_files(step_dir))
  return files


def _restored_step(workdir: Path) -> int:
  manager = checkpoints.checkpoint_manager(workdir, 3)
  state, progress = checkpoints.restore_checkpoint(manager, jax.eval_shape(lambda: _state(0)))
  manager.close()
  k = progress["global_step"]
  np.testing.assert_array_equal(state.params["conv"]["kernel"], np.full((3, 3, 2, 4), float(k)))
  assert int(state.step) == k
  return k


def test_intact_steps_restore_the_newest_with_a_record(tmp_path):
  _save_steps(tmp_path)
  record = tmp_path / "checkpoints" / "6" / "integrity"
  assert record.is_dir()
  assert _restored_step(tmp_path) == 6
  manager = checkpoints.checkpoint_manager(tmp_path, 3)
  state, progress = checkpoints.restore_checkpoint(manager, _state(0), step=4)
  assert progress == {"global_step": 4, "epoch": 2} and int(state.step) == 4


def _flip_bytes(step_dir: Path):
  for f in _data_files(step_dir):
    data = bytearray(f.read_bytes())
    for i in range(len(data) // 2, len(data)):
      data[i] ^= 0x5A
    f.write_bytes(bytes(data))


def _truncate(step_dir: Path):
  for f in _data_files(step_dir):
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 3])


def _delete_metadata(step_dir: Path):
  (step_dir / "state" / "_METADATA").unlink()


def _other_steps_arrays(step_dir: Path):
  """Step 4's state in step 6's place: every file is valid, only the record can tell."""
  shutil.rmtree(step_dir / "state")
  shutil.copytree(step_dir.parent / "4" / "state", step_dir / "state")


@pytest.mark.parametrize("damage,reason", [(_flip_bytes, "orbax could not read it|checksum mismatch"),
                                           (_truncate, "orbax could not read it"),
                                           (_delete_metadata, "missing state/_METADATA"),
                                           (_other_steps_arrays, "checksum mismatch")])
def test_a_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, caplog, damage, reason):
  _save_steps(tmp_path)
  damage(tmp_path / "checkpoints" / "6")
  before = _files(tmp_path)
  with caplog.at_level(logging.WARNING, logger="sppnet_jax.checkpoints"):
    assert _restored_step(tmp_path) == 4
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert re.search(f"checkpoint step 6 in .* is unusable: ({reason})", warnings), warnings
  assert "restored checkpoint step 4 instead of the newest" in warnings
  assert _files(tmp_path) == before  # nothing deleted or moved


def test_no_intact_step_is_an_error_listing_every_step(tmp_path):
  _save_steps(tmp_path, steps=(2, 4))
  _truncate(tmp_path / "checkpoints" / "4")
  _delete_metadata(tmp_path / "checkpoints" / "2")
  before = _files(tmp_path)
  manager = checkpoints.checkpoint_manager(tmp_path, 3)
  with pytest.raises(checkpoints.CorruptCheckpointError) as info:
    checkpoints.restore_checkpoint(manager, _state(0))
  message = str(info.value)
  assert "step 4: orbax could not read it" in message
  assert "step 2: missing state/_METADATA" in message
  assert _files(tmp_path) == before
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoints.restore_checkpoint(checkpoints.checkpoint_manager(tmp_path / "empty", 3), _state(0))


def test_saving_again_over_an_unusable_step_moves_it_aside(tmp_path):
  _save_steps(tmp_path)
  _truncate(tmp_path / "checkpoints" / "6")
  assert _restored_step(tmp_path) == 4
  manager = checkpoints.checkpoint_manager(tmp_path, 3)
  checkpoints.save_checkpoint(manager, _state(6), {"global_step": 6, "epoch": 3})
  manager.wait_until_finished()
  moved = list((tmp_path / "checkpoints-unusable").iterdir())
  assert len(moved) == 1 and moved[0].name.startswith("6-") and (moved[0] / "state").is_dir()
  assert _restored_step(tmp_path) == 6


def test_integrity_record_hashes_the_array_bytes():
  import hashlib
  state = _state(3)
  record = checkpoints.integrity_record(state)
  entry = record["arrays"][".params['fc']['kernel']"]
  expected = hashlib.sha256(np.full((8, 5), -3.0, np.float32).tobytes()).hexdigest()
  assert entry == {"sha256": expected, "shape": [8, 5], "dtype": "float32"}
  assert len(record["arrays"]) == 7


def test_steps_of_another_network_are_a_mismatch_not_corruption(tmp_path):
  _save_steps(tmp_path, steps=(2, 4))
  before = _files(tmp_path)
  abstract = jax.eval_shape(lambda: _state(0))
  wider = abstract.replace(params={**abstract.params, "fc": {"kernel": jax.ShapeDtypeStruct((8, 6), jnp.float32)}})
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match=r"step 4: its arrays have other shapes than this network's \(params/fc/kernel: \(8, 5\) "
                           r"saved, \(8, 6\) here\).*They are not damaged") as info:
    checkpoints.restore_checkpoint(checkpoints.checkpoint_manager(tmp_path, 3), wider)
  assert not isinstance(info.value, checkpoints.CorruptCheckpointError)
  assert _files(tmp_path) == before
