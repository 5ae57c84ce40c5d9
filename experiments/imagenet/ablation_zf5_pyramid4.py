"""Pyramid ablation, ZF-5 single-size with the 4-level pyramid {4, 3, 2, 1} (30 bins, fc6 input 7,680).

Run:
  sppnet train --config experiments/imagenet/ablation_zf5_pyramid4.py --workdir runs/ablation_zf5_pyramid4

Paper (val, 10-view): top-1 35.06%, top-5 14.04% error; compare {6, 3, 2, 1}: 34.98 / 14.14 (table2_zf5_single) and no SPP: 35.99 / 14.76 (table2_zf5_nospp).
"""

from sppnet_jax import configs


def get_config():
  config = configs.imagenet("zf5", "single", levels=(4, 3, 2, 1))
  config.paper.ten = (35.06, 14.04)
  return config
