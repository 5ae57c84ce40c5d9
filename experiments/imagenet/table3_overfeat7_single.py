"""Table 3, Overfeat-7 single-size: single-view test, 1 crop vs 1 full image (short side 256).

The network is the Table 2 one: train it with this config, or evaluate a finished Table 2 run:
  sppnet train --config experiments/imagenet/table3_overfeat7_single.py --workdir runs/table3_overfeat7_single
  sppnet evaluate --workdir runs/table2_overfeat7_single --views crop,full

Paper (val, top-1 error): 1 crop 33.18%, 1 full 32.72%.
"""

from sppnet_jax import configs


def get_config():
  config = configs.imagenet("overfeat7", "single")
  config.eval.views = ("crop", "full")
  config.paper.crop = (33.18, None)
  config.paper.full = (32.72, None)
  return config
