"""SPP-net detection on PASCAL VOC 2007, ZF-5, 1 scale (short side 688), ftfc7 + box regression.

Needs a trained ZF-5 SPP classification run (``sppnet train --config
experiments/imagenet/table2_zf5_single.py --workdir runs/zf5``) and TFDS voc/2007 prepared.

Run:
  sppnet detect --config experiments/detection/voc07_zf5_1scale.py:runs/zf5 --workdir runs/det_voc07_1scale

Paper (Table 9/10, ZF-5 SPP 1-scale): ftfc7 54.5 mAP, ftfc7 bb 58.0 mAP on VOC 2007 test;
0.142 s per image on a GPU (conv 0.053 s + fc 0.089 s), 102x faster than R-CNN (ZF-5).
"""

from sppnet_jax.detection.config import detection_config


def get_config(trunk_workdir: str = "runs/zf5"):
  return detection_config("voc2007", trunk_workdir=trunk_workdir, scales=(688,))
