"""Table 2, ZF-5, (a) no SPP: ImageNet-2012, 70 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_zf5_nospp.py --workdir runs/table2_zf5_nospp

Paper (val, 10-view): top-1 35.99%, top-5 14.76% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("zf5", "nospp")
