"""Orbax checkpoints of a training run, with an integrity record per step.

Every step directory ``workdir/checkpoints/<step>/`` holds three items: ``state``
(the train state), ``progress`` (the position in the data and size schedule, JSON)
and ``integrity`` (JSON: the sha256, shape and dtype of every array of the state,
computed from the arrays in memory when the step was saved). :func:`restore_checkpoint`
verifies a step before using it: its metadata files are present, orbax reads it
without error, and every restored array hashes to the recorded value. A step that
fails is reported by a logged warning naming it and why, and the newest intact
earlier step is used instead; nothing is deleted. When no step is intact the error
lists every step and what is wrong with it.

Steps saved before integrity records existed (no ``integrity`` item) are accepted
when orbax reads them without error.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["INTEGRITY_ITEM", "REQUIRED_FILES", "CorruptCheckpointError", "checkpoint_manager", "save_checkpoint",
           "restore_checkpoint", "integrity_record", "unusable_directory"]

INTEGRITY_ITEM = "integrity"
INTEGRITY_FORMAT = 1
# Files orbax writes into every step (relative to the step directory); a step without one is incomplete.
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "progress/metadata")

_log = logging.getLogger(__name__)


class CorruptCheckpointError(ValueError):
  """No checkpoint step of a run can be restored intact (or the one asked for cannot)."""


def checkpoint_manager(workdir: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  """The run's checkpoint manager over ``workdir/checkpoints``, keeping the newest ``keep`` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).resolve() / "checkpoints", options=options)


def _leaf_bytes(x: Any) -> np.ndarray | None:
  """The host copy of an array leaf, or None where this process does not hold all of it."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.sharding.is_fully_replicated:
      return None
    x = x.addressable_data(0)
  return np.ascontiguousarray(np.asarray(jax.device_get(x)))


def integrity_record(state: Any) -> dict:
  """``{'format', 'algorithm', 'arrays': {path: {'sha256', 'shape', 'dtype'}}}`` of a pytree's arrays.

  A leaf sharded across processes (not held whole by this one) is recorded with
  ``sha256: None`` and checked by shape and dtype only.
  """
  arrays = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    host = _leaf_bytes(leaf)
    shape, dtype = (np.shape(leaf), str(np.dtype(leaf.dtype))) if host is None else (host.shape, str(host.dtype))
    digest = None if host is None else hashlib.sha256(host.tobytes()).hexdigest()
    arrays[jax.tree_util.keystr(path)] = {"sha256": digest, "shape": list(shape), "dtype": dtype}
  return {"format": INTEGRITY_FORMAT, "algorithm": "sha256", "arrays": arrays}


def _compare(expected: dict, actual: dict) -> str | None:
  """Why ``actual`` does not match the ``expected`` record, or None when it does."""
  want, got = expected.get("arrays"), actual["arrays"]
  if not isinstance(want, dict):
    return "the integrity record has no 'arrays'"
  if set(want) != set(got):
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    return f"the state's arrays differ from the record (missing {missing[:3]}, unexpected {extra[:3]})"
  bad = [k for k in sorted(want) if (want[k].get("shape"), want[k].get("dtype")) != (got[k]["shape"], got[k]["dtype"])
         or (want[k].get("sha256") is not None and got[k]["sha256"] is not None
             and want[k]["sha256"] != got[k]["sha256"])]
  if bad:
    return f"checksum mismatch in {len(bad)} of {len(want)} arrays (first: {bad[0]})"
  return None


def save_checkpoint(manager: ocp.CheckpointManager, state: Any, progress: dict) -> None:
  """Saves ``state`` and ``progress`` at step ``progress['global_step']`` with its integrity record.

  A step directory already there under that number can only be one that a restore
  found unusable (the run went back to an earlier step and has now reached it
  again): it is moved to :func:`unusable_directory` (not deleted) so the new one
  can be written.
  """
  step = int(progress["global_step"])
  if step in manager.all_steps():
    manager.wait_until_finished()
    target = unusable_directory(manager) / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    (pathlib.Path(manager.directory) / str(step)).rename(target)
    _log.warning("checkpoint step %d already exists and was not restorable; moved it to %s and saving anew.",
                 step, target)
    manager.reload()
  record = integrity_record(state)
  saved = manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(dict(progress)),
      **{INTEGRITY_ITEM: ocp.args.JsonSave(record)}))
  if not saved:
    raise RuntimeError(f"orbax declined to save checkpoint step {step} in {manager.directory} "
                       f"(existing steps: {manager.all_steps()}).")


def unusable_directory(manager: ocp.CheckpointManager) -> pathlib.Path:
  """Where :func:`save_checkpoint` moves a step it has to write again: ``<checkpoints>-unusable``."""
  directory = pathlib.Path(manager.directory)
  return directory.with_name(directory.name + "-unusable")


def _missing_files(step_dir: pathlib.Path) -> list[str]:
  return [name for name in REQUIRED_FILES if not (step_dir / name).is_file()]


def _restore_step(manager: ocp.CheckpointManager, step: int, abstract: Any) -> tuple[Any, dict]:
  """(state, progress) of one step, verified; raises ``_BadStep`` with the reason otherwise."""
  step_dir = pathlib.Path(manager.directory) / str(step)
  missing = _missing_files(step_dir)
  if missing:
    raise _BadStep(f"missing {', '.join(missing)}")
  has_record = (step_dir / INTEGRITY_ITEM).is_dir()
  items = dict(state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore())
  if has_record:
    items[INTEGRITY_ITEM] = ocp.args.JsonRestore()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # orbax and tensorstore raise many types for damaged files
    raise _BadStep(f"orbax could not read it ({type(e).__name__}: {_first_line(e)})") from e
  if has_record:
    record = restored[INTEGRITY_ITEM]
    if not isinstance(record, dict):
      raise _BadStep("its integrity record is not a JSON object")
    why = _compare(record, integrity_record(restored["state"]))
    if why:
      raise _BadStep(why)
  else:
    _log.info("checkpoint step %d has no integrity record (saved before records were kept); using it unchecked.",
              step)
  return restored["state"], restored["progress"]


def _first_line(e: Exception, limit: int = 300) -> str:
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return text if len(text) <= limit else text[:limit] + "..."


class _BadStep(Exception):
  pass


def restore_checkpoint(manager: ocp.CheckpointManager, state: Any, step: int | None = None) -> tuple[Any, dict]:
  """(state, progress) of the newest intact step (or of ``step``), restored in the structure of ``state``.

  ``state`` may be concrete or abstract (``jax.eval_shape``). Without ``step`` the
  steps are tried newest first; each one that fails verification is logged as a
  warning naming it and why, and the next older one is tried. With ``step`` only
  that step is tried. Raises :class:`CorruptCheckpointError` listing every step
  tried and why when none is intact, and ``FileNotFoundError`` when there are none.
  """
  manager.wait_until_finished()
  manager.reload()
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    steps = [int(step)]
  elif not steps:
    raise FileNotFoundError(f"{manager.directory} holds no checkpoint.")
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  failures = []
  for s in steps:
    try:
      restored = _restore_step(manager, s, abstract)
    except _BadStep as e:
      failures.append(f"step {s}: {e}")
      _log.warning("checkpoint step %d in %s is unusable: %s; %s", s, manager.directory, e,
                   "trying the previous step." if s != steps[-1] else "no earlier step is left.")
      continue
    if failures:
      _log.warning("restored checkpoint step %d instead of the newest (%s); the unusable steps are kept as they are.",
                   s, "; ".join(failures))
    return restored
  raise CorruptCheckpointError(
      f"no intact checkpoint in {manager.directory}: " + "; ".join(failures) +
      ". Nothing was deleted; restore the step directories from a backup, or train into a new --workdir.")
