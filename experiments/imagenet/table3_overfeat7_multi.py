"""Table 3, Overfeat-7 multi-size: single-view test, 1 crop vs 1 full image (short side 256).

The network is the Table 2 one: train it with this config, or evaluate a finished Table 2 run:
  sppnet train --config experiments/imagenet/table3_overfeat7_multi.py --workdir runs/table3_overfeat7_multi
  sppnet evaluate --workdir runs/table2_overfeat7_multi --views crop,full

Paper (val, top-1 error): 1 crop 32.57%, 1 full 31.25%.
"""

from sppnet_jax import configs


def get_config():
  config = configs.imagenet("overfeat7", "multi")
  config.eval.views = ("crop", "full")
  config.paper.crop = (32.57, None)
  config.paper.full = (31.25, None)
  return config
