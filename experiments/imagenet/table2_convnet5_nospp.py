"""Table 2, Convnet*-5, (a) no SPP: ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_convnet5_nospp.py --workdir runs/table2_convnet5_nospp

Paper (val, 10-view): top-1 34.93%, top-5 13.92% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("convnet5", "nospp")
