"""The ``sppnet`` command: thin wrappers over the library's functions.

  sppnet train    --config experiments/X.py --workdir DIR [--config.field=value ...]
  sppnet evaluate --workdir DIR --views crop,full,ten,multiview
  sppnet report   DIR [DIR ...] --out report.md
  sppnet summary  --model zf5 --size 224 [--nospp]
  sppnet ablation --workdir DIR    (the scale ablation on the built-in data; prints the table)
  sppnet detect   --config experiments/detection/X.py[:TRUNK_WORKDIR] --workdir DIR
  sppnet detect   --workdir DIR --image PATH [--out detections.png]
  sppnet bench    [--out DIR] [--quick] [--[no]torch_compile]
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiments/*.py config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config, checkpoints, metrics).")
flags.DEFINE_list("views", None, "Test views for evaluate: crop, full, ten, multiview.")
flags.DEFINE_string("out", None, "Output path (report) or directory (bench).")
flags.DEFINE_string("model", "zf5", "Network for summary: zf5, convnet5, overfeat5, overfeat7.")
flags.DEFINE_integer("size", 224, "Input size for summary.")
flags.DEFINE_bool("nospp", False, "summary: the no-SPP baseline head.")
flags.DEFINE_bool("quick", False, "bench: smaller problem sizes.")
flags.DEFINE_bool("torch_compile", None, "bench: torch.compile the PyTorch peer's training step (default: on, "
                  "off with --quick).")
flags.DEFINE_string("image", None, "detect: an image file to run a trained detection workdir on.")

COMMANDS = ("train", "evaluate", "report", "summary", "ablation", "detect", "bench")


def _require(name: str) -> str:
  value = getattr(FLAGS, name)
  if value is None:
    raise app.UsageError(f"--{name} is required.")
  return value


def _train(args):
  from sppnet_jax import train
  if FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config experiments/synthetic/scale_single.py")
  print(json.dumps(train.train_and_evaluate(FLAGS.config, _require("workdir")), indent=2))


def _evaluate(args):
  from sppnet_jax import evaluate, train
  config, model, params, mean = train.load_run(_require("workdir"))
  views = FLAGS.views or list(config.eval.views)
  source = train.config_source(config.data, "eval")
  results = {v: evaluate.evaluate_params(model, params, source, view=v, config=config, mean=mean) for v in views}
  print(json.dumps(results, indent=2))


def _report(args):
  from sppnet_jax import report
  if not args:
    raise app.UsageError("give one or more run directories: sppnet report DIR [DIR ...] --out report.md")
  print(report.write_report(args, FLAGS.out or "report.md"))


def _summary(args):
  from sppnet_jax import models
  print(models.summary(models.create_model(FLAGS.model, spp=not FLAGS.nospp), FLAGS.size))


def _ablation(args):
  from sppnet_jax import ablation
  print(ablation.run_scale_ablation(FLAGS.workdir or "runs/scale_ablation"))


def _detect(args):
  from sppnet_jax.detection import pipeline
  workdir = _require("workdir")
  if FLAGS.image is not None:
    out = FLAGS.out or "detections.png"
    result = pipeline.detect_image(workdir, FLAGS.image, out)
    print(f"{len(result['scores'])} detections; drawn into {out}")
    return
  if FLAGS.config is None:
    raise app.UsageError("give --config experiments/detection/X.py to train, or --image PATH to detect.")
  print(json.dumps(pipeline.train_and_evaluate_detection(FLAGS.config, workdir), indent=2, default=str))


def _bench(args):
  from sppnet_jax.bench import suite
  print(suite.run_suite(FLAGS.out or "benchmarks/results", quick=FLAGS.quick, torch_compile=FLAGS.torch_compile))


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(__doc__)
    sys.exit(2 if len(argv) >= 2 and argv[1] not in ("-h", "--help") else 0)
  command = argv.pop(1)
  handler = {"train": _train, "evaluate": _evaluate, "report": _report, "summary": _summary,
             "ablation": _ablation, "detect": _detect, "bench": _bench}[command]
  logging.set_verbosity(logging.WARNING)
  app.run(lambda args: handler(args[1:]), argv=argv)


if __name__ == "__main__":
  main()
