"""SPP-net detection on PASCAL VOC 2007, ZF-5, 5 scales {480, 576, 688, 864, 1200}, ftfc7 + box regression.

Each window is pooled at the single scale that makes it closest to 224 x 224. Needs a trained
ZF-5 SPP classification run and TFDS voc/2007 prepared (see voc07_zf5_1scale.py).

Run:
  sppnet detect --config experiments/detection/voc07_zf5_5scale.py:runs/zf5 --workdir runs/det_voc07_5scale

Paper (Table 9/10, ZF-5 SPP 5-scale): ftfc7 55.2 mAP, ftfc7 bb 59.2 mAP on VOC 2007 test;
0.382 s per image on a GPU (conv 0.293 s + fc 0.089 s), 38x faster than R-CNN (ZF-5).
"""

from sppnet_jax.detection.config import detection_config


def get_config(trunk_workdir: str = "runs/zf5"):
  return detection_config("voc2007", trunk_workdir=trunk_workdir, scales=(480, 576, 688, 864, 1200))
