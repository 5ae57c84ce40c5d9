"""Scale-shift experiment on the built-in synthetic shapes: SPP single-size (96) trained on objects of
0.52-0.69 of the image's short side, tested on the standard band (0.4-0.9).

The training band is a narrow one around the standard band's geometric centre (0.6); the evaluation images are the same ones
the standard runs are scored on, so the two are compared pairwise.

Run:
  sppnet train --config experiments/synthetic/shift_single.py --workdir runs/shift_single

Measured at the previous 768-step regime (then in the main command, 2-core CPU, 125 s with its evaluation;
not re-run since; now part of `sppnet ablation --extended`), top-1 error % [95 % CI] on 4,500 validation images: crop 64.33 [62.9, 65.7], full 65.93 [64.5, 67.3].

Paper counterpart: none directly; Table 2, ZF-5 (b) SPP single-size: 34.98 / 14.14 top-1 / top-5 error on ImageNet.
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic_shift("single")
