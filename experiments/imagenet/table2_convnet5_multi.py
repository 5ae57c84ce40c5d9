"""Table 2, Convnet*-5, (c) SPP multi-size (224 and 180, alternating per epoch): ImageNet-2012, 90 epochs, 10-view test at 224.

Run:
  sppnet train --config experiments/imagenet/table2_convnet5_multi.py --workdir runs/table2_convnet5_multi

Paper (val, 10-view): top-1 33.94%, top-5 13.33% error.
"""

from sppnet_jax import configs


def get_config():
  return configs.imagenet("convnet5", "multi")
