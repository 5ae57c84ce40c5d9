"""Table 7 (b): Caltech101 from SPP ZF-5 (multi-size), 224x224 crop; no fine-tuning, L2-normalised features,
linear SVM C = 1, 30 training and up to 50 test images per class (102 classes with background),
mean class accuracy over 10 random splits with its 95 % t interval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_zf5_multi.py --workdir runs/table2_zf5_multi`)
and TFDS caltech101 prepared (`tfds build caltech101`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/caltech101_b.py --workdir runs/transfer/caltech101_b

Paper (accuracy %): conv4 81.03, conv5 83.76, pool5 87.60, spp 89.47, fc6 88.54, fc7 86.10.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.caltech101("b")
