"""Detection building blocks: boxes, VOC evaluation, proposals, SVMs and box regression.

Boxes everywhere are pixel ``[x1, y1, x2, y2]``, 0-based, inclusive (width ``x2 - x1 + 1``).
"""

from sppnet_jax.detection.bbox_regression import BoxRegressor, select_training_windows
from sppnet_jax.detection.boxes import (clip_boxes, decode_boxes, encode_boxes, iou_matrix, nms, pixel_to_tfds,
                                        tfds_to_pixel, validate_boxes)
from sppnet_jax.detection.proposals import load_precomputed, recall, selective_search
from sppnet_jax.detection.svm import ImageFeatures, LinearSVMs, train_svms
from sppnet_jax.detection.voc_eval import evaluate_class, evaluate_detections, voc_ap

__all__ = [
    "BoxRegressor", "ImageFeatures", "LinearSVMs", "clip_boxes", "decode_boxes", "encode_boxes",
    "evaluate_class", "evaluate_detections", "iou_matrix", "load_precomputed", "nms", "pixel_to_tfds", "recall",
    "select_training_windows", "selective_search", "tfds_to_pixel", "train_svms", "validate_boxes", "voc_ap",
]
