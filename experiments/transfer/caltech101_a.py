"""Table 7 (a): Caltech101 from no-SPP ZF-5, 224x224 crop; no fine-tuning, L2-normalised features,
linear SVM C = 1, 30 training and up to 50 test images per class (102 classes with background),
mean class accuracy over 10 random splits with its 95 % t interval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_zf5_nospp.py --workdir runs/table2_zf5_nospp`)
and TFDS caltech101 prepared (`tfds build caltech101`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/caltech101_a.py --workdir runs/transfer/caltech101_a

Paper (accuracy %): conv4 80.12, conv5 84.40, pool5 87.98, fc6 87.86, fc7 85.30.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.caltech101("a")
