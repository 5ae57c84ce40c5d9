"""Refusing classification configs with values that cannot be meant, before anything runs.

:func:`validate_config` looks at a config's fields only (no file system, no dataset)
and raises one ``ValueError`` naming every bad field, its value and what is allowed,
e.g. ``train.learning_rate=0 is not allowed: a finite number > 0``. Fields a config
does not have are not checked (older configs lack some); the names of the allowed
choices are kept here and a test keeps them equal to the code that uses them.

:func:`validate_input_sizes` adds what depends on the network built from the config: every
input size the config asks for must be at least the smallest input that network takes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["MODEL_NAMES", "TRAIN_MODES", "OPTIMIZERS", "LR_SCHEDULES", "NORMALIZE", "POSITIONS", "INITIALIZERS",
           "DTYPES", "VIEW_NAMES", "VARIANTS", "ON_BAD_IMAGE", "validate_config", "config_problems",
           "input_size_problems", "validate_input_sizes", "field_problems", "Check", "MISSING", "BOOL", "STRING",
           "lookup", "show", "is_int", "is_number", "is_seq", "int_at_least", "optional", "choice", "number",
           "value_range", "ints"]

MODEL_NAMES = ("zf5", "convnet5", "overfeat5", "overfeat7")
TRAIN_MODES = ("single", "multi", "random", "full")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("steps", "plateau")
NORMALIZE = ("mean_image", "per_image")
POSITIONS = ("five", "random")
INITIALIZERS = ("paper", "he")
DTYPES = ("float32", "bfloat16", "float16")
VIEW_NAMES = ("crop", "full", "ten", "multiview")
VARIANTS = ("nospp", "single", "multi", "random", "full")
ON_BAD_IMAGE = ("error", "skip")
TFDS_NAMES = ("imagenet2012", "imagenette", "caltech101")

MISSING = object()


def is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_number(v: Any) -> bool:
  return (is_int(v) or isinstance(v, (float, np.floating))) and math.isfinite(float(v))


def is_seq(v: Any) -> bool:
  return isinstance(v, (list, tuple))


# Predicates: value -> True when allowed. Each comes with the words that say what is allowed.
Check = tuple[Callable[[Any], bool], str]


def int_at_least(lo: int) -> Check:
  return (lambda v: is_int(v) and v >= lo), f"an integer >= {lo}"


def optional(check: Check) -> Check:
  pred, words = check
  return (lambda v: v is None or pred(v)), f"None or {words}"


def choice(options: Sequence[str]) -> Check:
  return (lambda v: isinstance(v, str) and v in options), f"one of {', '.join(repr(o) for o in options)}"


def number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = True) -> Check:
  def ok(v):
    if not is_number(v):
      return False
    v = float(v)
    above = v > lo if lo_open else v >= lo
    below = True if hi is None else (v < hi if hi_open else v <= hi)
    return above and below
  if hi is None:
    words = f"a finite number {'>' if lo_open else '>='} {lo:g}"
  else:
    words = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  return ok, words


def value_range(integer: bool, positive: bool = True) -> Check:
  """A (low, high) pair with 0 < low <= high (integers or numbers)."""
  item = is_int if integer else is_number
  return ((lambda v: is_seq(v) and len(v) == 2 and all(item(x) for x in v) and
           (not positive or float(v[0]) > 0) and float(v[0]) <= float(v[1])),
          f"a pair (low, high) of {'integers' if integer else 'numbers'} with 0 < low <= high")


def ints(lo: int, nonempty: bool) -> Check:
  return ((lambda v: is_seq(v) and (len(v) > 0 or not nonempty) and all(is_int(x) and x >= lo for x in v)),
          f"a {'non-empty ' if nonempty else ''}sequence of integers >= {lo}")


def _subset(options: Sequence[str], nonempty: bool = True) -> Check:
  return ((lambda v: is_seq(v) and (len(v) > 0 or not nonempty) and all(isinstance(x, str) and x in options
                                                                          for x in v)),
          f"a {'non-empty ' if nonempty else ''}sequence of {', '.join(repr(o) for o in options)}")


def _dataset_name(v: Any) -> bool:
  if not isinstance(v, str):
    return False
  if v.startswith("folder:"):
    return bool(v[len("folder:"):].strip())
  return v == "synthetic" or v in TFDS_NAMES


BOOL: Check = (lambda v: isinstance(v, (bool, np.bool_))), "True or False"
STRING: Check = (lambda v: isinstance(v, str) and bool(v)), "a non-empty string"

FIELDS: dict[str, Check] = {
    "model.name": choice(MODEL_NAMES),
    "model.spp": BOOL,
    "model.levels": ints(1, nonempty=True),
    "model.width": number(0.0, lo_open=True),
    "model.depth": optional(int_at_least(1)),
    "model.channels": optional(ints(1, nonempty=True)),
    "model.fc_width": int_at_least(1),
    "model.dropout": number(0.0, 1.0),
    "model.initializer": choice(INITIALIZERS),
    "model.dtype": choice(DTYPES),
    "data.name": (_dataset_name, f"'synthetic', one of {', '.join(repr(n) for n in TFDS_NAMES)}, or "
                                 "'folder:/path/to/root'"),
    "data.train_split": STRING,
    "data.eval_split": STRING,
    "data.num_train": optional(int_at_least(1)),
    "data.num_eval": optional(int_at_least(1)),
    "data.seed": int_at_least(0),
    "data.crop_size": int_at_least(1),
    "data.short_side": int_at_least(1),
    "data.second_size": int_at_least(1),
    "data.positions": choice(POSITIONS),
    "data.pca_std": number(0.0),
    "data.normalize": choice(NORMALIZE),
    "data.mean_samples": int_at_least(1),
    "data.train_object_size": optional(value_range(integer=False)),
    "data.eval_object_size": optional(value_range(integer=False)),
    "data.synthetic_short_side": optional(value_range(integer=True)),
    "data.cache": BOOL,
    "data.holdout_fraction": optional(number(0.0, 1.0, lo_open=True)),
    "data.on_bad_image": choice(ON_BAD_IMAGE),
    "data.worker_count": optional(int_at_least(0)),
    "data.prefetch": int_at_least(1),
    "data.device_augment": BOOL,
    "train.mode": choice(TRAIN_MODES),
    "train.random_range": value_range(integer=True),
    "train.full_short_range": value_range(integer=True),
    "train.full_bucket": int_at_least(1),
    "train.batch_size": int_at_least(1),
    "train.num_epochs": int_at_least(1),
    "train.optimizer": choice(OPTIMIZERS),
    "train.learning_rate": number(0.0, lo_open=True),
    "train.lr_schedule": choice(LR_SCHEDULES),
    "train.lr_drop_epochs": ints(0, nonempty=False),
    "train.plateau_patience": int_at_least(1),
    "train.plateau_min_delta": number(0.0),
    "train.max_lr_drops": int_at_least(0),
    "train.momentum": number(0.0, 1.0),
    "train.weight_decay": number(0.0),
    "train.seed": int_at_least(0),
    "train.log_every_steps": int_at_least(1),
    "train.eval_every_epochs": int_at_least(1),
    "train.checkpoint_every_steps": int_at_least(1),
    "train.keep_checkpoints": int_at_least(1),
    "train.progress_bar": BOOL,
    "eval.views": _subset(VIEW_NAMES),
    "eval.batch_size": int_at_least(1),
    "eval.bucket": int_at_least(1),
    "eval.multiview_scales": ints(1, nonempty=True),
    "eval.max_aspect": number(1.0),
    "eval.progress_bar": BOOL,
    "eval.sweep_sizes": ints(1, nonempty=False),
    "eval.sweep_views": _subset(VIEW_NAMES),
    "eval.sweep_examples": int_at_least(1),
    "eval.curve_examples": optional(int_at_least(1)),
    "eval.train_subset_examples": optional(int_at_least(0)),
    "variant": choice(VARIANTS),
}


def lookup(config: Any, dotted: str) -> Any:
  node = config
  for key in dotted.split("."):
    try:
      node = node[key]
    except (KeyError, TypeError, AttributeError):
      return MISSING
  return node


def show(value: Any) -> str:
  return repr(tuple(value)) if isinstance(value, list) else repr(value)


def field_problems(config: Any, fields: dict[str, Check]) -> list[str]:
  """One sentence per field of ``fields`` whose value in ``config`` its check refuses (absent
  fields pass); the one field loop of the classification, detection and transfer validators."""
  problems = []
  for field, (ok, allowed) in fields.items():
    value = lookup(config, field)
    if value is MISSING:
      continue
    try:
      good = bool(ok(value))
    except (TypeError, ValueError, OverflowError):
      good = False
    if not good:
      problems.append(f"{field}={show(value)} is not allowed: {allowed}")
  return problems


def config_problems(config: Any) -> list[str]:
  """Every problem :func:`validate_config` would report, one sentence each ([] when none)."""
  problems = field_problems(config, FIELDS)
  get = lambda f: lookup(config, f)
  crop, short = get("data.crop_size"), get("data.short_side")
  if is_int(crop) and is_int(short) and short < crop:
    problems.append(f"data.short_side={short} is not allowed: at least data.crop_size={crop} (crops are cut from "
                    "the image resized to that short side)")
  if get("train.lr_schedule") == "plateau" and is_int(get("train.eval_every_epochs")) and \
      get("train.eval_every_epochs") != 1:
    problems.append(f"train.eval_every_epochs={get('train.eval_every_epochs')} is not allowed with "
                    "train.lr_schedule='plateau': 1 (the plateau schedule watches the validation error every epoch)")
  if get("train.mode") == "full" and get("model.spp") is False:
    problems.append("train.mode='full' is not allowed with model.spp=False: whole images of varying sizes need "
                    "an SPP network (model.spp=True), or use train.mode='single'")
  return problems


def validate_config(config: Any) -> None:
  """Raises ``ValueError`` naming every field of ``config`` whose value cannot be meant.

  Pure: looks at the fields only (a ``ConfigDict`` or nested dicts), reads no file
  and loads no data.
  """
  problems = config_problems(config)
  if problems:
    raise ValueError(("invalid config: " if len(problems) == 1 else f"invalid config ({len(problems)} problems): ")
                     + "; ".join(problems) + ".")


def _sizes_in_use(config: Any) -> list[tuple[str, Any, list[int]]]:
  """(field, value, input sides it makes) of every field of ``config`` that sets an input size."""
  get = lambda f: lookup(config, f)
  mode, views = get("train.mode"), get("eval.views")
  out = [("data.crop_size", get("data.crop_size"), [get("data.crop_size")])]
  if mode == "multi":
    out.append(("data.second_size", get("data.second_size"), [get("data.second_size")]))
  for name, field in (("random", "train.random_range"), ("full", "train.full_short_range")):
    value = get(field)
    if mode == name and is_seq(value) and value:
      out.append((field, value, [value[0]]))
  # The no-SPP network warps every evaluation input to data.crop_size, so its evaluation sizes
  # may be anything; an SPP network takes them as they are.
  spp = get("model.spp") is not False
  for field, used in (("eval.sweep_sizes", spp), ("eval.multiview_scales", spp and is_seq(views) and "multiview" in views)):
    value = get(field)
    if used and is_seq(value):
      out.append((field, value, list(value)))
  return [(f, v, [x for x in sides if is_int(x)]) for f, v, sides in out if v is not MISSING]


def input_size_problems(config: Any, smallest: int) -> list[str]:
  """The input-size fields of ``config`` (crop size, the other training sizes of its mode, the
  evaluation sizes) asking for inputs below ``smallest`` px, the smallest the network takes;
  one sentence each, naming the field and its allowed range ([] when none)."""
  short = lookup(config, "data.short_side")
  problems = []
  for field, value, sides in _sizes_in_use(config):
    if not sides or min(sides) >= smallest:
      continue
    if field == "data.crop_size" and is_int(short) and short >= smallest:
      allowed = f"an integer in [{smallest}, {short}] (at most data.short_side={short})"
    elif is_seq(value) and len(sides) > 1 and field.startswith("eval."):
      allowed = f"sizes >= {smallest}"
    elif is_seq(value):
      allowed = f"a low end >= {smallest}"
    else:
      allowed = f"an integer >= {smallest}"
    problems.append(f"{field}={show(value)} is too small for this network: {allowed}; a smaller input leaves its "
                    "last conv map empty")
  return problems


def validate_input_sizes(config: Any, smallest: int) -> None:
  """Raises ``ValueError`` naming every input-size field of ``config`` below ``smallest`` px
  (:func:`input_size_problems`), in the words of :func:`validate_config`."""
  problems = input_size_problems(config, smallest)
  if problems:
    raise ValueError(("invalid config: " if len(problems) == 1 else f"invalid config ({len(problems)} problems): ")
                     + "; ".join(problems) + ".")
