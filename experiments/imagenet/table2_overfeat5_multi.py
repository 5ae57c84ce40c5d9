"""Table 2, Overfeat-5, (c) SPP multi-size (224 and 180, alternating per epoch): ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_overfeat5_multi.py --workdir runs/table2_overfeat5_multi

Paper (val, 10-view): top-1 32.26%, top-5 12.33% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("overfeat5", "multi")
