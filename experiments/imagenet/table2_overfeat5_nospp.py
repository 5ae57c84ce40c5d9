"""Table 2, Overfeat-5, (a) no SPP: ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_overfeat5_nospp.py --workdir runs/table2_overfeat5_nospp

Paper (val, 10-view): top-1 34.13%, top-5 13.52% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("overfeat5", "nospp")
