"""Scale ablation on the built-in synthetic shapes: SPP single-size (96 input).

A slim ZF-5 (conv widths 16-64-96-96-64, fc 512) at 96/77, the paper's 224/180 scaled by 3/7 (see
sppnet_jax.configs.synthetic for every departure and how the 3,072-step regime was chosen); it trains on 2 CPU cores in about 5 minutes.

Run:
  sppnet train --config experiments/synthetic/scale_single.py --workdir runs/scale_single

Measured in the main command (bash scripts/ablation.sh, 2-core CPU, 341 s with its evaluation; artefact:
docs/results/scale_ablation/), top-1 error % [95 % CI] on 4,500 validation images: crop 15.93 [14.9, 17.0], full 14.49 [13.5, 15.5].

Paper counterpart: Table 2, ZF-5 (b) SPP single-size: 34.98 / 14.14 top-1 / top-5 error on ImageNet.
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic("single")
