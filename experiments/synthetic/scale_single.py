"""Scale ablation on the built-in synthetic shapes: SPP single-size (96 input).

A slim ZF-5 (conv widths 16-64-96-96-64, fc 512) at 96/77, the paper's 224/180 scaled by 3/7 (see
sppnet_jax.configs.synthetic for every departure), so it trains on 2 CPU cores in minutes.

Run:
  sppnet train --config experiments/synthetic/scale_single.py --workdir runs/scale_single

Measured in the main command (bash scripts/ablation.sh, 2-core CPU, 141 s with its evaluation),
top-1 error % [95 % CI] on 4,500 validation images: crop 61.76 [60.3, 63.2], full 60.93 [59.5, 62.3].

Paper counterpart: Table 2, ZF-5 (b) SPP single-size: 34.98 / 14.14 top-1 / top-5 error on ImageNet.
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic("single")
