"""SPP-net window features: conv5 once per image and scale, then pyramid pooling per window.

For one image and its candidate windows (pixel ``[x1, y1, x2, y2]``, 0-based inclusive, in
the original image):

1. **Scales.** The image's short side is resized to each ``s`` in ``scales`` (paper:
   {480, 576, 688, 864, 1200}; the 1-scale system uses 688), normalised with the trunk's
   mean, zero-padded to a bucket shape (each side rounded up to a multiple of
   ``size_multiple``) and run through the trunk once with its true extent (``valid_hw``), so
   images of different sizes within a bucket share one compiled program and the padding
   never leaks into the valid map.
2. **Scale per window** (:func:`select_scales`). ``rule='area'`` (the paper's text): the
   scale whose scaled window area is closest to ``target_side**2`` (224^2);
   ``rule='side'`` (the released code): the scale closest to
   ``target_side * min_side / sqrt(area)``. Areas use inclusive "+1" sizes; ties go to the
   first scale listed.
3. **Window scaling** (:func:`scale_windows`). Pixel centres map linearly:
   ``x' = x * (W' - 1) / (W - 1)`` (0-based form of the code's
   ``(x - 1)(s - 1)/(min_side - 1) + 1``), using the resized image's actual size.
4. **Projection and pooling.** Scaled windows are projected onto that scale's conv map with
   ``ops.project_boxes`` (the paper's appendix rule with the trunk's receptive-field offset)
   and pooled with ``ops.roi_spp`` over ``levels`` ({6, 3, 2, 1}: 50 bins, 12,800-d for
   256 channels). Windows are processed in fixed chunks of ``window_batch`` rows (padding
   rows masked), so the number of windows never changes a compiled shape.
5. **fc6/fc7** (:func:`fc7_features`) from the pooled vectors with the head's (or a
   fine-tuned head's) fc6 and fc7, in fixed chunks of ``FC_BATCH`` rows (large, so fc6's kernel
   is read once per 1,024 windows).

The compiled programs are keyed only by (trunk, bucket shape) and (trunk, chunk size), see
``tests/test_detection_pipeline.py`` for the no-recompile check.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax import compiler, models, ops
from sppnet_jax.data import augment
from sppnet_jax.data.pipeline import bucket_shape

PAPER_SCALES_5 = (480, 576, 688, 864, 1200)
PAPER_SCALES_1 = (688,)


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
  """How window features are computed (see the module docstring).

  Attributes:
    scales: short sides the image is resized to.
    target_side: the window side (pixels) a scale should bring a window closest to.
    rule: 'area' (paper text) or 'side' (released code) for :func:`select_scales`.
    size_multiple: resized images are zero-padded so each side is a multiple of this.
    window_batch: windows pooled per compiled call (fc6/fc7 take ``FC_BATCH`` at a time).
    levels: pyramid levels.
    mean: per-channel mean (3,) or a scalar subtracted before dividing by ``norm_scale``, or
      ``augment.PER_IMAGE`` (each resized image standardised by its own statistics).
    norm_scale: the input divisor of the trunk (``augment.NORM_SCALE``).
  """
  scales: tuple[int, ...] = PAPER_SCALES_1
  target_side: float = 224.0
  rule: str = "area"
  size_multiple: int = 64
  window_batch: int = 256
  levels: tuple[int, ...] = ops.DEFAULT_LEVELS
  mean: tuple[float, ...] | str = (augment.DEFAULT_MEAN,) * 3
  norm_scale: float = augment.NORM_SCALE

  def __post_init__(self):
    if not self.scales or any(int(s) < 1 for s in self.scales):
      raise ValueError(f"scales must be a non-empty list of positive short sides such as (688,); got {self.scales}.")
    if self.rule not in ("area", "side"):
      raise ValueError(f"rule must be 'area' (paper) or 'side' (released code); got {self.rule!r}.")
    if self.size_multiple < 1 or self.window_batch < 1:
      raise ValueError(f"size_multiple and window_batch must be positive; got {self.size_multiple}, "
                       f"{self.window_batch}.")
    if not self.target_side > 0:
      raise ValueError(f"target_side must be positive; got {self.target_side}.")
    ops.check_levels(self.levels)


@dataclasses.dataclass
class WindowFeatures:
  """Features of one image's windows.

  Attributes:
    pool5: (R, D) float32 pooled conv features (D = C * sum n^2).
    scale_index: (R,) int32 index into ``settings.scales`` of each window's scale.
    fc7: (R, F) float32 fc7 (after ReLU), or None if not asked for.
  """
  pool5: np.ndarray
  scale_index: np.ndarray
  fc7: np.ndarray | None = None


# ------------------------------------------------------------------------------------- geometry helpers

def _as_windows(windows: Any, name: str = "windows") -> np.ndarray:
  w = np.asarray(windows, np.float64)
  if w.size == 0:
    return np.zeros((0, 4))
  if w.ndim != 2 or w.shape[1] != 4:
    raise ValueError(f"{name} must be (R, 4) pixel [x1, y1, x2, y2]; got shape {w.shape}.")
  if not np.isfinite(w).all():
    raise ValueError(f"{name} contain NaN or inf; drop those proposals first.")
  bad = (w[:, 2] < w[:, 0]) | (w[:, 3] < w[:, 1])
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{name}[{i}] = {w[i].tolist()} is inverted (x2 < x1 or y2 < y1); windows are "
                     "[x1, y1, x2, y2]. Fix or drop it (sanitize_windows does that).")
  return w


def sanitize_windows(windows: Any, height: int, width: int, min_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Clips windows to the image and drops unusable ones.

  Returns ``(kept windows (M, 4) float32, kept row indices (M,))``. Dropped: rows with NaN or
  inf, inverted rows (``x2 < x1`` or ``y2 < y1``) and rows whose clipped width or height is
  below ``min_size`` pixels (e.g. wholly outside the image). An empty input gives empty outputs.
  """
  w = np.asarray(windows, np.float64)
  if w.size == 0:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
  if w.ndim != 2 or w.shape[1] != 4:
    raise ValueError(f"windows must be (R, 4) pixel [x1, y1, x2, y2]; got shape {w.shape}.")
  finite = np.isfinite(w).all(axis=1)
  w = np.where(finite[:, None], w, 0.0)
  upright = (w[:, 2] >= w[:, 0]) & (w[:, 3] >= w[:, 1])
  c = np.stack([np.clip(w[:, 0], 0, width - 1), np.clip(w[:, 1], 0, height - 1),
                np.clip(w[:, 2], 0, width - 1), np.clip(w[:, 3], 0, height - 1)], axis=1)
  big = (c[:, 2] - c[:, 0] + 1 >= min_size) & (c[:, 3] - c[:, 1] + 1 >= min_size)
  inside = (w[:, 2] >= 0) & (w[:, 3] >= 0) & (w[:, 0] <= width - 1) & (w[:, 1] <= height - 1)
  keep = np.flatnonzero(finite & upright & big & inside)
  return c[keep].astype(np.float32), keep


def select_scales(windows: Any, image_hw: Sequence[int], scales: Sequence[int], target_side: float = 224.0,
                  rule: str = "area") -> np.ndarray:
  """Index of the scale each window is pooled at, (R,) int32.

  ``rule='area'``: argmin over s of ``|area * (s / min_side)**2 - target_side**2|``;
  ``rule='side'``: argmin of ``|s - target_side * min_side / sqrt(area)|``. ``area`` is the
  inclusive pixel area in the original image; ties pick the first scale.
  """
  w = _as_windows(windows)
  min_side = float(min(image_hw))
  s = np.asarray(scales, np.float64)
  area = (w[:, 2] - w[:, 0] + 1) * (w[:, 3] - w[:, 1] + 1)
  if rule == "area":
    cost = np.abs(area[:, None] * (s[None, :] / min_side) ** 2 - target_side**2)
  elif rule == "side":
    cost = np.abs(s[None, :] - target_side * min_side / np.sqrt(area)[:, None])
  else:
    raise ValueError(f"rule must be 'area' or 'side'; got {rule!r}.")
  return np.argmin(cost, axis=1).astype(np.int32)


def resized_hw(image_hw: Sequence[int], scale: int) -> tuple[int, int]:
  """(height, width) of an image of ``image_hw`` with its short side resized to ``scale``."""
  return augment.short_side_shape(int(image_hw[0]), int(image_hw[1]), int(scale))


def scale_windows(windows: Any, image_hw: Sequence[int], new_hw: Sequence[int]) -> np.ndarray:
  """Maps pixel windows of an ``image_hw`` image to its ``new_hw`` resized copy (pixel centres linear)."""
  w = _as_windows(windows)
  h, wd = image_hw
  fy = (new_hw[0] - 1) / max(h - 1, 1)
  fx = (new_hw[1] - 1) / max(wd - 1, 1)
  return (w * np.array([fx, fy, fx, fy])).astype(np.float32)


def input_mean(settings: FeatureSettings) -> np.ndarray | str:
  """``settings.mean`` in the form ``augment.normalize`` takes."""
  return settings.mean if isinstance(settings.mean, str) else np.asarray(settings.mean, np.float32)


def prepare_image(image: np.ndarray, scale: int, settings: FeatureSettings) -> tuple[np.ndarray, tuple[int, int]]:
  """The image resized to short side ``scale``, normalised and zero-padded to its bucket.

  Returns ``(padded (Hb, Wb, 3) float32, (h, w) valid extent)``.
  """
  resized = augment.resize_short_side(image, int(scale))
  h, w = resized.shape[:2]
  x = augment.normalize(resized, input_mean(settings), settings.norm_scale)
  hb, wb = bucket_shape(h, w, settings.size_multiple)
  out = np.zeros((hb, wb, 3), np.float32)
  out[:h, :w] = x
  return out, (h, w)


# ------------------------------------------------------------------------------------- compiled pieces

@compiler.jit(static_argnames=("model",))
def conv_map(model: models.SPPNet, params: Any, images: jax.Array, valid_hw: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Trunk output of a padded batch and each map's valid (h, w): ``(B, Hm, Wm, C), (B, 2)``."""
  conv = model.apply({"params": params}, images, valid_hw, method=models.SPPNet.conv_features)
  return conv, models.map_extent(model.layers, valid_hw)


@compiler.jit(static_argnames=("model", "levels"))
def pool_windows(model: models.SPPNet, conv: jax.Array, map_hw: jax.Array, windows: jax.Array, valid: jax.Array,
                 levels: tuple[int, ...]) -> jax.Array:
  """Projects scaled pixel windows (B, R, 4) onto conv maps (B, Hm, Wm, C) and pools them: (B, R, D)."""
  cells = ops.project_boxes(windows, models.geometry(model.layers), map_hw)
  return ops.roi_spp(conv, cells, valid, levels)


# Windows per fc6/fc7 call. fc6's kernel (12,800 x 4,096 floats, 210 MB for ZF-5) is read from
# memory once per call, so a call needs enough rows for the matmul to be bound by arithmetic, not
# by that read: 1,024 rows do 2 * 1,024 FLOPs per weight read.
FC_BATCH = 1024


@compiler.jit(static_argnames=("fc_width", "dtype"))
def _fc7(head_params: Any, pooled: jax.Array, fc_width: int, dtype: Any) -> jax.Array:
  head = models.Head(num_classes=1, fc_width=fc_width, dtype=dtype)
  return head.apply({"params": head_params}, pooled.astype(jnp.float32), False, True)


def fc7_features(head_params: Any, pooled: np.ndarray, batch: int = FC_BATCH, dtype: Any = jnp.float32) -> np.ndarray:
  """fc7 (after ReLU) of pooled vectors (N, D), run in fixed chunks of ``batch`` rows.

  ``head_params`` needs ``fc6`` and ``fc7`` (a model's ``params['head']`` or a fine-tuned head);
  it is put on the device once, not per chunk. ``pooled`` may be 16-bit (the cache's dtype): the
  chunks travel in that dtype and are converted to float32 inside the compiled call (exact), so no
  float32 copy of all the rows is made on the host. Only the last chunk is zero-padded. The next
  chunk is dispatched before the previous one is read back, so the host never waits between calls.
  """
  pooled = np.asarray(pooled)
  fc_width = int(head_params["fc7"]["kernel"].shape[1])
  head_params = jax.device_put(head_params)
  n = len(pooled)
  out = np.empty((n, fc_width), np.float32)
  in_flight: tuple[int, int, jax.Array] | None = None  # (first row, rows, result) of the chunk running now
  for i in range(0, n, batch):
    chunk = pooled[i:i + batch]
    rows = len(chunk)
    if rows < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - rows, chunk.shape[1]), chunk.dtype)])
    result = _fc7(head_params, chunk, fc_width, jnp.dtype(dtype))
    if in_flight is not None:
      start, count, previous = in_flight
      out[start:start + count] = np.asarray(previous)[:count]
    in_flight = (i, rows, result)
  if in_flight is not None:
    start, count, previous = in_flight
    out[start:start + count] = np.asarray(previous)[:count]
  return out


# ------------------------------------------------------------------------------------- per image

@dataclasses.dataclass
class ScaleMap:
  """One scale's conv map of one image (kept on device)."""
  scale: int
  resized_hw: tuple[int, int]
  conv: jax.Array  # (1, Hm, Wm, C)
  map_hw: jax.Array  # (1, 2)


def conv_maps(model: models.SPPNet, params: Any, image: np.ndarray, settings: FeatureSettings,
              which: Sequence[int] | None = None) -> list[ScaleMap | None]:
  """Conv maps of ``image`` at the scales with indices ``which`` (default all); None elsewhere."""
  which = range(len(settings.scales)) if which is None else set(int(i) for i in which)
  out: list[ScaleMap | None] = []
  for i, s in enumerate(settings.scales):
    if i not in which:
      out.append(None)
      continue
    x, hw = prepare_image(image, s, settings)
    conv, map_hw = conv_map(model, params, jnp.asarray(x[None]), jnp.asarray([hw], jnp.int32))
    out.append(ScaleMap(int(s), hw, conv, map_hw))
  return out


def pool_from_maps(model: models.SPPNet, maps: Sequence[ScaleMap | None], image_hw: Sequence[int], windows: Any,
                   scale_index: np.ndarray, settings: FeatureSettings) -> np.ndarray:
  """Pooled features (R, D) of windows, each at its scale's map (which must be computed)."""
  w = _as_windows(windows)
  idx = np.asarray(scale_index, np.int64)
  present = [m for m in maps if m is not None]
  if not present:
    raise ValueError("no conv map was computed; call conv_maps first.")
  dim = ops.spp_output_dim(int(present[0].conv.shape[-1]), settings.levels)
  out = np.zeros((len(w), dim), np.float32)
  b = settings.window_batch
  for i, m in enumerate(maps):
    rows = np.flatnonzero(idx == i)
    if not len(rows):
      continue
    if m is None:
      raise ValueError(f"windows were assigned to scale {settings.scales[i]} but its conv map was not computed.")
    scaled = scale_windows(w[rows], image_hw, m.resized_hw)
    n = len(rows)
    padded = np.zeros((-(-n // b) * b, 4), np.float32)
    padded[:n] = scaled
    valid = np.arange(len(padded)) < n
    # Every chunk is dispatched before any is read back: no host round trip between calls.
    chunks = [pool_windows(model, m.conv, m.map_hw, jnp.asarray(padded[None, j:j + b]),
                           jnp.asarray(valid[None, j:j + b]), tuple(settings.levels)) for j in range(0, len(padded), b)]
    out[rows] = np.concatenate([np.asarray(c)[0] for c in chunks])[:n]
  return out


def window_features(model: models.SPPNet, params: Any, image: np.ndarray, windows: Any, settings: FeatureSettings,
                    head_params: Any | None = None, with_fc7: bool = True) -> WindowFeatures:
  """Pooled conv5 (and fc7) features of the windows of one image.

  Args:
    model, params: an SPP network and its parameters (the trunk is used; the head gives fc6/fc7
      unless ``head_params`` is given).
    image: uint8 (H, W, 3).
    windows: (R, 4) pixel windows of the original image (R may be 0).
    settings: :class:`FeatureSettings`.
    head_params: fc6/fc7 parameters to use instead of ``params['head']`` (a fine-tuned head).
    with_fc7: also compute fc7.

  Only the scales that some window needs are run through the trunk.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 (H, W, 3); got {image.dtype} {image.shape}. Convert it with "
                     "sppnet_jax.detection.data.check_image.")
  w = _as_windows(windows)
  hw = image.shape[:2]
  idx = select_scales(w, hw, settings.scales, settings.target_side, settings.rule)
  if len(w) == 0:
    dim = ops.spp_output_dim(_conv_channels(model), settings.levels)
    fc = None
    if with_fc7:
      hp = params["head"] if head_params is None else head_params
      fc = np.zeros((0, int(hp["fc7"]["kernel"].shape[1])), np.float32)
    return WindowFeatures(np.zeros((0, dim), np.float32), idx, fc)
  maps = conv_maps(model, params, image, settings, np.unique(idx))
  pooled = pool_from_maps(model, maps, hw, w, idx, settings)
  fc = None
  if with_fc7:
    fc = fc7_features(params["head"] if head_params is None else head_params, pooled, dtype=model.dtype)
  return WindowFeatures(pooled, idx, fc)


def _conv_channels(model: models.SPPNet) -> int:
  return [layer.features for layer in model.layers if isinstance(layer, models.Conv)][-1]
