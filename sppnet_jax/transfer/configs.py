"""Transfer config factories: the paper's Table 6/7 columns and the built-in counterparts."""

from __future__ import annotations

import ml_collections

# Paper Table 6 (VOC 2007 mAP, %) and Table 7 (Caltech101 accuracy, %) by column and layer.
VOC07_PAPER = {
    "a": {"conv4": 59.96, "conv5": 66.34, "pool5": 69.14, "fc6": 74.86, "fc7": 75.90},
    "b": {"conv4": 57.28, "conv5": 65.43, "pool5": 68.76, "fc6": 75.55, "fc7": 76.45},
    "c": {"pool5": 70.82, "fc6": 77.32, "fc7": 78.39},
    "d": {"pool5": 71.67, "fc6": 78.78, "fc7": 80.10},
    "e": {"pool5": 76.09, "fc6": 81.58, "fc7": 82.44},
}
CALTECH_PAPER = {
    "a": {"conv4": 80.12, "conv5": 84.40, "pool5": 87.98, "fc6": 87.86, "fc7": 85.30},
    "b": {"conv4": 81.03, "conv5": 83.76, "pool5": 87.60, "spp": 89.47, "fc6": 88.54, "fc7": 86.10},
    "c": {"pool5": 89.46, "spp": 91.44, "fc6": 89.50, "fc7": 87.08},
    "d": {"pool5": 91.46, "spp": 93.42, "fc6": 91.83, "fc7": 90.00},
}
CROP_LAYERS_NOSPP = ("conv4", "conv5", "pool5", "fc6", "fc7")
CROP_LAYERS_SPP = ("conv4", "conv5", "pool5", "spp", "fc6", "fc7")
FULL_LAYERS = ("pool5", "spp", "fc6", "fc7")


def column(name: str, trunk: str, view: str, size: int, layers, paper: dict | None = None) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"name": name, "trunk": trunk, "view": view, "size": size, "layers": tuple(layers),
                                    "paper": dict(paper or {})})


def base(task: dict, trunks: dict, columns: list, title: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.title = title
  c.task = ml_collections.ConfigDict(task)
  c.trunks = ml_collections.ConfigDict(trunks)
  c.trunk_dir = ""  # where synthetic:<variant> / .py trunks are trained; empty: <workdir>/trunks
  c.columns = columns
  c.comparisons = []
  c.svm = ml_collections.ConfigDict({"C": 1.0})
  c.splits = ml_collections.ConfigDict({"num_splits": 10, "train_per_class": 30, "test_per_class": 50})
  # "128": the paper's constant mean for VOC and Caltech; "trunk": the trunk's own normalisation.
  c.mean = "128"
  c.crop_short_side = 0  # 0: the crop's own size (the whole short side is cropped)
  c.batch_size = 32
  c.bucket = 32
  c.max_aspect = 2.0
  c.seed = 0
  c.progress = True
  return c


# ImageNet trunks, trained with the experiments/imagenet configs into these workdirs.
IMAGENET_TRUNKS = {"zf5_nospp": "runs/table2_zf5_nospp", "zf5_multi": "runs/table2_zf5_multi",
                   "overfeat7_multi": "runs/table2_overfeat7_multi"}


def voc07(letter: str) -> ml_collections.ConfigDict:
  """One column of Table 6: (a) no-SPP ZF-5 crop 224, (b) SPP ZF-5 crop 224, (c) full 224, (d) full 392,
  (e) SPP Overfeat-7 full 364 (the multi-size networks, as the paper's)."""
  spec = {"a": ("zf5_nospp", "crop", 224, CROP_LAYERS_NOSPP), "b": ("zf5_multi", "crop", 224, CROP_LAYERS_SPP),
          "c": ("zf5_multi", "full", 224, FULL_LAYERS), "d": ("zf5_multi", "full", 392, FULL_LAYERS),
          "e": ("overfeat7_multi", "full", 364, FULL_LAYERS)}[letter]
  trunk, view, size, layers = spec
  return base({"name": "voc2007", "data_dir": None}, {trunk: IMAGENET_TRUNKS[trunk]},
              [column(letter, trunk, view, size, layers, VOC07_PAPER[letter])], f"VOC 2007 classification, Table 6 ({letter})")


def caltech101(letter: str) -> ml_collections.ConfigDict:
  """One column of Table 7: (a) no-SPP ZF-5 crop 224, (b) SPP ZF-5 crop 224, (c) full 224, (d) SPP
  Overfeat-7 full 224."""
  spec = {"a": ("zf5_nospp", "crop", 224, CROP_LAYERS_NOSPP), "b": ("zf5_multi", "crop", 224, CROP_LAYERS_SPP),
          "c": ("zf5_multi", "full", 224, FULL_LAYERS), "d": ("overfeat7_multi", "full", 224, FULL_LAYERS)}[letter]
  trunk, view, size, layers = spec
  return base({"name": "caltech101", "data_dir": None}, {trunk: IMAGENET_TRUNKS[trunk]},
              [column(letter, trunk, view, size, layers, CALTECH_PAPER[letter])], f"Caltech101, Table 7 ({letter})")


# Built-in counterparts: the slim 96-px ZF-5 of the main job, no-SPP and SPP single-size, trained once
# into a shared directory. Sizes follow the paper's by 96/224: full 96 for 224, 168 for 392.
SYNTHETIC_TRUNKS = {"nospp": "synthetic:nospp", "spp": "synthetic:single"}
SYNTHETIC_TRUNK_DIR = "runs/transfer/trunks"


def synthetic_scenes() -> ml_collections.ConfigDict:
  columns = [column("a", "nospp", "crop", 96, CROP_LAYERS_NOSPP), column("b", "spp", "crop", 96, CROP_LAYERS_SPP),
             column("c", "spp", "full", 96, FULL_LAYERS), column("d", "spp", "full", 168, FULL_LAYERS)]
  c = base({"name": "synthetic_scenes", "num_train": 600, "num_test": 600, "seed": 0, "max_objects": 3,
            "object_size": (0.2, 0.6)}, SYNTHETIC_TRUNKS, columns, "built-in scenes, multi-label (the Table 6 counterpart)")
  c.comparisons = [("b", "a"), ("c", "b"), ("d", "c")]
  c.trunk_dir, c.mean, c.bucket, c.max_aspect = SYNTHETIC_TRUNK_DIR, "trunk", 16, 16 / 9
  return c


def synthetic_shapes() -> ml_collections.ConfigDict:
  columns = [column("a", "nospp", "crop", 96, CROP_LAYERS_NOSPP), column("b", "spp", "crop", 96, CROP_LAYERS_SPP),
             column("c", "spp", "full", 96, FULL_LAYERS)]
  c = base({"name": "synthetic_shapes", "num_examples": 960, "seed": 0, "object_size": (0.22, 0.9)},
           SYNTHETIC_TRUNKS, columns, "built-in shapes, a linear classifier from 30 images per class "
           "(the Table 7 counterpart)")
  c.comparisons = [("b", "a"), ("c", "b")]
  c.trunk_dir, c.mean, c.bucket, c.max_aspect = SYNTHETIC_TRUNK_DIR, "trunk", 16, 16 / 9
  return c
