"""Table 3, ZF-5 single-size: single-view test, 1 crop vs 1 full image (short side 256).

The network is the Table 2 one: train it with this config, or evaluate a finished Table 2 run:
  sppnet train --config experiments/imagenet/table3_zf5_single.py --workdir runs/table3_zf5_single
  sppnet evaluate --workdir runs/table2_zf5_single --views crop,full

Paper (val, top-1 error): 1 crop 38.01%, 1 full 37.55%.
"""

from sppnet_jax import configs


def get_config():
  config = configs.imagenet("zf5", "single")
  config.eval.views = ("crop", "full")
  config.paper.crop = (38.01, None)
  config.paper.full = (37.55, None)
  return config
