"""Top-1 / top-5 error with 95 % intervals, per view and per test size.

The views themselves (crop, full, ten, multiview) are defined in :mod:`sppnet_jax.views`.
Here: :func:`predict` (per-example probabilities of one view at one test size),
:func:`summarize` (errors with Wilson intervals), :func:`evaluate_params` (both at once),
:func:`size_sweep` (every view at a list of test sizes) and the per-example record
kept in a workdir (``predictions.npz``) so that runs scored on the same images can be
compared pairwise (:mod:`sppnet_jax.stats`).

Fit diagnostics: :func:`train_subset` is a fixed, seeded subset of the *training* images
(``eval.train_subset_examples``), scored under the same views without augmentation, so that
every result has its training error beside its validation error (``train_subset`` in
``eval.json``). A multi-size run is also scored at its second size (``second_size``).

With several JAX processes :func:`predict` splits the examples: process ``i`` of ``n`` reads,
decodes and scores examples ``i, i + n, i + 2n, ...`` and the processes exchange their
predictions, so every process returns all of them (the same arrays as one process would).
Every process must therefore make the same sequence of evaluation calls.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import ml_collections
import numpy as np

from sppnet_jax import models, stats, views
from sppnet_jax.data import sources

VIEWS = tuple(views.VIEWS)


def _gather(part: views.Predictions) -> views.Predictions:
  """Every process's predictions (``part``: its own, indices already global), in index order."""
  from jax.experimental import multihost_utils

  longest = int(np.max(multihost_utils.process_allgather(np.int32(part.index.size))))
  pad = longest - part.index.size
  index = np.concatenate([part.index.astype(np.int64), np.full(pad, -1, np.int64)])
  label = np.concatenate([part.label, np.zeros(pad, part.label.dtype)])
  probs = np.concatenate([part.probs, np.zeros((pad, *part.probs.shape[1:]), part.probs.dtype)])
  index, label, probs = (np.asarray(x).reshape(-1, *x.shape[2:])
                         for x in multihost_utils.process_allgather((index, label, probs)))
  keep = index >= 0
  order = np.argsort(index[keep], kind="stable")
  return views.Predictions(index[keep][order].astype(np.int32), label[keep][order], probs[keep][order], part.warped)


def predict(model: models.SPPNet, params, source, *, view: str, config: ml_collections.ConfigDict, mean,
            size: int | None = None) -> views.Predictions:
  """Per-example probabilities of ``view`` at test size ``size`` (default: the training crop);
  split across the JAX processes (see the module docstring)."""
  spec = views.spec_from_config(config, mean, size)
  index, count = jax.process_index(), jax.process_count()
  if count == 1 or len(source) < count:
    predictions = views.get_view(view).predict(model, params, source, spec)
  else:
    mine = np.arange(index, len(source), count)
    part = views.get_view(view).predict(model, params, sources.Subset(source, mine, description=f"process {index}"),
                                        spec)
    predictions = _gather(dataclasses.replace(part, index=mine[part.index]))
  bad = ~np.isfinite(predictions.probs).all(axis=-1)
  if bad.any():
    raise FloatingPointError(
        f"the network's outputs are not finite for {int(bad.sum())} of {bad.size} examples under view {view!r} "
        f"(first: source index {int(predictions.index[bad][0])}); its parameters hold NaN or inf, so no error rate "
        "is reported. Evaluate an intact checkpoint.")
  return predictions


def summarize(predictions: views.Predictions) -> dict:
  """Top-1/top-5 error (%) with their 95 % Wilson intervals."""
  n = int(predictions.label.size)
  if n == 0:
    raise ValueError("the evaluation split is empty.")
  result: dict = {"num_examples": n}
  for name, wrong in (("top1", predictions.top1_wrong), ("top5", predictions.top5_wrong)):
    k = int(wrong.sum())
    result[f"{name}_error"] = 100.0 * k / n
    result[f"{name}_interval"] = list(stats.wilson_interval(k, n))
  if predictions.warped:
    result["warped"] = True
  return result


def evaluate_params(model: models.SPPNet, params, source, *, view: str, config: ml_collections.ConfigDict,
                    mean, size: int | None = None) -> dict:
  """Top-1/top-5 error (%) of ``params`` on ``source`` under ``view`` (with 95 % intervals)."""
  return summarize(predict(model, params, source, view=view, config=config, mean=mean, size=size))


def size_sweep(model: models.SPPNet, params, source, *, config: ml_collections.ConfigDict, mean,
                    sizes, view_names: tuple[str, ...] = ("crop", "full")) -> dict[tuple[str, int], views.Predictions]:
  """Predictions of each view at each test size (the crop edge; images scale with it)."""
  return {(view, int(size)): predict(model, params, source, view=view, config=config, mean=mean, size=size)
          for view in view_names for size in sizes}


# --- the per-example record of a workdir ------------------------------------------------------

PREDICTIONS_FILE = "predictions.npz"


def record_key(view: str, size: int, sweep: bool = False, train: bool = False) -> str:
  """The name of one view's per-example record: ``crop@112``; ``sweep:crop@56`` for the sweep's
  subset of the evaluation split; ``train:crop@112`` for the fixed subset of the training split."""
  return f"{'sweep:' if sweep else ''}{'train:' if train else ''}{view}@{int(size)}"


def save_predictions(workdir: str | pathlib.Path, predictions: dict[str, views.Predictions]) -> None:
  """Merges per-example mistakes (keyed by :func:`record_key`) into ``workdir/predictions.npz``."""
  path = pathlib.Path(workdir) / PREDICTIONS_FILE
  arrays = dict(np.load(path)) if path.exists() else {}
  for key, p in predictions.items():
    arrays.update({f"{key}/index": p.index, f"{key}/top1_wrong": p.top1_wrong, f"{key}/top5_wrong": p.top5_wrong})
  tmp = path.with_name(path.stem + ".tmp.npz")
  np.savez_compressed(tmp, **arrays)
  tmp.replace(path)


def load_mistakes(workdir: str | pathlib.Path, key: str, metric: str = "top1") -> tuple[np.ndarray, np.ndarray]:
  """(index, wrong) of one record of a workdir: source indices and per-example mistakes."""
  path = pathlib.Path(workdir) / PREDICTIONS_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: evaluate the run first (sppnet evaluate --workdir {workdir}).")
  with np.load(path) as data:
    if f"{key}/index" not in data:
      keys = sorted({k.rsplit("/", 1)[0] for k in data.files})
      raise KeyError(f"{path} has no record {key!r}; it has {keys}.")
    return data[f"{key}/index"], data[f"{key}/{metric}_wrong"]


def paired(workdir_a, workdir_b, key: str, metric: str = "top1", key_b: str | None = None) -> stats.PairedDifference:
  """error(A) - error(B) on the same examples: record ``key`` of both runs, or record ``key`` of
  A against record ``key_b`` of B (e.g. one run's full view against its crop view)."""
  key_b = key_b or key
  index_a, wrong_a = load_mistakes(workdir_a, key, metric)
  index_b, wrong_b = load_mistakes(workdir_b, key_b, metric)
  if not np.array_equal(index_a, index_b):
    raise ValueError(f"{workdir_a} ({key!r}) and {workdir_b} ({key_b!r}) were not scored on the same examples; a "
                     "paired comparison needs the same evaluation split.")
  return stats.paired_difference(wrong_a, wrong_b)


def first_examples(source, n: int):
  """The first ``n`` examples of a source, as a :class:`sources.Subset` (the synthetic splits are
  i.i.d., so a prefix is a random subset; other sources keep their own order)."""
  n = min(int(n), len(source))
  return sources.Subset(source, np.arange(n), description=f"the first {n}")


EVAL_FILE = "eval.json"
# Entries of eval.json that are not a view's validation result at the training crop size.
SWEEP, TRAIN_SUBSET, SECOND_SIZE = "sweep", "train_subset", "second_size"


def view_results(results: dict) -> dict:
  """The validation result of each view at the training crop size, from an ``eval.json``."""
  return {k: v for k, v in results.items() if k not in (SWEEP, TRAIN_SUBSET, SECOND_SIZE)}


def train_subset(train_source, config: ml_collections.ConfigDict):
  """The fixed subset of the training split the fit diagnostics score: ``eval.train_subset_examples``
  examples drawn with ``data.seed`` (stratified where the source knows its labels), the same at
  every validation and in every run of the same data; None when the field is 0 or None."""
  n = config.eval.get("train_subset_examples") or 0
  return sources.draw_subset(train_source, int(n), seed=config.data.seed) if n else None


def second_size(config: ml_collections.ConfigDict) -> int | None:
  """The second input size of a multi-size run (None for other modes or when it equals the crop)."""
  size = config.data.get("second_size")
  if config.train.get("mode") != "multi" or size is None or int(size) == int(config.data.crop_size):
    return None
  return int(size)


def evaluate_run(model: models.SPPNet, params, source, *, config: ml_collections.ConfigDict, mean,
                 workdir: str | pathlib.Path, view_names=None, sweep: bool = True, write: bool = True,
                 train_source=None) -> dict:
  """Evaluates a trained run and records it in its workdir.

  Every view of ``view_names`` (default ``eval.views``) at the training crop size; with
  ``train_source``, the same views on its :func:`train_subset` (``train_subset``); for a
  multi-size run both again at the second size (``second_size``); then, with ``sweep`` and
  ``eval.sweep_sizes`` set, every view of ``eval.sweep_views`` at every size of
  ``eval.sweep_sizes`` on the first ``eval.sweep_examples`` examples. Summaries (errors with
  95 % intervals) are merged into ``workdir/eval.json`` (``{view: ..., 'train_subset': {view:
  ...}, 'second_size': {'size': s, 'validation': {view: ...}, 'train_subset': {view: ...}},
  'sweep': {view: {size: ...}}}``), per-example mistakes into ``workdir/predictions.npz``
  (unless not ``write``: the other processes of a multi-process run, which take part but leave
  the files to process 0). Returns the summaries.
  """
  e, crop = config.eval, config.data.crop_size
  view_names = tuple(view_names or e.views)
  fit = train_subset(train_source, config) if train_source is not None else None
  records, results = {}, {}

  def score(split_source, size: int, train: bool) -> dict:
    out = {}
    for view in view_names:
      p = predict(model, params, split_source, view=view, config=config, mean=mean, size=size)
      records[record_key(view, size, train=train)] = p
      out[view] = summarize(p)
    return out

  results.update(score(source, crop, train=False))
  if fit is not None:
    results[TRAIN_SUBSET] = score(fit, crop, train=True)
  second = second_size(config)
  if second is not None:
    results[SECOND_SIZE] = {"size": second, "validation": score(source, second, train=False)}
    if fit is not None:
      results[SECOND_SIZE][TRAIN_SUBSET] = score(fit, second, train=True)
  sizes = tuple(e.get("sweep_sizes") or ())
  if sweep and sizes:
    subset = first_examples(source, e.get("sweep_examples") or len(source))
    results[SWEEP] = {}
    for (view, size), p in size_sweep(model, params, subset, config=config, mean=mean, sizes=sizes,
                                      view_names=tuple(e.sweep_views)).items():
      records[record_key(view, size, sweep=True)] = p
      results[SWEEP].setdefault(view, {})[str(size)] = summarize(p)
  if not write:
    return results
  workdir = pathlib.Path(workdir)
  save_predictions(workdir, records)
  path = workdir / EVAL_FILE
  merged = json.loads(path.read_text()) if path.exists() else {}
  for key in (TRAIN_SUBSET, SECOND_SIZE):  # nested entries merge per view, like the top level
    if key in results and isinstance(merged.get(key), dict):
      results[key] = _merge(merged[key], results[key])
  merged.update(results)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(merged, indent=2))
  tmp.replace(path)
  return results


def _merge(old: dict, new: dict) -> dict:
  """``old`` updated by ``new``, dictionaries merged key by key (so evaluating one view keeps the others)."""
  out = dict(old)
  for key, value in new.items():
    out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
  return out
