"""Table 7 (c): Caltech101 from SPP ZF-5 (multi-size), full image, short side 224; no fine-tuning, L2-normalised features,
linear SVM C = 1, 30 training and up to 50 test images per class (102 classes with background),
mean class accuracy over 10 random splits with its 95 % t interval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_zf5_multi.py --workdir runs/table2_zf5_multi`)
and TFDS caltech101 prepared (`tfds build caltech101`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/caltech101_c.py --workdir runs/transfer/caltech101_c

Paper (accuracy %): pool5 89.46, spp 91.44, fc6 89.50, fc7 87.08.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.caltech101("c")
