"""Scale-shift experiment on the built-in synthetic shapes: SPP multi-size (96 and 77 alternating per epoch) trained on objects of
0.52-0.69 of the image's short side, tested on the standard band (0.4-0.9).

The training band is a narrow one around the standard band's geometric centre (0.6); the evaluation images are the same ones
the standard runs are scored on, so the two are compared pairwise.

Run:
  sppnet train --config experiments/synthetic/shift_multi.py --workdir runs/shift_multi

Measured at the previous 768-step regime (then in the main command, 2-core CPU, 104 s with its evaluation;
not re-run since; now part of `sppnet ablation --extended`), top-1 error % [95 % CI] on 4,500 validation images: crop 68.69 [67.3, 70.0], full 69.07 [67.7, 70.4].

Paper counterpart: none directly; Table 2, ZF-5 (c) SPP multi-size: 34.60 / 13.64 top-1 / top-5 error on ImageNet.
"""

from sppnet_jax import configs


def get_config():
  return configs.synthetic_shift("multi")
