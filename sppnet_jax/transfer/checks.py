"""Refusing transfer configs, and tasks a config cannot be run on, before anything is computed or written.

:func:`validate_transfer_config` looks at a config's fields only and raises one ``ValueError``
naming every bad field, its value and what is allowed, in the style of the classification
validator (:mod:`sppnet_jax.config_checks`). :func:`check_task` looks at a task's targets (no
pixels) and names, by class name, every class the protocol cannot score, so a run is refused
before any trunk is trained or any feature extracted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sppnet_jax import config_checks as checks
from sppnet_jax.transfer import features, tasks

TASK_NAMES = ("voc2007", "caltech101", "synthetic_scenes", "synthetic_shapes")


def _task_name(value: Any) -> bool:
  if not isinstance(value, str):
    return False
  if value.startswith("folder:"):
    return bool(value[len("folder:"):].strip())
  return value in TASK_NAMES


def _mean(value: Any) -> bool:
  """'trunk' (the trunk's own normalisation) or a constant: a finite number or its text."""
  if value == "trunk":
    return True
  try:
    return np.isfinite(float(value)) and not isinstance(value, bool)
  except (TypeError, ValueError):
    return False


def _fraction_range(value: Any) -> bool:
  ok, _ = checks.value_range(integer=False)
  return ok(value) and float(value[1]) <= 1.0


TRANSFER_FIELDS: dict[str, checks.Check] = {
    "task.name": (_task_name, f"one of {', '.join(repr(n) for n in TASK_NAMES)}, or 'folder:/path/to/root'"),
    "task.data_dir": ((lambda v: v is None or isinstance(v, str)), "None or a path"),
    "task.num_train": checks.int_at_least(1),
    "task.num_test": checks.int_at_least(1),
    "task.num_examples": checks.int_at_least(1),
    "task.seed": checks.int_at_least(0),
    "task.max_objects": checks.int_at_least(1),
    "task.object_size": (_fraction_range, "a pair (low, high) of fractions of the short side with 0 < low <= high <= 1"),
    "trunk_dir": ((lambda v: isinstance(v, str)), "a path (a string; '' for <workdir>/trunks)"),
    "svm.C": checks.number(0.0, lo_open=True),
    "splits.num_splits": checks.int_at_least(1),
    "splits.train_per_class": checks.int_at_least(1),
    "splits.test_per_class": checks.int_at_least(1),
    "mean": (_mean, "'trunk' or a constant such as '128'"),
    "crop_short_side": checks.optional(checks.int_at_least(0)),
    "batch_size": checks.int_at_least(1),
    "bucket": checks.int_at_least(1),
    "max_aspect": checks.number(1.0),
    "seed": checks.int_at_least(0),
    "progress": checks.BOOL,
}


def _layer_problem(layer: Any, view: Any) -> str | None:
  """Why ``layer`` cannot be taken in ``view`` (None when it can); the trunk-specific checks come later."""
  if not isinstance(layer, str) or not (layer in features.LAYERS or features._CONV.match(layer)):
    return f"{layer!r} is not a layer: one of {', '.join(features.LAYERS)}, or conv<k>"
  if features._CONV.match(layer) and view != "crop":
    return f"{layer!r} has a fixed length only in the crop view"
  return None


def _column_problems(config: Any) -> list[str]:
  """The columns: unique names, a trunk of the config, a view, a size, layers that view can give."""
  columns, trunks = checks.lookup(config, "columns"), checks.lookup(config, "trunks")
  if not checks.is_seq(columns) or not columns:
    return [f"columns={checks.show(columns)} is not allowed: a non-empty list of columns "
            "(configs.column(name, trunk, view, size, layers))"]
  problems = []
  trunk_names = sorted(trunks) if hasattr(trunks, "keys") else []
  names = [checks.lookup(c, "name") for c in columns]
  repeated = sorted({str(n) for n in names if names.count(n) > 1})
  if repeated:
    problems.append(f"column names {checks.show(names)} are not allowed: unique names ({', '.join(repeated)} "
                    "repeats)")
  for i, column in enumerate(columns):
    name, trunk = checks.lookup(column, "name"), checks.lookup(column, "trunk")
    view, size, layers = (checks.lookup(column, k) for k in ("view", "size", "layers"))
    where = f"columns[{i}]" + (f" ({name!r})" if isinstance(name, str) and name else "")
    if not isinstance(name, str) or not name:
      problems.append(f"{where}.name={checks.show(name)} is not allowed: a non-empty string")
    if trunk not in trunk_names:
      problems.append(f"{where}.trunk={checks.show(trunk)} is not allowed: one of the config's trunks "
                      f"({', '.join(trunk_names) or 'none'})")
    if view not in features.VIEWS:
      problems.append(f"{where}.view={checks.show(view)} is not allowed: one of "
                      f"{', '.join(repr(v) for v in features.VIEWS)}")
    if not (checks.is_int(size) and size >= 1):
      problems.append(f"{where}.size={checks.show(size)} is not allowed: an integer >= 1 (pixels)")
    if not checks.is_seq(layers) or not layers:
      problems.append(f"{where}.layers={checks.show(layers)} is not allowed: a non-empty sequence of layers")
    else:
      problems += [f"{where}.layers: {why}" for why in (_layer_problem(layer, view) for layer in layers) if why]
  return problems


def _trunk_and_comparison_problems(config: Any) -> list[str]:
  trunks = checks.lookup(config, "trunks")
  problems = []
  if not hasattr(trunks, "items") or not len(trunks):
    problems.append(f"trunks={checks.show(trunks)} is not allowed: a non-empty mapping name -> a training "
                    "workdir, 'synthetic:<variant>' or a .py config")
  else:
    problems += [f"trunks.{name}={checks.show(spec)} is not allowed: a training workdir, 'synthetic:<variant>' or "
                 "a .py config" for name, spec in trunks.items() if not isinstance(spec, str) or not spec.strip()]
  columns = checks.lookup(config, "columns")
  names = {checks.lookup(c, "name") for c in columns} if checks.is_seq(columns) else set()
  comparisons = checks.lookup(config, "comparisons")
  for pair in (() if comparisons is checks.MISSING else comparisons):
    if not checks.is_seq(pair) or len(pair) != 2 or not set(pair) <= names:
      problems.append(f"comparisons item {checks.show(pair)} is not allowed: a pair (column A, column B) of the "
                      f"config's columns ({', '.join(sorted(map(str, names)))})")
  return problems


def transfer_config_problems(config: Any) -> list[str]:
  """Every problem :func:`validate_transfer_config` would report, one sentence each ([] when none)."""
  return (checks.field_problems(config, TRANSFER_FIELDS) + _trunk_and_comparison_problems(config)
          + _column_problems(config))


def validate_transfer_config(config: Any) -> None:
  """Raises ``ValueError`` naming every field of a transfer ``config`` whose value cannot be meant.

  Pure: looks at the fields only, reads no file and loads no data.
  """
  problems = transfer_config_problems(config)
  if problems:
    raise ValueError(("invalid transfer config: " if len(problems) == 1 else
                      f"invalid transfer config ({len(problems)} problems): ") + "; ".join(problems) + ".")


def _named(class_names: Sequence[str], counts: dict[int, str]) -> str:
  return ", ".join(f"{class_names[k]!r} ({why})" for k, why in counts.items())


def check_task(config: Any, task: tasks.Task) -> None:
  """Raises ``ValueError`` naming, by class name, every class of ``task`` the protocol cannot score
  under ``config`` (from the targets alone, before any feature is extracted)."""
  if task.kind == "split":
    s = config.splits
    if config.get("comparisons") and s.num_splits < 2:
      raise ValueError("comparisons between columns of a split task pair their splits and need splits.num_splits "
                       ">= 2; raise it or drop the comparisons.")
    labels = np.asarray(task.targets["pool"], np.int64)
    present, counts = np.unique(labels, return_counts=True)
    few = {int(k): f"{int(n)} images" for k, n in zip(present, counts) if n <= s.train_per_class}
    if few:
      raise ValueError(f"task {task.name!r}: {len(few)} class(es) have too few images for the split, which needs "
                       f"more than splits.train_per_class={s.train_per_class} per class (at least one left to test): "
                       f"{_named(task.class_names, few)}; lower splits.train_per_class or add images.")
    return
  train, test = np.asarray(task.targets["train"]), np.asarray(task.targets["test"])
  bad = {}
  for k in range(train.shape[1]):
    pos, neg, test_pos = int((train[:, k] > 0).sum()), int((train[:, k] < 0).sum()), int((test[:, k] > 0).sum())
    if not (pos and neg and test_pos):
      bad[k] = f"{pos} positive and {neg} negative training images, {test_pos} positive test images"
  if bad:
    raise ValueError(f"task {task.name!r}: {len(bad)} class(es) cannot be scored (an SVM needs a positive and a "
                     f"negative training image, an AP a positive test image): {_named(task.class_names, bad)}; "
                     "use larger splits.")
