"""Scale ablation on the built-in synthetic shapes: SPP random-size (a size from [77, 96] per epoch).

A slim ZF-5 (conv widths 16-64-96-96-64, fc 512) at 96/77, the paper's 224/180 scaled by 3/7 (see
sppnet_jax.configs.synthetic for every departure), 3,072 steps (not timed at this regime).

Run:
  sppnet train --config experiments/synthetic/scale_random.py --workdir runs/scale_random

Paper counterpart: Table 2, ZF-5 random-size (Overfeat-7 in the paper: 30.06 / 10.96).
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic("random")
