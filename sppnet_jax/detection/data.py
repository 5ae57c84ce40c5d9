"""Detection data sources: the built-in synthetic scenes and TFDS ``voc/2007``.

Every source is a random-access sequence of examples

``{'image': uint8 (H, W, 3), 'boxes': float32 (N, 4), 'labels': int64 (N,), 'difficult': bool (N,), 'id': str}``

with boxes in pixel ``[x1, y1, x2, y2]``, 0-based and inclusive (the project convention, see
``sppnet_jax.detection.boxes``), labels in ``0..K-1`` (the
project's one label convention; a background class exists only inside fine-tuning) and
``difficult`` the VOC flag. Images are decoded and converted to 8-bit RGB by the project's one
policy (:mod:`sppnet_jax.data.decode`: alpha composited over white, 16-bit divided by 257); an
image that cannot be decoded, is empty or is smaller than ``min_side`` pixels raises ValueError
naming the image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sppnet_jax.data import decode, sources as data_sources
from sppnet_jax.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASS_NAMES
from sppnet_jax.data.synthetic import SyntheticDetection
from sppnet_jax.detection.boxes import clip_boxes, tfds_to_pixel

VOC_CLASS_NAMES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

# Smallest image side accepted: the trunks need at least ~40 px, and a detection image smaller
# than this is almost certainly a broken file.
DEFAULT_MIN_SIDE = 32


def class_names(name: str) -> tuple[str, ...]:
  """Class names of source ``name`` ('synthetic' or 'voc2007'); label k is ``names[k]``."""
  if name == "synthetic":
    return tuple(SYNTHETIC_CLASS_NAMES)
  if name in ("voc2007", "voc/2007"):
    return VOC_CLASS_NAMES
  raise ValueError(f"unknown detection dataset {name!r}; use 'synthetic' or 'voc2007'.")


def check_image(image: Any, name: str, min_side: int = DEFAULT_MIN_SIDE) -> np.ndarray:
  """Returns ``image`` as uint8 RGB (H, W, 3), or raises ValueError naming the image.

  Encoded bytes (PNG/JPEG) are decoded; grey, RGBA and 16-bit arrays are converted.
  """
  try:
    rgb = decode.as_rgb_uint8(image, name=str(name))
  except ValueError as e:
    raise type(e)(f"{e}. Remove the image from the split or fix the file.") from e
  h, w = rgb.shape[:2]
  if min(h, w) < min_side:
    raise ValueError(f"image {name!r} is {h}x{w} pixels; detection needs at least {min_side} pixels per side. "
                     "The file is probably truncated or a thumbnail: remove it or replace it.")
  return rgb


def make_example(image: Any, boxes: Any, labels: Any, difficult: Any | None, image_id: str,
                 num_classes: int | None = None, min_side: int = DEFAULT_MIN_SIDE) -> dict[str, Any]:
  """Builds and validates one example in the format of the module docstring.

  Boxes are clipped to the image (annotations one pixel outside are common); inverted or
  non-finite boxes and labels outside ``0..num_classes-1`` raise ValueError naming the image.
  """
  rgb = check_image(image, image_id, min_side)
  h, w = rgb.shape[:2]
  b = np.asarray(boxes, np.float64).reshape(-1, 4)
  if not np.isfinite(b).all():
    raise ValueError(f"image {image_id!r} has a non-finite ground-truth box; fix the annotation.")
  if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
    i = int(np.flatnonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))[0])
    raise ValueError(f"image {image_id!r} ground-truth box {i} = {b[i].tolist()} is inverted; boxes are "
                     "[x1, y1, x2, y2] with x1 <= x2 and y1 <= y2.")
  b = clip_boxes(b, h, w) if len(b) else b
  lab = np.asarray(labels, np.int64).reshape(-1)
  if len(lab) != len(b):
    raise ValueError(f"image {image_id!r} has {len(b)} boxes but {len(lab)} labels.")
  if len(lab) and (lab.min() < 0 or (num_classes is not None and lab.max() >= num_classes)):
    top = "K-1" if num_classes is None else num_classes - 1
    raise ValueError(f"image {image_id!r} has labels {lab.tolist()}; labels must lie in 0..{top}.")
  diff = np.zeros(len(b), bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
  if len(diff) != len(b):
    raise ValueError(f"image {image_id!r} has {len(b)} boxes but {len(diff)} difficult flags.")
  return {"image": rgb, "boxes": b.astype(np.float32), "labels": lab, "difficult": diff, "id": str(image_id)}


class SyntheticDetectionSource:
  """The built-in synthetic scenes (``SyntheticDetection``) in the detection format (labels 0..11)."""

  def __init__(self, split: str, num_examples: int, seed: int = 0):
    self._source = SyntheticDetection(split, num_examples, seed)
    self.split = split
    self.class_names = tuple(SYNTHETIC_CLASS_NAMES)

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"SyntheticDetectionSource({self._source!r})"

  def __getitem__(self, index: int) -> dict[str, Any]:
    image, objects = self._source.render(int(index))
    # SceneObject boxes are (ymin, xmin, ymax, xmax) with exclusive ends.
    boxes = np.array([[o.box[1], o.box[0], o.box[3] - 1, o.box[2] - 1] for o in objects], np.float32).reshape(-1, 4)
    return make_example(image, boxes, [o.label for o in objects], [o.difficult for o in objects],
                        f"synthetic_{self.split}_{int(index):06d}", len(self.class_names))


class VocDetectionSource:
  """TFDS ``voc/2007`` read with ``tfds.data_source`` (no TensorFlow needed), or any sequence of
  TFDS-format examples passed as ``data_source``.

  TFDS stores ``objects/bbox`` as normalised ``[ymin, xmin, ymax, xmax]`` of VOC's 1-based
  corners; they are converted back to 0-based integer pixels (``tfds_to_pixel``); labels are
  TFDS's ``0..19``. Works on real array_record data (lists, bytes file names, encoded
  images) and on mocked data (numpy arrays, str).
  """

  def __init__(self, split: str, data_dir: str | None = None, data_source: Sequence[Any] | None = None,
               num_examples: int | None = None):
    if data_source is None:
      data_source = data_sources.open_tfds("voc/2007", split, data_dir)
    self.split, self._source = split, data_source
    self._n = len(data_source) if num_examples is None else min(int(num_examples), len(data_source))
    self.class_names = VOC_CLASS_NAMES

  def __len__(self) -> int:
    return self._n

  def __repr__(self) -> str:
    return f"VocDetectionSource(split={self.split!r}, n={len(self)})"

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._n:
      raise IndexError(f"index {index} out of range for {self!r}.")
    raw = self._source[index]
    image_id = f"voc2007[{self.split}][{index}]"
    for key in ("image/filename", "image/file_name", "file_name", "filename"):
      if key in raw:
        image_id = data_sources._as_str(raw[key])
        break
    rgb = check_image(raw["image"], image_id)
    h, w = rgb.shape[:2]
    objects = raw.get("objects", {})
    bbox = np.asarray(objects.get("bbox", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    boxes = tfds_to_pixel(bbox, h, w, one_based=True, round_coords=True) if len(bbox) else np.zeros((0, 4))
    labels = np.asarray(objects.get("label", np.zeros(0)), np.int64).reshape(-1)
    difficult = objects.get("is_difficult")
    return make_example(rgb, boxes, labels, difficult, image_id, len(VOC_CLASS_NAMES))


def get_detection_source(name: str, split: str, num_examples: int | None = None, seed: int = 0,
                         data_dir: str | None = None):
  """The detection source ``name`` ('synthetic' or 'voc2007') for ``split``.

  Synthetic splits are 'train', 'validation' and 'test' (``num_examples`` required); VOC
  splits are TFDS's ('train', 'validation', 'test', or slices such as 'test[:100]').
  """
  if name == "synthetic":
    if num_examples is None:
      raise ValueError("the synthetic detection source needs num_examples (e.g. 40).")
    return SyntheticDetectionSource(split, num_examples, seed)
  if name in ("voc2007", "voc/2007"):
    return VocDetectionSource(split, data_dir=data_dir, num_examples=num_examples)
  raise ValueError(f"unknown detection dataset {name!r}; use 'synthetic' or 'voc2007'.")
