"""The files of a run's workdir, below both training and detection.

One config policy for every workdir (:func:`write_config`): the first run writes
``config.json``; a later run with a different config is refused once the workdir holds
outputs that the old config produced, unless the caller asks to start over
(``start_over=True``) or the difference is in fields the caller lists as harmless
(``ignore``: logging fields; with ``sppnet train --extend``, a longer schedule). A workdir
with no outputs yet takes any config, so a mistake before the first output never locks it.

Also here: :func:`config_source` (the dataset a config's ``data`` fields name) and
:func:`load_run` (config, model, parameters and input normalisation of a training workdir's
newest intact checkpoint).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Iterable, NamedTuple

import jax
import ml_collections
import numpy as np

from sppnet_jax import run_files, state as state_lib
from sppnet_jax.checkpoints import CheckpointMismatchError, checkpoint_manager, restore_verified, saved_shapes
from sppnet_jax.data import augment, cache, sources

__all__ = ["LOGGING_FIELDS", "EXTENDABLE_FIELDS", "ConfigChangedError", "has_checkpoint", "config_changes",
           "read_config", "check_config", "write_config", "config_source", "load_mean_file", "load_run"]

# Training fields that change nothing a run computes; they never make a workdir's config differ.
LOGGING_FIELDS = tuple(f"train.{k}" for k in ("log_every_steps", "progress_bar"))
# Training fields that ``extend`` may change in a workdir that holds a run: more epochs, a later drop.
EXTENDABLE_FIELDS = tuple(f"train.{k}" for k in ("num_epochs", "lr_drop_epochs", "max_lr_drops"))


class ConfigChangedError(ValueError):
  """A workdir holds outputs of a different config."""


def has_checkpoint(workdir: str | os.PathLike) -> bool:
  """Whether ``workdir/checkpoints`` holds a step directory."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  if not tree:
    return {prefix: {}} if prefix else {}
  out: dict[str, Any] = {}
  for key, value in tree.items():
    out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
  return out


def config_changes(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
  """The dotted fields that differ between two JSON configs, less those in ``ignore``
  (a field or any of its parents listed there is ignored). Sorted."""
  ignored = set(ignore)
  a, b = _flatten(old), _flatten(new)
  changed = []
  for key in sorted(set(a) | set(b)):
    parts = key.split(".")
    if any(".".join(parts[:i]) in ignored for i in range(1, len(parts) + 1)):
      continue
    if a.get(key, _MISSING) != b.get(key, _MISSING):
      changed.append(key)
  return changed


_MISSING = object()


def _as_json(config: ml_collections.ConfigDict | dict) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(config, sort_keys=True))


CONFIG_REMEDY = "delete it to let this run's config be written again, or restore it"


def read_config(workdir: str | os.PathLike) -> dict | None:
  """The JSON config in ``workdir/config.json``; None when there is none. An empty or damaged
  file is one ``ValueError`` naming it and saying how to go on."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    return None
  config = run_files.read_json(path, CONFIG_REMEDY)
  if not isinstance(config, dict):
    raise ValueError(f"{path} holds a JSON {type(config).__name__}, not a config object; {CONFIG_REMEDY}")
  return config


def check_config(config: ml_collections.ConfigDict | dict, workdir: str | os.PathLike, *,
                 has_outputs: Callable[[pathlib.Path], bool] = has_checkpoint, ignore: Iterable[str] = (),
                 start_over: bool = False, hint: str | Callable[[list[str]], str] = "") -> list[str]:
  """The fields in which ``config`` differs from ``workdir/config.json`` (less ``ignore``); writes nothing.

  Raises :class:`ConfigChangedError` when there are any and ``has_outputs(workdir)``, unless
  ``start_over``. ``hint`` (or ``hint(changed)``) is appended to the error: how to go on.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  old = read_config(workdir)
  if old is None:
    return []
  changed = config_changes(old, _as_json(config), ignore)
  if changed and not start_over and has_outputs(workdir):
    hint = hint(changed) if callable(hint) else hint
    raise ConfigChangedError(
        f"{workdir} holds a run whose {', '.join(changed)} differ from this config ({path}). Resume it with the "
        f"same config, or give a new workdir.{(' ' + hint) if hint else ''}")
  return changed


def write_config(config: ml_collections.ConfigDict | dict, workdir: str | os.PathLike, *,
                 has_outputs: Callable[[pathlib.Path], bool] = has_checkpoint, ignore: Iterable[str] = (),
                 start_over: bool = False, hint: str | Callable[[list[str]], str] = "") -> list[str]:
  """:func:`check_config`, then writes ``workdir/config.json`` (making the directory), whole:
  a crash while writing leaves the previous file.

  Returns the changed fields (empty for a new or unchanged workdir); with ``start_over`` the
  caller discards the outputs those fields made stale.
  """
  changed = check_config(config, workdir, has_outputs=has_outputs, ignore=ignore, start_over=start_over, hint=hint)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  run_files.write_json(workdir / "config.json", _as_json(config), indent=2, sort_keys=True)
  return changed


def config_source(data: ml_collections.ConfigDict, which: str, **overrides):
  """The ``which`` ('train' or 'eval') split of the dataset named by a config's ``data`` fields
  (:func:`sources.source_from_config`; ``overrides`` replace its keywords).

  With ``data.cache`` the examples are kept in memory once read, one copy per process
  (``data.cache.shared``): meant for the built-in generated data.
  """
  source = sources.source_from_config(data, which, **overrides)
  return cache.shared(source) if data.get("cache") else source


def load_mean_file(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> np.ndarray | str:
  """The normalisation a run trained with: ``workdir/mean.npy`` for ``data.normalize='mean_image'``,
  or ``augment.PER_IMAGE``."""
  kind = config.data.get("normalize", "mean_image")
  if kind == "per_image":
    return augment.PER_IMAGE
  if kind != "mean_image":
    raise ValueError(f"data.normalize must be 'mean_image' (the paper) or 'per_image'; got {kind!r}.")
  path = pathlib.Path(workdir) / "mean.npy"
  if not path.exists():
    raise FileNotFoundError(f"{path} is missing: the run's mean image is needed to normalise its inputs.")
  return np.load(path)


def rate_in_optimizer(manager) -> bool:
  """Whether the run's checkpoints hold the learning rate in their optimizer state (runs saved
  before the rate moved into optax hold only weight decay and the update direction).

  Decided by the newest step whose ``state/_METADATA`` can be read (:func:`step_rate_in_optimizer`),
  so a damaged step never decides for its intact neighbours; True when no step's can be read
  (restoring them then says what is wrong with each)."""
  for step in sorted(manager.all_steps(), reverse=True):
    layout = step_rate_in_optimizer(manager, step)
    if layout is not None:
      return layout
  return True


def load_run(workdir: str | os.PathLike):
  """(config, model, params, mean) of the newest intact checkpoint in a training workdir
  (:func:`load_trained_run`, which also says which step that is)."""
  run = load_trained_run(workdir)
  return run.config, run.model, run.params, run.mean


def step_rate_in_optimizer(manager, step: int) -> bool | None:
  """Whether checkpoint ``step`` holds the learning rate in its optimizer state, read from that
  step's own ``state/_METADATA``; None when that file is missing or unreadable."""
  try:
    shapes = saved_shapes(pathlib.Path(manager.directory) / str(step))
  except ValueError:
    return None
  return any("hyperparams" in path for path in shapes)


# Where the classifier's bias sits in a saved train state: its length is the number of classes.
CLASSIFIER_BIAS = ("params", "head", "fc8", "bias")


def checkpoint_classes(manager) -> int | None:
  """The number of classes the run's checkpoints classify, from the newest step whose
  ``state/_METADATA`` can be read; None when no step's can."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      shape = saved_shapes(pathlib.Path(manager.directory) / str(step)).get(CLASSIFIER_BIAS)
    except ValueError:
      continue
    if shape:
      return int(shape[0])
  return None


def classes_mismatch(workdir: pathlib.Path, saved: int, num_classes: int, names: tuple[str, ...] | None,
                     data_name: str) -> str:
  """The one-line error for checkpoints that classify ``saved`` classes while the run's class list
  (``names``, from ``classes.json``) or, without it, its data has ``num_classes``."""
  path = workdir / sources.CLASSES_FILE
  if names is not None:
    return (f"{path} lists {len(names)} classes but the run's checkpoints classify {saved}; the checkpoints are "
            f"not damaged: put back the classes.json the run was trained with (its {saved} class names).")
  return (f"the run's checkpoints classify {saved} classes but the dataset {data_name} now has {num_classes} class "
          f"folders, and {path} (the classes the run trained on) is missing; the checkpoints are not damaged: put "
          f"back classes.json with the run's {saved} class names in training order, or give the dataset exactly the "
          f"{saved} class folders the run trained on.")


class TrainedRun(NamedTuple):
  """A training workdir's newest intact checkpoint, ready to evaluate."""
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  mean: np.ndarray | str
  step: int


def load_trained_run(workdir: str | os.PathLike) -> TrainedRun:
  """Config, model, parameters, input normalisation and step number of the newest intact
  checkpoint in a training workdir.

  Every step is restored in its own optimizer layout (:func:`step_rate_in_optimizer`). When
  the checkpoints classify another number of classes than the run's ``classes.json`` lists (or,
  without it, than its data holds), a ``ValueError`` says so (:func:`classes_mismatch`).
  """
  workdir = pathlib.Path(workdir)
  raw = read_config(workdir)
  if raw is None:
    raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json); train into it with 'sppnet train'.")
  config = ml_collections.ConfigDict(raw)
  d = config.data
  manager = checkpoint_manager(workdir, config.train.keep_checkpoints)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint yet.")
  names = sources.load_class_names(workdir)
  num_classes = len(names) if names else sources.num_classes(
      d.name, train_split=d.train_split, holdout_fraction=d.get("holdout_fraction"))
  model = state_lib.build_model(config, num_classes)
  # On this process's first device, whatever devices and processes the run trained on.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  layouts: dict[bool, Any] = {}

  def structure(step: int):
    current = step_rate_in_optimizer(manager, step) is not False
    if current not in layouts:
      tx = state_lib.make_optimizer(config) if current else state_lib.legacy_optimizer(config)
      layouts[current] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                      jax.eval_shape(lambda: state_lib.init_state(model, tx, d.crop_size, 0)))
    return layouts[current]

  try:
    restored = restore_verified(manager, structure)
  except CheckpointMismatchError:
    # Checked only when the shapes disagree: the saved shapes of a multi-process run are the
    # shards each process wrote, not the arrays' global shapes.
    saved = checkpoint_classes(manager)
    if saved is not None and saved != num_classes:
      raise ValueError(classes_mismatch(workdir, saved, num_classes, names, d.name)) from None
    raise
  return TrainedRun(config, model, restored.state.params, load_mean_file(config, workdir), restored.step)
