"""Transfer datasets: images plus targets, read once and kept apart from the pixels.

A :class:`Task` is either

* ``multilabel`` (VOC 2007 classification): a ``train`` and a ``test`` source and (N, K) targets
  in {+1, 0, -1} (present, only difficult instances, absent), or
* ``split`` (Caltech101): one ``pool`` source with single labels, split at random per seed.

Sources: TFDS ``voc/2007`` and ``caltech101`` through ``tfds.data_source``, an image folder
(``folder:/root`` with ``root/<class>/<images>``, split like Caltech101), and two built-in
tasks that need no download: ``synthetic_scenes`` (multi-label classification of scenes like
the built-in detection data: several shapes per VOC-sized image) and ``synthetic_shapes``
(single-label shapes, a new linear classifier from 30 images per class).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from sppnet_jax.data import sources, synthetic

VOC_CLASSES = 20
CALTECH_CLASSES = 102
KINDS = ("multilabel", "split")


@dataclasses.dataclass
class Task:
  """Images and targets of one transfer dataset (see the module docstring)."""
  name: str
  kind: str
  class_names: tuple[str, ...]
  images: dict[str, Sequence[dict[str, Any]]]
  targets: dict[str, np.ndarray]

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"task kind must be one of {KINDS}; got {self.kind!r}.")
    for split, source in self.images.items():
      if len(source) != len(self.targets[split]):
        raise ValueError(f"task {self.name!r} split {split!r}: {len(source)} images but "
                         f"{len(self.targets[split])} targets.")


def multilabel_targets(labels: Sequence[int], difficult: Sequence[bool], num_classes: int) -> np.ndarray:
  """(K,) +1 for a class with a non-difficult object, 0 for one with only difficult objects, -1 otherwise."""
  labels = np.asarray(labels, np.int64).reshape(-1)
  difficult = np.asarray(difficult, bool).reshape(-1)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"object labels must lie in [0, {num_classes}); got {labels.tolist()}.")
  t = np.full(num_classes, -1, np.int8)
  t[labels[difficult]] = 0
  t[labels[~difficult]] = 1
  return t


class _ImageRecords:
  """Raw TFDS records with a placeholder ``label`` so the classification reader decodes their images."""

  def __init__(self, records: Sequence[Any]):
    self._records = records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._records[index]["image"], "label": 0}


def voc2007(data_dir: str | None = None, train_split: str = "train+validation", test_split: str = "test") -> Task:
  """VOC 2007 classification: trainval (5,011) and test (4,952), 20 classes, targets from the
  boxes' labels and difficult flags."""
  images, targets = {}, {}
  for split, tfds_split in (("train", train_split), ("test", test_split)):
    records = sources.open_tfds("voc/2007", tfds_split, data_dir)
    rows = []
    for i in range(len(records)):
      objects = records[i]["objects"]
      rows.append(multilabel_targets(objects["label"], objects["is_difficult"], VOC_CLASSES))
    targets[split] = np.stack(rows) if rows else np.zeros((0, VOC_CLASSES), np.int8)
    images[split] = sources.TfdsClassificationSource("voc/2007", tfds_split, data_source=_ImageRecords(records))
  from sppnet_jax.detection.data import VOC_CLASS_NAMES
  return Task("voc2007", "multilabel", tuple(VOC_CLASS_NAMES), images, targets)


class _Concat:
  def __init__(self, parts: Sequence[Sequence[Any]]):
    self._parts = list(parts)
    self._ends = np.cumsum([len(p) for p in self._parts])

  def __len__(self) -> int:
    return int(self._ends[-1]) if len(self._ends) else 0

  def __getitem__(self, index: int):
    index = int(index)
    part = int(np.searchsorted(self._ends, index, side="right"))
    return self._parts[part][index - (int(self._ends[part - 1]) if part else 0)]


def caltech101(data_dir: str | None = None) -> Task:
  """Caltech101 (102 classes with the background class): TFDS's train and test splits pooled, so
  the protocol's random splits can draw from every image."""
  parts, labels = [], []
  for split in ("train", "test"):
    records = sources.open_tfds("caltech101", split, data_dir)
    labels.append(np.array([int(np.asarray(records[i]["label"])) for i in range(len(records))], np.int64))
    parts.append(sources.TfdsClassificationSource("caltech101", split, data_source=records))
  return Task("caltech101", "split", tuple(str(i) for i in range(CALTECH_CLASSES)), {"pool": _Concat(parts)},
              {"pool": np.concatenate(labels)})


class _SceneImages:
  def __init__(self, scenes: synthetic.SyntheticDetection):
    self._scenes = scenes

  def __len__(self) -> int:
    return len(self._scenes)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._scenes.render(int(index))[0]}


def synthetic_scenes(num_train: int = 600, num_test: int = 600, seed: int = 0, max_objects: int = 5,
                     object_size: tuple[float, float] = synthetic.SyntheticDetection.DEFAULT_OBJECT_SIZE) -> Task:
  """Multi-label classification of built-in scenes (the VOC 2007 counterpart): 12 classes,
  ``num_train`` training and ``num_test`` test scenes of 1..``max_objects`` shapes of
  ``object_size`` (fractions of the short side) on VOC-sized images."""
  images, targets = {}, {}
  k = len(synthetic.CLASS_NAMES)
  for split, n in (("train", num_train), ("test", num_test)):
    scenes = synthetic.SyntheticDetection(split, n, seed, max_objects=max_objects, object_size=tuple(object_size))
    rows = []
    for i in range(n):
      objects = scenes.render(i)[1]
      rows.append(multilabel_targets([o.label for o in objects], [o.difficult for o in objects], k))
    images[split], targets[split] = _SceneImages(scenes), np.stack(rows)
  return Task("synthetic_scenes", "multilabel", tuple(synthetic.CLASS_NAMES), images, targets)


def synthetic_shapes(num_examples: int = 960, seed: int = 0, object_size: tuple[float, float] = (0.22, 0.9),
                     short_side: tuple[int, int] = (160, 320)) -> Task:
  """Single-label shapes (the Caltech101 counterpart): objects of ``object_size`` of the short side,
  photo-sized images; split per seed with the Caltech rule."""
  source = synthetic.SyntheticClassification("transfer", num_examples, seed, min_side=short_side[0],
                                             max_side=short_side[1], object_size=tuple(object_size))
  labels = np.array([source.label(i) for i in range(num_examples)], np.int64)
  return Task("synthetic_shapes", "split", tuple(synthetic.CLASS_NAMES), {"pool": source}, {"pool": labels})


def image_folder(root: str) -> Task:
  """Single-label images in ``root/<class>/<file>`` (e.g. Caltech101 as downloaded), split per seed
  with the Caltech rule; labels follow the sorted class folder names."""
  source = sources.ImageFolderSource(root)
  return Task(f"folder:{root}", "split", tuple(source.class_names), {"pool": source}, {"pool": source.labels})


def get_task(config) -> Task:
  """The task named by a transfer config's ``task`` block."""
  t = config.task
  if t.name == "voc2007":
    return voc2007(t.get("data_dir"))
  if t.name == "caltech101":
    return caltech101(t.get("data_dir"))
  if t.name == "synthetic_scenes":
    return synthetic_scenes(t.num_train, t.num_test, t.seed, t.max_objects, tuple(t.object_size))
  if t.name == "synthetic_shapes":
    return synthetic_shapes(t.num_examples, t.seed, tuple(t.object_size))
  if t.name.startswith("folder:"):
    return image_folder(t.name[len("folder:"):])
  raise ValueError(f"unknown transfer task {t.name!r}; use voc2007, caltech101, synthetic_scenes, "
                   "synthetic_shapes or folder:/path/to/root (root/<class>/<images>).")
