"""Scale ablation on the built-in synthetic shapes: no-SPP baseline (pool5 to a fixed map, fixed 96 input).

A slim ZF-5 (conv widths 16-64-96-96-64, fc 512) at 96/77, the paper's 224/180 scaled by 3/7 (see
sppnet_jax.configs.synthetic for every departure and how the 3,072-step regime was chosen); it trains on 2 CPU cores in about 5 minutes.

Run:
  sppnet train --config experiments/synthetic/scale_nospp.py --workdir runs/scale_nospp

Measured in the main command (bash scripts/ablation.sh, 2-core CPU, 259 s with its evaluation; artefact:
docs/results/scale_ablation/), top-1 error % [95 % CI] on 4,500 validation images: crop 15.13 [14.1, 16.2], full (warped) 26.24 [25.0, 27.5].

Paper counterpart: Table 2, ZF-5 (a) no SPP: 35.99 / 14.76 top-1 / top-5 error on ImageNet.
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic("nospp")
