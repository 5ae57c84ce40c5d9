"""Table 2, ZF-5, (b) SPP single-size: ImageNet-2012, 70 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_zf5_single.py --workdir runs/table2_zf5_single

Paper (val, 10-view): top-1 34.98%, top-5 14.14% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("zf5", "single")
