"""The one feature scaling of the SVMs and box regressors (R-CNN's ``rcnn_scale_features``).

Features are multiplied by one global factor that makes their mean L2 norm ``target_norm`` (20);
the factor is estimated once on training rows and stored with the model that uses it.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

TARGET_NORM = 20.0
BLOCK_ROWS = 1024


def mean_norm_scale(features: Iterable[np.ndarray], target_norm: float = TARGET_NORM) -> float:
  """The factor that makes the mean L2 norm of all the given rows equal ``target_norm``.

  ``features`` is one (N, D) array or an iterable of them. Norms are taken in float64, ``BLOCK_ROWS``
  rows at a time, so no array is copied whole (a 16-bit array of many rows would quadruple in
  float64). Raises ValueError if there are no rows or all are zero.
  """
  if isinstance(features, np.ndarray):
    features = [features]
  total, count = 0.0, 0
  for chunk in features:
    chunk = np.asarray(chunk)
    if chunk.size == 0:
      continue
    if chunk.ndim != 2:
      raise ValueError(f"feature chunks must be (N, D); got shape {chunk.shape}.")
    for start in range(0, len(chunk), BLOCK_ROWS):
      total += float(np.linalg.norm(chunk[start:start + BLOCK_ROWS].astype(np.float64), axis=1).sum())
    count += len(chunk)
  if not count or not total > 0:
    raise ValueError("cannot compute a feature scale: the sampled features are all zero or there are none.")
  return float(target_norm) / (total / count)
