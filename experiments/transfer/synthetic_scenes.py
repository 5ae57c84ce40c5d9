"""Built-in counterpart of Table 6: multi-label classification of scenes like the built-in
detection data (12 shape classes, 1-3 objects of 0.2-0.6 of the short side anywhere in a
VOC-sized image) from the slim 96-px ZF-5 of the main job,
trained once on single-object images: (a) no-SPP crop 96, (b) SPP crop 96, (c) SPP full image
at short side 96, (d) SPP full at 168 (the paper's 224 and 392, scaled by 96/224). No
fine-tuning, L2-normalised features, linear SVM C = 1, 11-point mean AP on 600 test scenes,
trained on 600; paired bootstrap comparisons b-a, c-b, d-c per layer.

Run (trains the two trunks into runs/transfer/trunks first, if they are not there):
  sppnet transfer --config experiments/transfer/synthetic_scenes.py --workdir runs/transfer/scenes

Paper counterpart (VOC 2007, ZF-5 fc7 mAP %): (a) 75.90, (b) 76.45, (c) 78.39, (d) 80.10 — full
beats crop and the larger scale beats 224.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.synthetic_scenes()
