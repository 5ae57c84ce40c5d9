"""Table 7 (d): Caltech101 from SPP Overfeat-7 (multi-size), full image, short side 224; no fine-tuning, L2-normalised features,
linear SVM C = 1, 30 training and up to 50 test images per class (102 classes with background),
mean class accuracy over 10 random splits with its 95 % t interval.

Needs the trunk trained first (`sppnet train --config experiments/imagenet/table2_overfeat7_multi.py --workdir runs/table2_overfeat7_multi`)
and TFDS caltech101 prepared (`tfds build caltech101`, or pass --config.task.data_dir).

Run:
  sppnet transfer --config experiments/transfer/caltech101_d.py --workdir runs/transfer/caltech101_d

Paper (accuracy %): pool5 91.46, spp 93.42, fc6 91.83, fc7 90.00.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.caltech101("d")
