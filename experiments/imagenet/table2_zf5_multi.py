"""Table 2, ZF-5, (c) SPP multi-size (224 and 180, alternating per epoch): ImageNet-2012, 70 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_zf5_multi.py --workdir runs/table2_zf5_multi

Paper (val, 10-view): top-1 34.60%, top-5 13.64% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("zf5", "multi")
