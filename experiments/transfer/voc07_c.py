"""Table 6 (c): VOC 2007 classification from SPP ZF-5 (multi-size), full image, short side 224; no fine-tuning, L2-normalised
features, linear SVM C = 1, mean AP over 20 classes (11-point) on test, trained on trainval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_zf5_multi.py --workdir runs/table2_zf5_multi`)
and TFDS voc/2007 prepared (`tfds build voc/2007`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/voc07_c.py --workdir runs/transfer/voc07_c

Paper (mAP %): pool5 70.82, fc6 77.32, fc7 78.39.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.voc07("c")
