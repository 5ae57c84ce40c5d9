"""The detection config: one factory with the paper's settings (experiment files adjust it).

``detection_config`` builds it; ``validate_detection_config`` refuses, in one line naming every bad
field, a config with values that cannot be meant (the style of the classification validator,
:mod:`sppnet_jax.config_checks`), before anything is computed or written; ``with_resolved_trunk``
makes ``trunk.workdir`` absolute so a detection workdir's ``config.json`` names its trunk wherever
it is read from.
"""

from __future__ import annotations

import copy
import math
import pathlib
from typing import Any, Sequence

import ml_collections
import numpy as np

from sppnet_jax import config_checks as checks


def detection_config(dataset: str = "synthetic", trunk_workdir: str = "", scales: Sequence[int] = (688,),
                     num_train: int | None = None, num_test: int | None = None) -> ml_collections.ConfigDict:
  """The detection config (paper settings unless noted; the experiment files adjust it).

  Args:
    dataset: 'synthetic' (built-in scenes) or 'voc2007' (TFDS).
    trunk_workdir: a classification workdir whose trunk and fc6/fc7 are used; '' initialises a
      fresh trunk from ``config.trunk`` (random features; said so in the output).
    scales: image short sides; (688,) is the paper's 1-scale, (480, 576, 688, 864, 1200) 5-scale.
    num_train, num_test: cap the number of images (None: the whole split).
  """
  c = ml_collections.ConfigDict()
  c.dataset = dataset
  c.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.train_split = "train" if dataset == "synthetic" else "train+validation"
  c.test_split = "test"
  c.num_train = ml_collections.FieldReference(num_train, field_type=int)
  c.num_test = ml_collections.FieldReference(num_test, field_type=int)
  c.seed = 0

  c.trunk = ml_collections.ConfigDict()
  c.trunk.workdir = trunk_workdir
  c.trunk.name = "zf5"  # used only without a workdir
  c.trunk.width = 1.0
  c.trunk.depth = ml_collections.FieldReference(None, field_type=int)
  c.trunk.fc_width = 4096
  c.trunk.seed = 0

  c.features = ml_collections.ConfigDict()
  c.features.scales = tuple(scales)
  c.features.target_side = 224.0
  c.features.rule = "area"
  c.features.size_multiple = 64
  c.features.window_batch = 256
  c.features.levels = (6, 3, 2, 1)

  c.proposals = ml_collections.ConfigDict()
  c.proposals.file = ""  # precomputed proposals for the train split ('' = selective search)
  c.proposals.test_file = ""  # and for the test split
  c.proposals.max_side = ml_collections.FieldReference(None, field_type=int)  # search on a downscaled copy
  c.proposals.max_per_image = 2000
  c.proposals.min_box_size = 20
  c.proposals.ks = (50, 100)
  c.proposals.strategies = ("CTSF", "TSF")

  c.finetune = ml_collections.ConfigDict()
  c.finetune.steps = 300000
  c.finetune.lr = 1e-4
  c.finetune.lr_boundaries = (250000,)  # paper: 1e-4 for 250k mini-batches, then 1e-5 for 50k
  c.finetune.lr_decay = 0.1
  c.finetune.momentum = 0.9
  c.finetune.weight_decay = 5e-4
  c.finetune.batch_size = 128
  c.finetune.fg_fraction = 0.25
  c.finetune.fg_iou = 0.5
  c.finetune.bg_iou_low = 0.1
  c.finetune.bg_iou_high = 0.5
  c.finetune.dropout = 0.5
  c.finetune.fc8_std = 0.01
  c.finetune.log_every = 1000
  c.finetune.pool_images = 64  # images whose usable windows are in memory at once (streamed from the cache)
  c.finetune.pool_steps = 32  # mini-batches drawn from one pool before the next pool is read
  c.finetune.worker_count = 0  # grain worker processes reading pools ahead (0: two threads of the training process)
  c.finetune.prefetch = 2  # pools buffered ahead of the step
  c.finetune.checkpoint_every = 1000  # steps between checkpoints (also saved at the last step and on SIGTERM / Ctrl-C)

  c.svm = ml_collections.ConfigDict()
  c.svm.C = 0.001
  c.svm.positive_weight = 2.0
  c.svm.bias_multiplier = 10.0
  c.svm.negative_iou = 0.3
  c.svm.retrain_every = 2000
  c.svm.max_negatives = 10000  # hard negatives a class's cache holds at most (the hardest kept); bounds memory
  c.svm.read_images = 4  # cached images read (and their fc7 computed) together while mining
  c.svm.target_norm = 20.0

  c.bbox = ml_collections.ConfigDict()
  c.bbox.enabled = True
  c.bbox.lam = 4000.0
  c.bbox.min_overlap = 0.5
  c.bbox.max_per_class = 2000  # training windows kept per class (the first in image order); bounds memory

  c.test = ml_collections.ConfigDict()
  c.test.nms = 0.3
  c.test.max_per_class = 100
  c.test.score_threshold = -1e9  # keep everything (VOC AP uses the whole ranking)
  return c


def with_resolved_trunk(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``trunk.workdir`` made absolute (a copy when it changes), so the detection workdir's
  config.json names its trunk wherever it is used from; a trunk workdir that is not there is an error."""
  if not config.trunk.workdir or not isinstance(config.trunk.workdir, str):
    return config  # no trunk workdir, or not a path (validate_detection_config names it)
  resolved = pathlib.Path(config.trunk.workdir).expanduser().resolve()
  if not (resolved / "config.json").is_file():
    raise FileNotFoundError(f"trunk workdir not found: {config.trunk.workdir} (config.trunk.workdir, resolved to "
                            f"{resolved}, has no config.json); train it first with 'sppnet train'.")
  if str(resolved) == config.trunk.workdir:
    return config
  config = copy.deepcopy(config)
  config.trunk.workdir = str(resolved)
  return config


# ------------------------------------------------------------------------------------- validation

DATASETS = ("synthetic", "voc2007", "voc/2007")
FEATURE_RULES = ("area", "side")
SIMILARITIES = "CTSF"  # selective search's colour, texture, size and fill

_PATH: checks.Check = (lambda v: isinstance(v, str)), "a path (a string; '' for none)"
_OPTIONAL_PATH: checks.Check = (lambda v: v is None or isinstance(v, str)), "None or a path"
_POSITIVE = checks.number(0.0, lo_open=True)
_NON_NEGATIVE = checks.number(0.0)
_OPEN_FRACTION = checks.number(0.0, 1.0, lo_open=True)
_IOU = checks.number(0.0, 1.0, lo_open=True, hi_open=False)
_UNIT = checks.number(0.0, 1.0, hi_open=False)


def _not_nan(value: Any) -> bool:
  """A real number that is not NaN (infinities allowed)."""
  return (checks.is_int(value) or isinstance(value, (float, np.floating))) and not math.isnan(float(value))


def _similarity_set(value: Any) -> bool:
  """One selective-search strategy: a non-empty combination of the letters of ``SIMILARITIES``."""
  letters = value.upper().replace("+", "") if isinstance(value, str) else ""
  return bool(letters) and set(letters) <= set(SIMILARITIES)


def _positive_numbers(value: Any) -> bool:
  return checks.is_seq(value) and len(value) > 0 and all(checks.is_number(x) and float(x) > 0 for x in value)


DETECTION_FIELDS: dict[str, checks.Check] = {
    "dataset": checks.choice(DATASETS),
    "data_dir": _OPTIONAL_PATH,
    "train_split": checks.STRING,
    "test_split": checks.STRING,
    "num_train": checks.optional(checks.int_at_least(1)),
    "num_test": checks.optional(checks.int_at_least(1)),
    "seed": checks.int_at_least(0),
    "trunk.workdir": (_PATH[0], "a classification workdir, or '' for a random trunk"),
    "trunk.name": checks.choice(checks.MODEL_NAMES),
    "trunk.width": _POSITIVE,
    "trunk.depth": checks.optional(checks.int_at_least(1)),
    "trunk.fc_width": checks.int_at_least(1),
    "trunk.seed": checks.int_at_least(0),
    "features.scales": checks.ints(1, nonempty=True),
    "features.target_side": _POSITIVE,
    "features.rule": checks.choice(FEATURE_RULES),
    "features.size_multiple": checks.int_at_least(1),
    "features.window_batch": checks.int_at_least(1),
    "features.levels": checks.ints(1, nonempty=True),
    "proposals.file": _PATH,
    "proposals.test_file": _PATH,
    "proposals.max_side": checks.optional(checks.int_at_least(1)),
    "proposals.max_per_image": checks.int_at_least(1),
    "proposals.min_box_size": checks.int_at_least(0),
    "proposals.ks": (_positive_numbers, "a non-empty sequence of numbers > 0"),
    "proposals.strategies": ((lambda v: checks.is_seq(v) and len(v) > 0 and all(_similarity_set(s) for s in v)),
                             "a non-empty sequence of similarity sets, each made of the letters C, T, S, F "
                             "(e.g. ('CTSF', 'TSF'))"),
    "finetune.steps": checks.int_at_least(0),
    "finetune.lr": _POSITIVE,
    "finetune.lr_boundaries": checks.ints(0, nonempty=False),
    "finetune.lr_decay": _POSITIVE,
    "finetune.momentum": checks.number(0.0, 1.0),
    "finetune.weight_decay": _NON_NEGATIVE,
    "finetune.batch_size": checks.int_at_least(2),
    "finetune.fg_fraction": _OPEN_FRACTION,
    "finetune.fg_iou": _IOU,
    "finetune.bg_iou_low": _UNIT,
    "finetune.bg_iou_high": _UNIT,
    "finetune.dropout": checks.number(0.0, 1.0),
    "finetune.fc8_std": _NON_NEGATIVE,
    "finetune.log_every": checks.int_at_least(1),
    "finetune.pool_images": checks.int_at_least(1),
    "finetune.pool_steps": checks.int_at_least(1),
    "finetune.worker_count": checks.int_at_least(0),
    "finetune.prefetch": checks.int_at_least(1),
    "finetune.checkpoint_every": checks.int_at_least(1),
    "svm.C": _POSITIVE,
    "svm.positive_weight": _POSITIVE,
    "svm.bias_multiplier": _POSITIVE,
    "svm.negative_iou": _IOU,
    "svm.retrain_every": checks.int_at_least(1),
    "svm.max_negatives": checks.optional(checks.int_at_least(1)),
    "svm.read_images": checks.int_at_least(1),
    "svm.target_norm": _POSITIVE,
    "bbox.enabled": checks.BOOL,
    "bbox.lam": _POSITIVE,
    "bbox.min_overlap": _IOU,
    "bbox.max_per_class": checks.optional(checks.int_at_least(1)),
    "test.nms": _UNIT,
    "test.max_per_class": checks.int_at_least(1),
    "test.score_threshold": (_not_nan, "a number (not NaN; -1e9 keeps every window)"),
}


def detection_config_problems(config: Any) -> list[str]:
  """Every problem :func:`validate_detection_config` would report, one sentence each ([] when none)."""
  problems = checks.field_problems(config, DETECTION_FIELDS)
  get = lambda field: checks.lookup(config, field)
  if get("dataset") == "synthetic":
    for field in ("num_train", "num_test"):
      if get(field) is None:
        problems.append(f"{field}=None is not allowed with dataset='synthetic': an integer >= 1 (the scenes are "
                        "generated, so their number must be given)")
  low, high = get("finetune.bg_iou_low"), get("finetune.bg_iou_high")
  if checks.is_number(low) and checks.is_number(high) and not float(low) < float(high):
    problems.append(f"finetune.bg_iou_low={low!r} is not allowed with finetune.bg_iou_high={high!r}: a number "
                    "below it (background windows have their best IoU in [bg_iou_low, bg_iou_high))")
  batch, fg = get("finetune.batch_size"), get("finetune.fg_fraction")
  if checks.is_int(batch) and batch >= 2 and checks.is_number(fg) and 0 < fg < 1 and \
      max(1, int(round(batch * float(fg)))) >= batch:
    problems.append(f"finetune.fg_fraction={fg!r} is not allowed with finetune.batch_size={batch}: a fraction that "
                    "leaves at least one background window in each mini-batch")
  return problems


def validate_detection_config(config: Any) -> None:
  """Raises ``ValueError`` naming every field of a detection ``config`` whose value cannot be meant.

  Pure: looks at the fields only (a ``ConfigDict`` or nested dicts), reads no file and loads no
  data; fields a config does not have are not checked.
  """
  problems = detection_config_problems(config)
  if problems:
    raise ValueError(("invalid detection config: " if len(problems) == 1 else
                      f"invalid detection config ({len(problems)} problems): ") + "; ".join(problems) + ".")
