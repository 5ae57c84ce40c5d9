"""Table 2, Convnet*-5, (b) SPP single-size: ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_convnet5_single.py --workdir runs/table2_convnet5_single

Paper (val, 10-view): top-1 34.38%, top-5 13.54% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("convnet5", "single")
