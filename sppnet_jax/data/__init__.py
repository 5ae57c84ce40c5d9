"""Data: synthetic, TFDS and image-folder sources, numpy augmentation, grain pipelines.

Sources are random-access sequences of ``{'image': uint8 (H, W, 3), 'label': int}``
(detection sources add ``objects``); :mod:`~sppnet_jax.data.augment` holds the
per-example transforms and :mod:`~sppnet_jax.data.pipeline` the batching.
"""

from sppnet_jax.data.synthetic import CLASS_NAMES, SyntheticClassification, SyntheticDetection
from sppnet_jax.data.sources import (
  CorruptImageError, ImageFolderSource, TfdsClassificationSource, get_source, num_classes,
  to_rgb_uint8)
from sppnet_jax.data.augment import (
  mean_for_size, normalize, resize_image, resize_short_side)
from sppnet_jax.data.pipeline import (
  estimate_mean_image, eval_batches, steps_per_epoch, train_batches)

__all__ = [
  'CLASS_NAMES', 'SyntheticClassification', 'SyntheticDetection', 'CorruptImageError',
  'ImageFolderSource', 'TfdsClassificationSource', 'get_source', 'num_classes', 'to_rgb_uint8',
  'mean_for_size', 'normalize', 'resize_image', 'resize_short_side', 'estimate_mean_image',
  'eval_batches', 'steps_per_epoch', 'train_batches',
]
