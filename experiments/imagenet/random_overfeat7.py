"""Random-size training, Overfeat-7: each epoch a size s drawn uniformly from [180, 224] (the 224 crop resized to s).

Run:
  sppnet train --config experiments/imagenet/random_overfeat7.py --workdir runs/random_overfeat7

Paper (val, 10-view): top-1 30.06%, top-5 10.96% error (2-size multi-size: 29.68 / 10.95).
"""

from sppnet_jax import configs


def get_config():
  config = configs.imagenet("overfeat7", "random")
  config.paper.ten = (30.06, 10.96)
  return config
