"""Table 4, SPP Overfeat-7 multi-size with the multi-view test: 6 scales {224, 256, 300, 360, 448, 560}, 18 windows
per scale pooled from the feature maps (96 views) plus 2 full-image views.

Run:
  sppnet train --config experiments/imagenet/table4_overfeat7_multiview.py --workdir runs/table4_overfeat7_multiview
  or, for a finished Table 2 run:
  sppnet evaluate --workdir runs/table2_overfeat7_multi --views ten,multiview

Paper (val): 10-view 29.68 / 10.95; 96 views 9.36 top-5; 96 + 2 full views 27.86% top-1, 9.14% top-5 error
(9.08% top-5 on the test set).
"""

from sppnet_jax import configs


def get_config():
  config = configs.imagenet("overfeat7", "multi")
  config.eval.views = ("ten", "multiview")
  config.paper.multiview = (27.86, 9.14)
  return config
