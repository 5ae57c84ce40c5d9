"""Table 6 (e): VOC 2007 classification from SPP Overfeat-7 (multi-size), full image, short side 364; no fine-tuning, L2-normalised
features, linear SVM C = 1, mean AP over 20 classes (11-point) on test, trained on trainval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_overfeat7_multi.py --workdir runs/table2_overfeat7_multi`)
and TFDS voc/2007 prepared (`tfds build voc/2007`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/voc07_e.py --workdir runs/transfer/voc07_e

Paper (mAP %): pool5 76.09, fc6 81.58, fc7 82.44.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.voc07("e")
