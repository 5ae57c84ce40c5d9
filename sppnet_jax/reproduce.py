"""``sppnet reproduce``: trains a committed run's config again and compares with what it recorded.

A published run folder (``sppnet publish``) holds ``config.json``, ``eval.json`` and
``predictions.npz`` (per-example mistakes); the folder above it holds ``provenance.json``, with
the environment that made it. :func:`reproduce` trains the same config into a new workdir
(resuming there if it was interrupted) and compares every record the two runs share, example by
example:

* same environment (:data:`MACHINE_KIND`: jax and jaxlib versions, CPU model, core count and
  instruction-set flags): the training is deterministic there, so every record must be equal
  example for example, and any difference is a failure;
* another environment: XLA may pick other kernels, float sums round differently and the trained
  networks differ; each record's difference is then listed with its 95 % interval and McNemar's p
  (the same examples are scored by both), and a resolved difference is called out.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np

from sppnet_jax import stats, timing

# The fields of the environment record that decide whether a rerun must be bit-identical.
MACHINE_KIND = ("jax", "jaxlib", "cpu", "cpu_cores", "cpu_flags", "jax_device", "jax_devices")
PREDICTIONS_FILE = "predictions.npz"


@dataclasses.dataclass(frozen=True)
class RecordComparison:
  """One per-example record (e.g. ``crop@96``) of the committed run against the rerun."""
  key: str
  committed_error: float  # top-1 error, %
  rerun_error: float
  examples_that_differ: int  # examples that one run gets right and the other wrong
  difference: stats.PairedDifference  # rerun minus committed

  @property
  def identical(self) -> bool:
    return self.examples_that_differ == 0


def _mistakes(run: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{record: (index, top1_wrong)}`` of a run's predictions file."""
  path = run / PREDICTIONS_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: a run is compared through its per-example records; evaluate it "
                            f"first (sppnet evaluate --workdir {run}).")
  with np.load(path) as data:
    keys = sorted(k[:-len("/top1_wrong")] for k in data.files if k.endswith("/top1_wrong"))
    return {k: (data[f"{k}/index"], data[f"{k}/top1_wrong"].astype(bool)) for k in keys}


def compare_runs(committed: str | pathlib.Path, rerun: str | pathlib.Path) -> list[RecordComparison]:
  """Every record both runs hold, compared on the same examples (rerun minus committed)."""
  old, new = _mistakes(pathlib.Path(committed)), _mistakes(pathlib.Path(rerun))
  shared = sorted(set(old) & set(new))
  if not shared:
    raise ValueError(f"{committed} and {rerun} share no record (they hold {sorted(old)} and {sorted(new)}).")
  out = []
  for key in shared:
    (index_a, wrong_a), (index_b, wrong_b) = old[key], new[key]
    if not np.array_equal(index_a, index_b):
      raise ValueError(f"record {key!r} was scored on other examples in {committed} than in {rerun}: the config's "
                       "evaluation split differs, so the runs cannot be compared example by example.")
    out.append(RecordComparison(key, 100 * wrong_a.mean(), 100 * wrong_b.mean(), int(np.sum(wrong_a != wrong_b)),
                                stats.paired_difference(wrong_b, wrong_a)))
  return out


def find_provenance(run: pathlib.Path) -> dict | None:
  """The ``provenance.json`` of the published folder holding ``run`` (the run's or a parent's)."""
  for folder in (run, *run.parents):
    path = folder / "provenance.json"
    if path.exists():
      try:
        return json.loads(path.read_text())
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the repository.") from None
  return None


def machine_differences(recorded: dict, current: dict) -> list[str]:
  """``field: recorded -> current`` for every :data:`MACHINE_KIND` field that differs; a field the
  record lacks counts as different (an equal outcome cannot then be promised)."""
  return [f"{k}: {recorded.get(k, 'not recorded')!r} -> {current.get(k)!r}" for k in MACHINE_KIND
          if recorded.get(k) != current.get(k)]


def summary_lines(comparisons: list[RecordComparison], differences: list[str]) -> list[str]:
  """The report: the environment verdict, then one line per record."""
  lines = ([f"environment differs from the recorded one ({'; '.join(differences)}): results may differ "
            "within float rounding of the training; differences are listed with their 95 % intervals."]
           if differences else ["environment equal to the recorded one: every record must be identical."])
  for c in comparisons:
    d = c.difference
    if c.identical:
      lines.append(f"{c.key}: identical ({c.committed_error:.2f} % top-1 error, {d.n} examples)")
    else:
      lines.append(f"{c.key}: {c.committed_error:.2f} % committed, {c.rerun_error:.2f} % rerun; "
                   f"{c.examples_that_differ} of {d.n} examples differ; rerun - committed "
                   f"{stats.signed(d.difference, 2)} points [{stats.signed(d.low, 2)}, {stats.signed(d.high, 2)}], "
                   f"McNemar {stats.format_p(d.p_value)}{' (resolved)' if d.resolved else ''}")
  return lines


def verdict(comparisons: list[RecordComparison], differences: list[str]) -> bool:
  """Whether the rerun reproduces the committed run: identical records on the same machine kind;
  elsewhere, no record whose difference is resolved."""
  if not differences:
    return all(c.identical for c in comparisons)
  return not any(c.difference.resolved for c in comparisons)


def load_config(run: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The config a committed run was trained with."""
  path = pathlib.Path(run) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: pass a run folder that 'sppnet publish' wrote (it holds config.json, "
                            "eval.json and predictions.npz).")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it from the repository.") from None


def reproduce(run: str | pathlib.Path, workdir: str | pathlib.Path) -> tuple[bool, list[str]]:
  """Trains ``run``'s config into ``workdir`` and compares; returns (reproduced, report lines)."""
  from sppnet_jax import train  # the training stack only when a run is actually retrained

  run, workdir = pathlib.Path(run), pathlib.Path(workdir)
  config = load_config(run)
  _mistakes(run)  # refuse a folder without records before training for minutes
  provenance = find_provenance(run) or {}
  result = train.train_and_evaluate(config, workdir)
  if result.get("preempted"):
    return False, [f"stopped before the end (saved at step {result.get('global_step')}); rerun the same command to "
                   "resume."]
  differences = machine_differences(provenance.get("environment", {}), timing.environment())
  comparisons = compare_runs(run, workdir)
  return verdict(comparisons, differences), summary_lines(comparisons, differences)
