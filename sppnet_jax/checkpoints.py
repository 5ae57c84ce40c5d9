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

Each step is read on its own terms: the structure to restore may be given per step
(:func:`restore_verified` takes a function of the step number), and a step whose
``state/_METADATA`` is unreadable is reported as such without affecting its neighbours
(:func:`saved_shapes` reads one step's array shapes). A step whose arrays are intact but
of other shapes than the network asked for is not damaged: when that is why every step
fails, :class:`CheckpointMismatchError` says so instead of :class:`CorruptCheckpointError`.

:func:`params_digest` names the parameters a result was computed from (a sha256 over their
integrity record); :func:`find_params_step` finds the saved step that holds them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import pathlib
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["INTEGRITY_ITEM", "REQUIRED_FILES", "CorruptCheckpointError", "CheckpointMismatchError", "Restored",
           "checkpoint_manager", "save_checkpoint", "restore_checkpoint", "restore_verified", "integrity_record",
           "record_digest", "params_digest", "find_params_step", "saved_shapes", "unusable_directory"]

INTEGRITY_ITEM = "integrity"
INTEGRITY_FORMAT = 1
# Files orbax writes into every step (relative to the step directory); a step without one is incomplete.
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "progress/metadata")

_log = logging.getLogger(__name__)


class CorruptCheckpointError(ValueError):
  """No checkpoint step of a run can be restored intact (or the one asked for cannot)."""


class CheckpointMismatchError(ValueError):
  """The checkpoint steps are readable but hold arrays of other shapes than the network asked for."""


class Restored(NamedTuple):
  """A verified step: its state, its progress record and its step number."""
  state: Any
  progress: dict
  step: int


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


def record_digest(record: dict) -> str:
  """A sha256 over an :func:`integrity_record`'s arrays (their hashes, shapes and dtypes): one
  name for exactly those arrays, whichever process or step computed the record."""
  text = json.dumps(record["arrays"], sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def params_digest(params: Any) -> str:
  """:func:`record_digest` of the integrity record of a network's parameters."""
  return record_digest(integrity_record(params))


_PARAMS_PREFIX = ".params"


def _params_digest_of_state(record: dict) -> str | None:
  """:func:`params_digest` of the ``params`` of a saved train state, from its integrity record
  (None when the record lacks them, or a hash of one is missing)."""
  arrays = record.get("arrays") if isinstance(record, dict) else None
  if not isinstance(arrays, dict):
    return None
  params = {k[len(_PARAMS_PREFIX):]: v for k, v in arrays.items()
            if k.startswith(_PARAMS_PREFIX + "[") or k.startswith(_PARAMS_PREFIX + ".")}
  if not params or any(not isinstance(v, dict) or v.get("sha256") is None for v in params.values()):
    return None
  return record_digest({"arrays": params})


def _step_dirs(directory: pathlib.Path) -> list[pathlib.Path]:
  """The step directories of a run's ``checkpoints`` folder, newest first."""
  if not directory.is_dir():
    return []
  return sorted((p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()), key=lambda p: -int(p.name))


def _read_record(step_dir: pathlib.Path) -> dict | None:
  """The integrity record saved with a step, or None when there is none or it cannot be read."""
  try:
    record = json.loads((step_dir / INTEGRITY_ITEM / "metadata").read_text())
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def find_params_step(directory: str | pathlib.Path, digest: str) -> int | None:
  """The newest step under ``directory`` (a run's ``checkpoints`` folder) whose integrity record
  holds parameters of :func:`params_digest` ``digest``; None when no step's record does (no such
  step, or steps saved before records were kept)."""
  for step_dir in _step_dirs(pathlib.Path(directory)):
    record = _read_record(step_dir)
    if record is not None and _params_digest_of_state(record) == digest:
      return int(step_dir.name)
  return None


def saved_shapes(step_dir: str | pathlib.Path) -> dict[tuple[str, ...], tuple[int, ...]]:
  """The written shape of every array of a step's saved state, by path (``('params', 'head', 'fc8', 'bias')``): the whole array's
  shape when one device wrote it, a shard's when it was sharded (see :func:`_fits`);
  read from its ``state/_METADATA``. Raises ``ValueError`` naming the file when it cannot be read."""
  path = pathlib.Path(step_dir) / "state" / "_METADATA"
  try:
    tree = json.loads(path.read_text())["tree_metadata"]
    shapes = {}
    for key, value in tree.items():
      shape = value.get("value_metadata", {}).get("write_shape")
      if shape is not None:
        shapes[tuple(str(k) for k in ast.literal_eval(key))] = tuple(int(n) for n in shape)
  except (OSError, ValueError, KeyError, TypeError, AttributeError, SyntaxError) as e:
    raise ValueError(f"{path} is unreadable ({type(e).__name__}: {_first_line(e, 120)})") from e
  return shapes


def _path_names(path: tuple) -> tuple[str, ...]:
  """A pytree path as the names orbax gives it in ``_METADATA``."""
  names = []
  for key in path:
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return tuple(names)


def _fits(written: tuple[int, ...], shape: tuple[int, ...]) -> bool:
  """Whether arrays written in chunks of ``written`` can make up an array of ``shape``: orbax
  records the chunk each write covered, the whole array from one device but a shard's shape from
  a run whose arrays were sharded over several devices or processes."""
  return len(written) == len(shape) and all(0 < w <= n and n % w == 0 for w, n in zip(written, shape))


def _shape_mismatch(saved: dict[tuple[str, ...], tuple[int, ...]], abstract: Any) -> str | None:
  """How the arrays of ``abstract`` differ in shape from those saved under the same paths, or None."""
  wanted = {_path_names(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  bad = [k for k in sorted(set(saved) & set(wanted)) if not _fits(saved[k], wanted[k])]
  if not bad:
    return None
  more = f", and {len(bad) - 1} more" if len(bad) > 1 else ""
  return (f"its arrays have other shapes than this network's ({'/'.join(bad[0])}: {saved[bad[0]]} saved, "
          f"{wanted[bad[0]]} here{more})")


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
  """(state, progress) of one step, verified; raises ``_BadStep`` with the reason otherwise
  (``_Mismatch`` when the step is readable but its arrays do not fit ``abstract``)."""
  step_dir = pathlib.Path(manager.directory) / str(step)
  missing = _missing_files(step_dir)
  if missing:
    raise _BadStep(f"missing {', '.join(missing)}")
  try:
    shapes = saved_shapes(step_dir)
  except ValueError as e:
    raise _BadStep(str(e)) from e
  mismatch = _shape_mismatch(shapes, abstract)
  if mismatch:
    raise _Mismatch(mismatch)
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


class _Mismatch(_BadStep):
  """A readable step whose arrays have other shapes than the network asked for."""


def restore_checkpoint(manager: ocp.CheckpointManager, state: Any, step: int | None = None) -> tuple[Any, dict]:
  """(state, progress) of the newest intact step (or of ``step``): :func:`restore_verified`."""
  restored = restore_verified(manager, state, step)
  return restored.state, restored.progress


def restore_verified(manager: ocp.CheckpointManager, state: Any | Callable[[int], Any],
                     step: int | None = None) -> Restored:
  """The newest intact step (or ``step``), restored in the structure of ``state``, with its number.

  ``state`` may be concrete or abstract (``jax.eval_shape``), or a function of the step number
  returning one (for runs whose steps differ in layout). Without ``step`` the steps are tried
  newest first; each one that fails verification is logged as a warning naming it and why, and
  the next older one is tried. With ``step`` only that step is tried. Raises
  :class:`CheckpointMismatchError` when every step is readable but of other shapes than ``state``,
  :class:`CorruptCheckpointError` listing every step tried and why when none is intact otherwise,
  and ``FileNotFoundError`` when there are none.
  """
  manager.wait_until_finished()
  manager.reload()
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    steps = [int(step)]
  elif not steps:
    raise FileNotFoundError(f"{manager.directory} holds no checkpoint.")
  structure = state if callable(state) else (lambda _: state)
  failures, mismatches = [], 0
  for s in steps:
    try:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, structure(s))
      restored = _restore_step(manager, s, abstract)
    except _BadStep as e:
      failures.append(f"step {s}: {e}")
      mismatches += isinstance(e, _Mismatch)
      _log.warning("checkpoint step %d in %s is unusable: %s; %s", s, manager.directory, e,
                   "trying the previous step." if s != steps[-1] else "no earlier step is left.")
      continue
    if failures:
      _log.warning("restored checkpoint step %d instead of the newest (%s); the unusable steps are kept as they are.",
                   s, "; ".join(failures))
    return Restored(restored[0], restored[1], int(s))
  if mismatches == len(failures):
    raise CheckpointMismatchError(
        f"the checkpoints in {manager.directory} were saved from a network of other shapes than the one built "
        "now (" + "; ".join(failures) + "). They are not damaged and nothing was changed; build the network the "
        "run trained (its config.json and classes.json), or train into a new --workdir.")
  raise CorruptCheckpointError(
      f"no intact checkpoint in {manager.directory}: " + "; ".join(failures) +
      ". Nothing was deleted; restore the step directories from a backup, or train into a new --workdir.")
