"""SPP-net detection on the built-in synthetic scenes: a slim CPU version of the VOC07 system.

Everything is the paper's recipe scaled down by 96/224 (the synthetic classification configs
train on 96 crops): 1 scale with short side 295 (= 688 * 96/224), windows pooled at the scale
that brings them closest to 96 px, the slim ZF-5 of the classification runs, selective
search (fast mode) on a 250-px copy, at most 300 proposals per image, 200 training and 100 test
images, 1,500 fine-tuning steps, at most 2,000 cached hard negatives per class. Runs in about 3
minutes on 2 CPU cores.

Run, with the trunk trained by the README's main command (bash scripts/ablation.sh):
  sppnet detect --config experiments/detection/synthetic.py:runs/scale_ablation/single --workdir runs/det_synthetic
Measured: 28.8 mAP ftfc7 bb [25.2, 33.7] (95 % bootstrap over the 100 test scenes; 29.1 without box
regression), 6 min 36 s on 2 CPU cores shared with two training jobs, with the 96-px single-size
trunk of the main command (15.9 % top-1 classification error; docs/results/detection_synthetic/).
With the previous 768-step trunk (61.8 % error) it was 12.5 [10.6, 17.2].
Without a trunk workdir the trunk is random and only the fc layers learn (1.5 mAP with 40/20 images).

Paper counterpart: Table 9/10, SPP-net 1-scale ZF-5 ftfc7 bb 58.0 mAP on VOC 2007 test (there is
no synthetic number in the paper; the synthetic mAP shows the system works end to end).
"""

from sppnet_jax.detection.config import detection_config


def get_config(trunk_workdir: str = ""):
  c = detection_config("synthetic", trunk_workdir=trunk_workdir, scales=(295,), num_train=200, num_test=100)
  c.test_split = "validation"
  c.trunk.width = 0.25
  c.trunk.fc_width = 512
  c.features.target_side = 96.0
  c.features.window_batch = 128
  c.proposals.max_side = 250
  c.proposals.max_per_image = 300
  c.finetune.steps = 1500
  c.finetune.lr = 0.01
  c.finetune.lr_boundaries = (1200,)
  c.finetune.log_every = 250
  c.finetune.dropout = 0.0  # the synthetic classification trunks train without dropout
  c.svm.retrain_every = 500
  c.svm.max_negatives = 2000  # the scenes' 512-d fc7 and 12 classes: at most 49 MB of cached negatives
  c.svm.read_images = 16  # about 5,000 windows of 3,200-d pool5 per read
  return c
