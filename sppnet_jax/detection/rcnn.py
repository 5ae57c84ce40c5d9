"""The R-CNN baseline on the same network: every window cropped, warped and run through it.

For each window the image region is warped (bilinear, no anti-aliasing, like R-CNN's
``imresize``) to ``warp_size`` x ``warp_size`` (224; the paper's R-CNN-on-ZF-5 comparison,
Table 10) and the whole network runs on it: conv layers, SPP over the whole warped map (which
for a 224 input is what the network was trained on) and fc6/fc7. The fc7 features feed the same
SVMs as SPP-net's, and the pooled vectors the same box regressors.

Windows go through in fixed batches of ``batch`` (the last one padded, padding rows masked
out), and the image is edge-padded to a bucket shape, so neither the number of windows nor the
image size within a bucket recompiles. Cropping and warping are one
``jax.image.scale_and_translate`` per window, vmapped, inside the same compiled program as the
network. ``context_pad`` > 0 enlarges each window so that ``context_pad`` pixels of context
surround it in the warped image (R-CNN used 16); 0 crops exactly the window.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax import compiler, models
from sppnet_jax.data import augment
from sppnet_jax.data.pipeline import bucket_shape
from sppnet_jax.detection import features as feats


def context_windows(windows: np.ndarray, warp_size: int, context_pad: int) -> np.ndarray:
  """Windows enlarged about their centres by ``warp_size / (warp_size - 2 * context_pad)``."""
  w = np.asarray(windows, np.float64).reshape(-1, 4)
  if context_pad <= 0:
    return w
  if 2 * context_pad >= warp_size:
    raise ValueError(f"context_pad {context_pad} leaves no room in a {warp_size}-px warp; use < {warp_size // 2}.")
  f = warp_size / (warp_size - 2.0 * context_pad)
  cx, cy = (w[:, 0] + w[:, 2]) / 2, (w[:, 1] + w[:, 3]) / 2
  hw, hh = (w[:, 2] - w[:, 0] + 1) * f / 2, (w[:, 3] - w[:, 1] + 1) * f / 2
  return np.stack([cx - hw + 0.5, cy - hh + 0.5, cx + hw - 0.5, cy + hh - 0.5], axis=1)


def warp_crops(image: jax.Array, windows: jax.Array, warp_size: int) -> jax.Array:
  """Bilinear warps of pixel windows (N, 4) of an (H, W, 3) image to (N, S, S, 3).

  Pixel ``i`` covers ``[i, i + 1)``; window ``[x1, x2]`` covers ``[x1, x2 + 1)`` and is mapped
  onto ``[0, S)``. Samples outside the array use the nearest edge (the image is edge-padded).
  """
  def one(box):
    sx = warp_size / (box[2] - box[0] + 1.0)
    sy = warp_size / (box[3] - box[1] + 1.0)
    scale = jnp.stack([sy, sx])
    translation = jnp.stack([-box[1] * sy, -box[0] * sx])
    return jax.image.scale_and_translate(image, (warp_size, warp_size, image.shape[-1]), (0, 1), scale,
                                         translation, method="linear", antialias=False)
  return jax.vmap(one)(windows)


@compiler.jit(static_argnames=("model", "warp_size"))
def rcnn_pool5(model: models.SPPNet, params: Any, image: jax.Array, windows: jax.Array, valid: jax.Array,
               warp_size: int) -> jax.Array:
  """Pooled conv features (N, D) of warped windows; rows with ``valid`` False are zero."""
  crops = warp_crops(image, windows, warp_size)
  conv = model.apply({"params": params}, crops, method=models.SPPNet.conv_features)
  pooled = model.apply({"params": params}, conv, method=models.SPPNet.pool)
  return jnp.where(valid[:, None], pooled, 0.0)


def prepare_rcnn_image(image: np.ndarray, settings: feats.FeatureSettings) -> np.ndarray:
  """Normalised image, edge-padded to its bucket shape (so bilinear samples at the border stay inside)."""
  x = augment.normalize(image, feats.input_mean(settings), settings.norm_scale)
  hb, wb = bucket_shape(*x.shape[:2], settings.size_multiple)
  return np.pad(x, ((0, hb - x.shape[0]), (0, wb - x.shape[1]), (0, 0)), mode="edge")


def rcnn_window_features(model: models.SPPNet, params: Any, image: np.ndarray, windows: Any,
                         settings: feats.FeatureSettings, warp_size: int = 224, batch: int = 32,
                         context_pad: int = 0, head_params: Any | None = None,
                         with_fc7: bool = True) -> feats.WindowFeatures:
  """R-CNN features of one image's windows: pooled conv (R, D) and fc7 (R, F).

  ``head_params`` replaces ``params['head']`` for fc6/fc7 (a fine-tuned head). ``scale_index``
  of the result is all zeros (one warp size).
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 (H, W, 3); got {image.dtype} {image.shape}.")
  if warp_size < models.min_image_size(model.layers):
    raise ValueError(f"warp_size {warp_size} is too small for this trunk; use at least "
                     f"{models.min_image_size(model.layers)}.")
  w = feats._as_windows(windows)
  n = len(w)
  padded = np.zeros((-(-n // batch) * batch, 4), np.float32)
  padded[:n] = context_windows(w, warp_size, context_pad)
  valid = np.arange(len(padded)) < n
  x = jnp.asarray(prepare_rcnn_image(image, settings))
  chunks = [np.asarray(rcnn_pool5(model, params, x, jnp.asarray(padded[i:i + batch]), jnp.asarray(valid[i:i + batch]),
                                  int(warp_size)))
            for i in range(0, len(padded), batch)]
  channels = [layer.features for layer in model.layers if isinstance(layer, models.Conv)][-1]
  dim = channels * sum(k * k for k in model.levels)
  pool5 = np.concatenate(chunks)[:n] if chunks else np.zeros((0, dim), np.float32)
  fc7 = None
  if with_fc7:
    fc7 = feats.fc7_features(params["head"] if head_params is None else head_params, pool5, dtype=model.dtype)
  return feats.WindowFeatures(pool5, np.zeros(n, np.int32), fc7)


def evaluate_rcnn(workdir: str, max_images: int | None = None, max_windows: int | None = None,
                  warp_size: int = 224, batch: int = 32, context_pad: int = 0) -> dict:
  """VOC07 mAP of the R-CNN-style system on a trained SPP-net detection workdir's test images.

  The windows are the cached test proposals (capped at ``max_windows`` per image if given); the
  fine-tuned head, the SVMs and box regressors are the ones trained on SPP-net features (the
  same classifiers, as in the paper's Table 10 comparison, but not re-trained on warped
  features); scoring is the same test-time loop (``system.evaluate``). Returns
  ``{'ftfc7': {...}, 'ftfc7_bb': {...}, 'images', 'windows_per_image'}``.
  """
  from sppnet_jax.detection import cache, data as det_data, system as system_lib
  det = system_lib.DetectionSystem.restore(workdir)
  config, trunk = det.config, det.trunk
  test_src = det_data.get_detection_source(config.dataset, config.test_split, config.get("num_test"),
                                           int(config.seed), config.get("data_dir"))
  directory = cache.split_dir(workdir, config, trunk, "test")
  paths = sorted(directory.glob("*.npz"))[:max_images]
  if not paths:
    raise FileNotFoundError(f"no cached test windows in {directory}; run train_and_evaluate_detection first.")
  counts = []

  def images():
    for path in paths:
      c = cache.read_fields(path, ("windows", "image_hw", "gt_boxes", "gt_labels", "gt_difficult"))
      windows = c["windows"][:max_windows]
      wf = rcnn_window_features(trunk.model, trunk.params, test_src[int(path.stem)]["image"], windows,
                                trunk.settings, warp_size, batch, context_pad, with_fc7=False)
      counts.append(len(windows))
      yield wf.pool5, windows, c["image_hw"], cache.gt_of(c)

  res = system_lib.evaluate(det, images())
  out = {"ftfc7": res["ftfc7"], "images": res["images"], "windows_per_image": float(np.mean(counts))}
  if "ftfc7_bb" in res:
    out["ftfc7_bb"] = res["ftfc7_bb"]
  return out
