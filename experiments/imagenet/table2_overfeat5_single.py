"""Table 2, Overfeat-5, (b) SPP single-size: ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_overfeat5_single.py --workdir runs/table2_overfeat5_single

Paper (val, 10-view): top-1 32.87%, top-5 12.80% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("overfeat5", "single")
