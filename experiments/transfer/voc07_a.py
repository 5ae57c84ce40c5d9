"""Table 6 (a): VOC 2007 classification from no-SPP ZF-5, 224x224 crop; no fine-tuning, L2-normalised
features, linear SVM C = 1, mean AP over 20 classes (11-point) on test, trained on trainval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_zf5_nospp.py --workdir runs/table2_zf5_nospp`)
and TFDS voc/2007 prepared (`tfds build voc/2007`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/voc07_a.py --workdir runs/transfer/voc07_a

Paper (mAP %): conv4 59.96, conv5 66.34, pool5 69.14, fc6 74.86, fc7 75.90.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.voc07("a")
