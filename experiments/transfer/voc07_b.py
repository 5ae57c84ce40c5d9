"""Table 6 (b): VOC 2007 classification from SPP ZF-5 (multi-size), 224x224 crop; no fine-tuning, L2-normalised
features, linear SVM C = 1, mean AP over 20 classes (11-point) on test, trained on trainval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_zf5_multi.py --workdir runs/table2_zf5_multi`)
and TFDS voc/2007 prepared (`tfds build voc/2007`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/voc07_b.py --workdir runs/transfer/voc07_b

Paper (mAP %): conv4 57.28, conv5 65.43, pool5 68.76, fc6 75.55, fc7 76.45.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.voc07("b")
