"""Table 3, ZF-5 multi-size: single-view test, 1 crop vs 1 full image (short side 256).

The network is the Table 2 one: train it with this config, or evaluate a finished Table 2 run:
  sppnet train --config experiments/imagenet/table3_zf5_multi.py --workdir runs/table3_zf5_multi
  sppnet evaluate --workdir runs/table2_zf5_multi --views crop,full

Paper (val, top-1 error): 1 crop 37.57%, 1 full 37.07%.
"""

from sppnet_jax import configs


def get_config():
  config = configs.imagenet("zf5", "multi")
  config.eval.views = ("crop", "full")
  config.paper.crop = (37.57, None)
  config.paper.full = (37.07, None)
  return config
