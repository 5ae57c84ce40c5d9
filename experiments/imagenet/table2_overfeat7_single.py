"""Table 2, Overfeat-7, (b) SPP single-size: ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_overfeat7_single.py --workdir runs/table2_overfeat7_single

Paper (val, 10-view): top-1 30.36%, top-5 11.12% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("overfeat7", "single")
