"""The detection config: one factory with the paper's settings (experiment files adjust it).

``detection_config`` builds it; ``with_resolved_trunk`` makes ``trunk.workdir`` absolute so a
detection workdir's ``config.json`` names its trunk wherever it is read from.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Sequence

import ml_collections


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
  if not config.trunk.workdir:
    return config
  resolved = pathlib.Path(config.trunk.workdir).expanduser().resolve()
  if not (resolved / "config.json").is_file():
    raise FileNotFoundError(f"trunk workdir not found: {config.trunk.workdir} (config.trunk.workdir, resolved to "
                            f"{resolved}, has no config.json); train it first with 'sppnet train'.")
  if str(resolved) == config.trunk.workdir:
    return config
  config = copy.deepcopy(config)
  config.trunk.workdir = str(resolved)
  return config
