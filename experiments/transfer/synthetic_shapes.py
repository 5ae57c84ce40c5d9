"""Built-in counterpart of Table 7: a new linear classifier of the 12 shapes from 30 images per
class (objects of 0.22-0.9 of the short side, wider than the trunks' 0.4-0.9), 960 new images, up
to 50 test images per class over 10 random splits, from the slim 96-px ZF-5: (a) no-SPP crop
96, (b) SPP crop 96, (c) SPP full image at short side 96. No fine-tuning, L2-normalised features,
linear SVM C = 1, mean class accuracy with its 95 % t interval over splits; paired t-tests over
the shared splits b-a and c-b per layer.

Run (trains the two trunks into runs/transfer/trunks first, if they are not there):
  sppnet transfer --config experiments/transfer/synthetic_shapes.py --workdir runs/transfer/shapes

Paper counterpart (Caltech101, ZF-5 accuracy %, SPP layer): (b) crop 89.47, (c) full 91.44.
"""

from sppnet_jax.transfer import configs


def get_config():
  return configs.synthetic_shapes()
