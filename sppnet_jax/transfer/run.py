"""``transfer_and_evaluate(config, workdir)``: the paper's Tables 6-7 protocol for one or more
columns (trunk x view x size), every requested layer, results beside the paper's.

Config (see ``experiments/transfer/``):

  ``trunks``   name -> a classification workdir (``runs/...``), or ``synthetic:<variant>`` /
               a ``.py`` config file, trained into ``<workdir>/trunks/<name>`` unless it is there;
  ``columns``  a list of {name, trunk, view ('crop'|'full'), size, layers, paper: {layer: %}};
  ``task``     the dataset (:func:`sppnet_jax.transfer.tasks.get_task`);
  ``svm.C``, ``splits`` (Caltech rule), ``mean`` ('trunk' or a constant such as 128),
  ``comparisons``  (column A, column B) pairs compared layer by layer on the same test images.

Outputs in the workdir: ``config.json``, ``features/<column>_<split>.npz`` (float16, reused when
the trunk's checkpoint and the view are unchanged), ``results.json`` and ``report.md``.

Before anything is trained, extracted or written, the config is validated in full
(:func:`~sppnet_jax.transfer.checks.validate_transfer_config`), every trunk is checked to exist (or
its training config to be valid), a changed config in a finished workdir is refused, and the task's
classes are checked, by name, to have enough images (:func:`~sppnet_jax.transfer.checks.check_task`).
"""

from __future__ import annotations

import json
import logging
import pathlib
import runpy
import time
from typing import Any

import ml_collections
import numpy as np

from sppnet_jax import config_checks, configs, stats
from sppnet_jax import workdir as workdir_lib
from sppnet_jax.transfer import checks
from sppnet_jax.transfer import features as features_lib
from sppnet_jax.transfer import protocol, tasks

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


def _trunk_config(spec: str) -> ml_collections.ConfigDict | None:
  """The training config a trunk spec names, or None when it names an existing workdir."""
  if spec.startswith("synthetic:"):
    return configs.synthetic(spec.split(":", 1)[1])
  if spec.endswith(".py"):
    path = pathlib.Path(spec)
    if not path.is_file():
      raise FileNotFoundError(f"trunk config {spec!r} does not exist.")
    return runpy.run_path(str(path))["get_config"]()
  return None


def check_trunk(name: str, spec: str) -> ml_collections.ConfigDict | None:
  """The training config of trunk ``name`` (None when ``spec`` names a trained workdir), checked
  without training anything: a workdir must hold a checkpoint, a config must pass
  :func:`sppnet_jax.config_checks.validate_config`."""
  config = _trunk_config(spec)
  if config is None:
    trunk_dir = pathlib.Path(spec)
    if not (trunk_dir / "config.json").is_file():
      raise FileNotFoundError(f"trunk {name!r}: {spec!r} is neither a training workdir (no config.json) nor a "
                              "config (synthetic:<variant> or a .py file).")
    if not workdir_lib.has_checkpoint(trunk_dir):
      raise FileNotFoundError(f"trunk {name!r}: {spec!r} holds no checkpoint yet; finish its training "
                              f"('sppnet train --workdir {spec} ...') first.")
    return None
  try:
    config_checks.validate_config(config)
  except ValueError as e:
    raise ValueError(f"trunk {name!r} ({spec}): {e}") from None
  return config


def prepare_trunk(name: str, spec: str, trunk_root: pathlib.Path):
  """(config, model, params, mean, checkpoint dir) of a trunk, training it first if needed; None
  when that training was stopped by a signal (it saved; rerunning resumes it)."""
  config = check_trunk(name, spec)
  if config is None:
    trunk_dir = pathlib.Path(spec)
  else:
    from sppnet_jax import train  # only when a trunk must be trained
    trunk_dir = trunk_root / name
    # Only the parameters matter here: the trunk's own evaluation is kept small.
    config.eval.update(views=("crop",), sweep_sizes=())
    if not workdir_lib.has_checkpoint(trunk_dir) or not (trunk_dir / "eval.json").exists():
      logging.info("training trunk %r into %s", name, trunk_dir)
      if train.train_and_evaluate(config, trunk_dir).get("preempted"):
        return None
  trunk_config, model, params, mean = workdir_lib.load_run(trunk_dir)
  return trunk_config, model, params, mean, trunk_dir


def _checkpoint_id(trunk_dir: pathlib.Path) -> str:
  steps = sorted(int(p.name) for p in (trunk_dir / "checkpoints").iterdir() if p.name.isdigit())
  return f"{trunk_dir.resolve()}@{steps[-1] if steps else 'none'}"


def _column_features(config, column, task: tasks.Task, trunk, workdir: pathlib.Path) -> dict[str, dict]:
  """{split: {layer: (N, D) float32}} of one column, from the cache when it is current."""
  trunk_config, model, params, mean, trunk_dir = trunk
  view_mean = mean if config.mean == "trunk" else float(config.mean)
  view = features_lib.FeatureView(column.view, int(column.size), view_mean, config.get("crop_short_side") or None,
                                  config.batch_size, config.bucket, config.max_aspect)
  layers = features_lib.check_layers(model, tuple(column.layers), column.view)
  out = {}
  for split, source in task.images.items():
    key = features_lib.cache_key(trunk=_checkpoint_id(trunk_dir), task=config.task.to_dict(), split=split,
                                 view=column.view, size=int(column.size), mean=str(config.mean),
                                 crop_short_side=config.get("crop_short_side"))
    compute = lambda: features_lib.extract(model, params, source, layers, view, progress=config.progress)
    out[split] = features_lib.cached_extract(workdir / "features" / f"{column.name}_{split}.npz", key, compute,
                                             layers)
  return out


def _score_layer(config, task: tasks.Task, feats: dict[str, dict], layer: str):
  """(Score, per-test-image scores or per-split accuracies) of one layer."""
  if task.kind == "multilabel":
    scores, converged = protocol.multilabel_scores(feats["train"][layer], task.targets["train"],
                                                   feats["test"][layer], config.svm.C)
    return protocol.multilabel_score(scores, task.targets["test"], converged, seed=config.seed), scores
  s = config.splits
  score = protocol.split_score(feats["pool"][layer], task.targets["pool"], s.num_splits, config.svm.C,
                               s.train_per_class, s.test_per_class)
  return score, np.array(score.per_split)


def _compare(task: tasks.Task, a, b, seed: int) -> dict:
  """A - B for one layer of two columns: paired bootstrap over test images (multi-label) or a
  paired t-test over the shared splits (single-label)."""
  if task.kind == "multilabel":
    value, low, high, p = protocol.paired_map_difference(a, b, task.targets["test"], seed=seed)
    return {"difference": value, "low": low, "high": high, "p_value": p, "test": "paired bootstrap"}
  # seed_comparison takes errors; accuracy differences are the negated error differences.
  c = stats.seed_comparison(-np.asarray(a), -np.asarray(b))
  return {"difference": -c.difference, "low": -c.high, "high": -c.low, "p_value": c.p_value,
          "test": f"paired t over {c.num_seeds} splits"}


def transfer_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Runs every column of ``config`` in ``workdir`` and writes ``results.json`` and ``report.md``.
  Returns the results, or ``{'preempted': True, 'trunk': name}`` when a trunk's training was stopped."""
  workdir = pathlib.Path(workdir)
  start = time.time()
  # Everything a config can be refused for is checked before anything is trained, extracted or written.
  checks.validate_transfer_config(config)
  for name, spec in config.trunks.items():
    check_trunk(name, str(spec))
  policy = dict(has_outputs=lambda w: (w / RESULTS_FILE).exists(), ignore=("progress",))
  workdir_lib.check_config(config, workdir, **policy)
  task = tasks.get_task(config)
  checks.check_task(config, task)
  workdir_lib.write_config(config, workdir, **policy)
  trunk_root = pathlib.Path(config.trunk_dir) if config.get("trunk_dir") else workdir / "trunks"
  trunks = {}
  for name, spec in config.trunks.items():
    trunks[name] = prepare_trunk(name, str(spec), trunk_root)
    if trunks[name] is None:
      return {"preempted": True, "trunk": name}
  chance = (protocol.chance_map(task.targets["test"], seed=config.seed) if task.kind == "multilabel"
            else 100.0 / len(np.unique(task.targets["pool"])))
  results: dict[str, Any] = {"task": task.name, "kind": task.kind, "chance": chance, "columns": {}, "comparisons": []}
  raw: dict[tuple[str, str], np.ndarray] = {}
  for column in config.columns:
    feats = _column_features(config, column, task, trunks[column.trunk], workdir)
    cells = {}
    for layer in column.layers:
      score, raw[column.name, layer] = _score_layer(config, task, feats, layer)
      cells[layer] = score.as_dict() | {"dim": int(next(iter(feats.values()))[layer].shape[1]),
                                        "paper": column.get("paper", {}).get(layer)}
      logging.info("column %s %s: %s", column.name, layer, protocol.format_score(score))
    results["columns"][column.name] = {"trunk": column.trunk, "view": column.view, "size": int(column.size),
                                       "cells": cells}
  for a, b in config.get("comparisons", ()):
    for layer in _layers(config, a):
      if (b, layer) in raw:
        results["comparisons"].append({"a": a, "b": b, "layer": layer} |
                                      _compare(task, raw[a, layer], raw[b, layer], config.seed))
  results["seconds"] = round(time.time() - start, 1)
  (workdir / RESULTS_FILE).write_text(json.dumps(results, indent=1))
  (workdir / REPORT_FILE).write_text(report(results, config.get("title", task.name)))
  return results


def _layers(config, column_name: str) -> tuple[str, ...]:
  for column in config.columns:
    if column.name == column_name:
      return tuple(column.layers)
  raise ValueError(f"comparison names column {column_name!r}, which the config does not have.")


def _cell(cell: dict | None) -> str:
  if cell is None:
    return "–"
  text = protocol.format_score(protocol.Score(cell["value"], cell["low"], cell["high"], cell["interval"],
                                              cell["converged"]))
  if cell.get("paper") is not None:
    text += f" (paper {cell['paper']:.2f})"
  return text


def report(results: dict, title: str) -> str:
  """A Markdown table (rows: layers, columns: the config's columns) and the paired comparisons."""
  columns = results["columns"]
  layers: list[str] = []
  for column in columns.values():
    layers += [layer for layer in column["cells"] if layer not in layers]
  metric = "mean AP (%)" if results["kind"] == "multilabel" else "mean class accuracy (%)"
  head = [f"{name}: {c['trunk']} {c['view']} {c['size']}" for name, c in columns.items()]
  chance = "random scores" if results["kind"] == "multilabel" else "guessing"
  lines = [f"# Transfer: {title}", "", f"{metric}, 95 % interval in brackets; the paper's figure beside it "
           f"where the column has one. {chance.capitalize()} would score {results['chance']:.2f}.", "",
           "| layer | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
  for layer in layers:
    lines.append(f"| {layer} | " + " | ".join(_cell(c["cells"].get(layer)) for c in columns.values()) + " |")
  if results["comparisons"]:
    same = "test images" if results["kind"] == "multilabel" else "splits"
    lines += ["", f"Paired comparisons on the same {same} (A − B, points):", ""]
    for c in results["comparisons"]:
      sign = "resolved" if (c["low"] > 0 or c["high"] < 0) and c["p_value"] < 0.05 else "unresolved"
      lines.append(f"- {c['layer']}: {c['a']} − {c['b']} = {c['difference']:+.2f} [{c['low']:+.2f}, "
                   f"{c['high']:+.2f}], {c['test']}, {stats.format_p(c['p_value'])}: {sign}")
  unconverged = [f"{n}/{layer}" for n, c in columns.items() for layer, cell in c["cells"].items()
                 if not cell["converged"]]
  if unconverged:
    lines += ["", f"SVM solver did not converge for: {', '.join(unconverged)}."]
  lines += ["", f"{results['seconds']:.0f} s."]
  return "\n".join(lines) + "\n"
