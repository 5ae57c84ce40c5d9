"""Scale ablation on the built-in synthetic shapes: SPP multi-size (96 and 77 alternating per epoch; 77 is the 96 crop resized).

A slim ZF-5 (conv widths 16-64-96-96-64, fc 512) at 96/77, the paper's 224/180 scaled by 3/7 (see
sppnet_jax.configs.synthetic for every departure and how the 3,072-step regime was chosen); it trains on 2 CPU cores in about 5 minutes.

Run:
  sppnet train --config experiments/synthetic/scale_multi.py --workdir runs/scale_multi

Measured in the main command (bash scripts/ablation.sh, 2-core CPU, 251 s with its evaluation; artefact:
docs/results/scale_ablation/), top-1 error % [95 % CI] on 4,500 validation images: crop 19.22 [18.1, 20.4], full 18.84 [17.7, 20.0].

Paper counterpart: Table 2, ZF-5 (c) SPP multi-size (224 and 180, alternating per epoch): 34.60 / 13.64 top-1 / top-5 error on ImageNet.
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic("multi")
