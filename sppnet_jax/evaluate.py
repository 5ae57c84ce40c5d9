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

Every result names the checkpoint it was computed from: each entry of ``eval.json`` holds
``checkpoint: {'step', 'digest'}`` and each record of ``predictions.npz`` holds
``<key>/checkpoint_step`` and ``<key>/params_digest`` (the digest is
:func:`sppnet_jax.checkpoints.params_digest` of the parameters scored, so a step saved again under
the same number is told apart; the step is the caller's, or the checkpoint whose integrity record
holds those parameters). The two files never mix checkpoints: when an evaluation is of another
checkpoint than results already in them (the newest step was damaged and the loader fell back to
an older one, or a repaired step was evaluated again), the earlier file is first copied whole to
``eval.step<N>.json`` / ``predictions.step<N>.npz`` and its results of the other checkpoint are
left out, with a warning naming both checkpoints and the views to evaluate again. The views not
evaluated again are then missing rather than silently of another network: a full-vs-crop
comparison or a report can only ever pair results of one checkpoint. A file that cannot be read
is moved aside to ``<name>.corrupt-<time>`` with a warning naming it, never discarded, and both
files are written whole (a temporary file renamed over the old one).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import time
import zipfile
import zlib
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np

from sppnet_jax import checkpoints, models, run_files, stats, views
from sppnet_jax.data import sources

_log = logging.getLogger(__name__)

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


# --- which checkpoint a result is of -------------------------------------------------------------

CHECKPOINT = "checkpoint"


def checkpoint_of(params, workdir: str | pathlib.Path, step: int | None = None) -> dict:
  """``{'step', 'digest'}`` of the parameters scored: the digest is
  :func:`checkpoints.params_digest`; the step is ``step``, or else the newest checkpoint of
  ``workdir`` whose integrity record holds these parameters (None when none does)."""
  digest = checkpoints.params_digest(params)
  if step is None:
    step = checkpoints.find_params_step(pathlib.Path(workdir) / "checkpoints", digest)
  return {"step": None if step is None else int(step), "digest": digest}


def same_checkpoint(a: dict | None, b: dict | None) -> bool:
  """Whether two results' checkpoints are known and hold the same parameters."""
  return isinstance(a, dict) and isinstance(b, dict) and a.get("digest") is not None and a.get("digest") == b.get(
      "digest")


def describe_checkpoint(checkpoint: dict | None) -> str:
  """``step 6 (parameters 1a2b3c4d)``: a checkpoint as a message names it."""
  if not isinstance(checkpoint, dict) or not checkpoint.get("digest"):
    return "no recorded checkpoint"
  step = checkpoint.get("step")
  return f"{'step ' + str(step) if step is not None else 'an unidentified checkpoint'} " \
         f"(parameters {str(checkpoint['digest'])[:8]})"


def _archive_tag(stale: list[dict | None]) -> str:
  """``step6``, ``step4+step6`` or ``unrecorded``: the checkpoints of results being moved aside."""
  steps = sorted({c["step"] for c in stale if isinstance(c, dict) and c.get("step") is not None})
  unknown = any(not isinstance(c, dict) or c.get("step") is None for c in stale)
  return "+".join([f"step{s}" for s in steps] + (["unrecorded"] if unknown else []))


def _free_name(folder: pathlib.Path, stem: str, suffix: str = "") -> pathlib.Path:
  """``folder/<stem><suffix>``, or when that is taken ``<stem>-2<suffix>``, ``-3``, ...: a name
  that overwrites nothing."""
  target, n = folder / f"{stem}{suffix}", 2
  while target.exists():
    target, n = folder / f"{stem}-{n}{suffix}", n + 1
  return target


def _stamped(path: pathlib.Path, tag: str) -> pathlib.Path:
  """``<stem>.<tag><suffix>`` beside ``path`` (``eval.step6.json``), made unique by :func:`_free_name`."""
  return _free_name(path.parent, f"{path.stem}.{tag}", path.suffix)


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= limit else text[:limit] + "..."


def _names(names: list[str], limit: int = 6) -> str:
  shown = ", ".join(names[:limit])
  return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _set_aside_other_checkpoints(path: pathlib.Path, stale: list[tuple[str, dict | None]], checkpoint: dict,
                                 what: str) -> None:
  """Copies ``path`` whole to ``<stem>.step<N><suffix>`` and warns that its ``stale`` results
  (name, checkpoint) of other checkpoints are left out of it from now on."""
  archive = _stamped(path, _archive_tag([c for _, c in stale]))
  shutil.copy2(path, archive)
  others = " and ".join(dict.fromkeys(describe_checkpoint(c) for _, c in stale))
  _log.warning("%s held %s of %s (%s) but this evaluation is of %s; so that it never mixes checkpoints, the earlier "
               "file was copied to %s and those %s left out of it; evaluate those views again to have them for this "
               "checkpoint.", path, what, others, _names([n for n, _ in stale]), describe_checkpoint(checkpoint),
               archive, what)


def _read_or_set_aside(path: pathlib.Path, read: Callable[[pathlib.Path], Any], empty: Any) -> Any:
  """``read(path)``; ``empty`` when the file does not exist, or when it cannot be read, in which
  case it is moved to ``<name>.corrupt-<time>`` with a warning naming both (never discarded)."""
  if not path.exists():
    return empty
  try:
    return read(path)
  except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
    target = _free_name(path.parent, f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, target)
    _log.warning("%s could not be read (%s); moved it to %s and wrote a new one with this evaluation's results.",
                 path, _one_line(e), target)
    return empty


# --- the per-example record of a workdir ------------------------------------------------------

PREDICTIONS_FILE = "predictions.npz"


def record_key(view: str, size: int, sweep: bool = False, train: bool = False) -> str:
  """The name of one view's per-example record: ``crop@112``; ``sweep:crop@56`` for the sweep's
  subset of the evaluation split; ``train:crop@112`` for the fixed subset of the training split."""
  return f"{'sweep:' if sweep else ''}{'train:' if train else ''}{view}@{int(size)}"


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of an ``.npz`` file, read now (so a damaged member fails here, not later)."""
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _record_checkpoint(record: dict[str, np.ndarray]) -> dict | None:
  """The checkpoint of one record of a ``predictions.npz`` (its arrays by name: ``index``,
  ``params_digest``, ...), or None when the record predates checkpoints being recorded."""
  if "params_digest" not in record:
    return None
  step = int(record["checkpoint_step"]) if "checkpoint_step" in record else -1
  return {"step": None if step < 0 else step, "digest": str(record["params_digest"])}


def _split(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """The arrays of a ``predictions.npz`` grouped by record: ``{key: {name: array}}``."""
  records: dict[str, dict[str, np.ndarray]] = {}
  for name, value in arrays.items():
    key, _, field = name.rpartition("/")
    records.setdefault(key, {})[field] = value
  return records


def save_predictions(workdir: str | pathlib.Path, predictions: dict[str, views.Predictions], *,
                     checkpoint: dict) -> None:
  """Merges per-example mistakes (keyed by :func:`record_key`) of the parameters of ``checkpoint``
  (:func:`checkpoint_of`) into ``workdir/predictions.npz``; records of another checkpoint are set
  aside first (see the module docstring)."""
  path = pathlib.Path(workdir) / PREDICTIONS_FILE
  records = _split(_read_or_set_aside(path, _read_npz, {}))
  stale = [(key, _record_checkpoint(r)) for key, r in sorted(records.items())]
  stale = [(key, c) for key, c in stale if not same_checkpoint(c, checkpoint)]
  if stale:
    _set_aside_other_checkpoints(path, stale, checkpoint, "records")
    for key, _ in stale:
      del records[key]
  step = -1 if checkpoint.get("step") is None else int(checkpoint["step"])
  for key, p in predictions.items():
    records[key] = {"index": p.index, "top1_wrong": p.top1_wrong, "top5_wrong": p.top5_wrong,
                    "checkpoint_step": np.int64(step), "params_digest": np.str_(checkpoint["digest"])}
  run_files.write_npz(path, compressed=True,
                      **{f"{key}/{name}": value for key, r in records.items() for name, value in r.items()})


def load_record(workdir: str | pathlib.Path, key: str) -> dict[str, np.ndarray]:
  """The arrays of one record of a workdir's ``predictions.npz``, by name (``index``,
  ``top1_wrong``, ``top5_wrong`` and, when recorded, ``checkpoint_step`` and ``params_digest``)."""
  path = pathlib.Path(workdir) / PREDICTIONS_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: evaluate the run first (sppnet evaluate --workdir {workdir}).")
  try:
    with np.load(path) as data:
      names = [n for n in data.files if n.rpartition("/")[0] == key]
      if not names:
        keys = sorted({n.rpartition("/")[0] for n in data.files})
        raise KeyError(f"{path} has no record {key!r}; it has {keys}.")
      return {n.rpartition("/")[2]: data[n] for n in names}
  except (ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as e:
    raise ValueError(f"{path} cannot be read ({_one_line(e)}); evaluate the run again (sppnet "
                     f"evaluate --workdir {workdir}), which moves the damaged file aside.") from e


def load_mistakes(workdir: str | pathlib.Path, key: str, metric: str = "top1") -> tuple[np.ndarray, np.ndarray]:
  """(index, wrong) of one record of a workdir: source indices and per-example mistakes."""
  record = load_record(workdir, key)
  return record["index"], record[f"{metric}_wrong"]


def record_checkpoint(workdir: str | pathlib.Path, key: str) -> dict | None:
  """The checkpoint (``{'step', 'digest'}``) one record of a workdir was scored with; None for
  records written before checkpoints were recorded."""
  return _record_checkpoint(load_record(workdir, key))


def _view_of(key: str) -> str:
  return key.rsplit("@", 1)[0].split(":")[-1]


def paired(workdir_a, workdir_b, key: str, metric: str = "top1", key_b: str | None = None) -> stats.PairedDifference:
  """error(A) - error(B) on the same examples: record ``key`` of both runs, or record ``key`` of
  A against record ``key_b`` of B (e.g. one run's full view against its crop view). Two records
  of one run must be of one checkpoint."""
  key_b = key_b or key
  record_a, record_b = load_record(workdir_a, key), load_record(workdir_b, key_b)
  if pathlib.Path(workdir_a).resolve() == pathlib.Path(workdir_b).resolve():
    a, b = _record_checkpoint(record_a), _record_checkpoint(record_b)
    if (a is not None or b is not None) and not same_checkpoint(a, b):
      both = ",".join(dict.fromkeys((_view_of(key), _view_of(key_b))))
      raise ValueError(f"{pathlib.Path(workdir_a) / PREDICTIONS_FILE}: record {key!r} is of {describe_checkpoint(a)} "
                       f"but {key_b!r} of {describe_checkpoint(b)}, so they compare different networks; evaluate "
                       f"both of one checkpoint (sppnet evaluate --workdir {workdir_a} --views {both}).")
  if not np.array_equal(record_a["index"], record_b["index"]):
    raise ValueError(f"{workdir_a} ({key!r}) and {workdir_b} ({key_b!r}) were not scored on the same examples; a "
                     "paired comparison needs the same evaluation split.")
  return stats.paired_difference(record_a[f"{metric}_wrong"], record_b[f"{metric}_wrong"])


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


def _is_entry(value: Any) -> bool:
  return isinstance(value, dict) and "num_examples" in value


def entries(results: dict, prefix: str = "") -> Iterator[tuple[str, dict]]:
  """Every result of an ``eval.json`` with its name: ``crop``, ``train_subset/crop``,
  ``second_size/validation/crop``, ``sweep/crop/48``."""
  for key, value in results.items():
    name = f"{prefix}{key}"
    if _is_entry(value):
      yield name, value
    elif isinstance(value, dict):
      yield from entries(value, name + "/")


def _keep_entries(results: dict, keep: Callable[[dict], bool]) -> dict:
  """``results`` with only the entries ``keep`` accepts; a group left with no entry goes too
  (``second_size`` with only its ``size``)."""
  out = {}
  for key, value in results.items():
    if _is_entry(value):
      if keep(value):
        out[key] = value
    elif isinstance(value, dict):
      kept = _keep_entries(value, keep)
      if kept:
        out[key] = kept
    else:
      out[key] = value
  return out if any(isinstance(v, dict) for v in out.values()) else {}


def mixed_checkpoints(results: dict) -> str | None:
  """``crop, full: step 6 (parameters ...); train_subset/crop: step 4 (...)`` when the entries of
  an ``eval.json`` are of more than one checkpoint (entries with no recorded checkpoint count as
  one more); None when they are all of one (or all unrecorded)."""
  groups: dict[str | None, list[str]] = {}
  described: dict[str | None, str] = {}
  for name, entry in entries(results):
    checkpoint = entry.get(CHECKPOINT)
    digest = checkpoint.get("digest") if isinstance(checkpoint, dict) else None
    groups.setdefault(digest, []).append(name)
    described[digest] = describe_checkpoint(checkpoint)
  if len(groups) < 2:
    return None
  return "; ".join(f"{_names(names)}: {described[digest]}" for digest, names in groups.items())


def entry_step(entry: dict) -> int | None:
  """The checkpoint step one ``eval.json`` entry was computed from (None when not recorded)."""
  checkpoint = entry.get(CHECKPOINT)
  return checkpoint.get("step") if isinstance(checkpoint, dict) else None


def _read_eval_file(path: pathlib.Path) -> dict:
  results = run_files.read_json(path, f"evaluate the run again (sppnet evaluate --workdir {path.parent}), which "
                                      "moves the damaged file aside")
  if not isinstance(results, dict):
    raise ValueError(f"{path} holds a JSON {type(results).__name__}, not an object of results; evaluate the run "
                     f"again (sppnet evaluate --workdir {path.parent}), which moves the damaged file aside.")
  return results


def read_eval(workdir: str | pathlib.Path) -> dict:
  """A workdir's ``eval.json`` (``{}`` when there is none); a file that cannot be read is one
  ``ValueError`` naming it and how to go on."""
  path = pathlib.Path(workdir) / EVAL_FILE
  return _read_eval_file(path) if path.exists() else {}


def write_eval(workdir: str | pathlib.Path, results: dict, checkpoint: dict) -> dict:
  """Merges ``results`` (entries of ``checkpoint``) into ``workdir/eval.json``, setting aside an
  unreadable file and the results of other checkpoints first (see the module docstring); writes
  the file whole. Returns ``results`` with the nested groups merged as written."""
  path = pathlib.Path(workdir) / EVAL_FILE
  merged = _read_or_set_aside(path, _read_eval_file, {})
  stale = [(name, entry.get(CHECKPOINT)) for name, entry in entries(merged)
           if not same_checkpoint(entry.get(CHECKPOINT), checkpoint)]
  if stale:
    _set_aside_other_checkpoints(path, stale, checkpoint, "results")
    merged = _keep_entries(merged, lambda entry: same_checkpoint(entry.get(CHECKPOINT), checkpoint))
  results = dict(results)
  for key in (TRAIN_SUBSET, SECOND_SIZE):  # nested entries merge per view, like the top level
    if key in results and isinstance(merged.get(key), dict):
      results[key] = _merge(merged[key], results[key])
  merged.update(results)
  run_files.write_json(path, merged, indent=2)
  return results


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
                 train_source=None, step: int | None = None) -> dict:
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

  Every summary and record names the checkpoint scored (:func:`checkpoint_of`: checkpoint
  ``step`` of the workdir, or when None the step whose integrity record holds ``params``), and
  results of another checkpoint already in the files are set aside, never merged with these
  (see the module docstring).
  """
  e, crop = config.eval, config.data.crop_size
  view_names = tuple(view_names or e.views)
  fit = train_subset(train_source, config) if train_source is not None else None
  checkpoint = checkpoint_of(params, workdir, step)
  records, results = {}, {}

  def score(split_source, size: int, train: bool) -> dict:
    out = {}
    for view in view_names:
      p = predict(model, params, split_source, view=view, config=config, mean=mean, size=size)
      records[record_key(view, size, train=train)] = p
      out[view] = summarize(p) | {CHECKPOINT: checkpoint}
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
      results[SWEEP].setdefault(view, {})[str(size)] = summarize(p) | {CHECKPOINT: checkpoint}
  if not write:
    return results
  save_predictions(workdir, records, checkpoint=checkpoint)
  return write_eval(workdir, results, checkpoint)


def _merge(old: dict, new: dict) -> dict:
  """``old`` updated by ``new``, dictionaries merged key by key (so evaluating one view keeps the others)."""
  out = dict(old)
  for key, value in new.items():
    out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
  return out
