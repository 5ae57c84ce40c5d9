"""Table 6 (d): VOC 2007 classification from SPP ZF-5 (multi-size), full image, short side 392; no fine-tuning, L2-normalised
features, linear SVM C = 1, mean AP over 20 classes (11-point) on test, trained on trainval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_zf5_multi.py --workdir runs/table2_zf5_multi`)
and TFDS voc/2007 prepared (`tfds build voc/2007`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/voc07_d.py --workdir runs/transfer/voc07_d

Paper (mAP %): pool5 71.67, fc6 78.78, fc7 80.10.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.voc07("d")
