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
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from sppnet_jax import state as state_lib
from sppnet_jax.checkpoints import checkpoint_manager, restore_checkpoint
from sppnet_jax.data import augment, cache, sources

__all__ = ["LOGGING_FIELDS", "EXTENDABLE_FIELDS", "ConfigChangedError", "has_checkpoint", "config_changes",
           "check_config", "write_config", "config_source", "load_mean_file", "load_run"]

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


def check_config(config: ml_collections.ConfigDict | dict, workdir: str | os.PathLike, *,
                 has_outputs: Callable[[pathlib.Path], bool] = has_checkpoint, ignore: Iterable[str] = (),
                 start_over: bool = False, hint: str | Callable[[list[str]], str] = "") -> list[str]:
  """The fields in which ``config`` differs from ``workdir/config.json`` (less ``ignore``); writes nothing.

  Raises :class:`ConfigChangedError` when there are any and ``has_outputs(workdir)``, unless
  ``start_over``. ``hint`` (or ``hint(changed)``) is appended to the error: how to go on.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  if not path.exists():
    return []
  changed = config_changes(json.loads(path.read_text()), _as_json(config), ignore)
  if changed and not start_over and has_outputs(workdir):
    hint = hint(changed) if callable(hint) else hint
    raise ConfigChangedError(
        f"{workdir} holds a run whose {', '.join(changed)} differ from this config ({path}). Resume it with the "
        f"same config, or give a new workdir.{(' ' + hint) if hint else ''}")
  return changed


def write_config(config: ml_collections.ConfigDict | dict, workdir: str | os.PathLike, *,
                 has_outputs: Callable[[pathlib.Path], bool] = has_checkpoint, ignore: Iterable[str] = (),
                 start_over: bool = False, hint: str | Callable[[list[str]], str] = "") -> list[str]:
  """:func:`check_config`, then writes ``workdir/config.json`` (making the directory).

  Returns the changed fields (empty for a new or unchanged workdir); with ``start_over`` the
  caller discards the outputs those fields made stale.
  """
  changed = check_config(config, workdir, has_outputs=has_outputs, ignore=ignore, start_over=start_over, hint=hint)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(json.dumps(_as_json(config), indent=2, sort_keys=True))
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
  """Whether the newest step holds the learning rate in its optimizer state (runs saved before
  the rate moved into optax hold only weight decay and the update direction)."""
  metadata = pathlib.Path(manager.directory) / str(manager.latest_step()) / "state" / "_METADATA"
  return not metadata.is_file() or "hyperparams" in metadata.read_text(errors="replace")


def load_run(workdir: str | os.PathLike):
  """(config, model, params, mean) of the newest intact checkpoint in a training workdir."""
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json); train into it with 'sppnet train'.")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  d = config.data
  names = sources.load_class_names(workdir)
  num_classes = len(names) if names else sources.num_classes(
      d.name, train_split=d.train_split, holdout_fraction=d.get("holdout_fraction"))
  model = state_lib.build_model(config, num_classes)
  manager = checkpoint_manager(workdir, config.train.keep_checkpoints)
  if manager.latest_step() is None:
    raise FileNotFoundError(f"{workdir / 'checkpoints'} holds no checkpoint yet.")
  # On this process's first device, whatever devices and processes the run trained on.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = lambda tx: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                                     jax.eval_shape(lambda: state_lib.init_state(model, tx, d.crop_size, 0)))
  tx = state_lib.make_optimizer(config) if rate_in_optimizer(manager) else state_lib.legacy_optimizer(config)
  restored, _ = restore_checkpoint(manager, abstract(tx))
  return config, model, restored.params, load_mean_file(config, workdir)
