"""Table 2, Overfeat-7, (a) no SPP: ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_overfeat7_nospp.py --workdir runs/table2_overfeat7_nospp

Paper (val, 10-view): top-1 32.01%, top-5 11.97% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("overfeat7", "nospp")
