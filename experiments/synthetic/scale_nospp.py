"""Scale ablation on the built-in synthetic shapes: no-SPP baseline (pool5 to a fixed map, fixed 96 input).

A slim ZF-5 (conv widths 16-64-96-96-64, fc 512) at 96/77, the paper's 224/180 scaled by 3/7 (see
sppnet_jax.configs.synthetic for every departure), so it trains on 2 CPU cores in minutes.

Run:
  sppnet train --config experiments/synthetic/scale_nospp.py --workdir runs/scale_nospp

Measured in the main command (bash scripts/ablation.sh, 2-core CPU, 115 s with its evaluation),
top-1 error % [95 % CI] on 4,500 validation images: crop 63.73 [62.3, 65.1], full (warped) 66.29 [64.9, 67.7].

Paper counterpart: Table 2, ZF-5 (a) no SPP: 35.99 / 14.76 top-1 / top-5 error on ImageNet.
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic("nospp")
