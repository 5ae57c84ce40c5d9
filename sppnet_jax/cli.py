"""The ``sppnet`` command: thin wrappers over the library's functions.

  sppnet train      --config experiments/X.py --workdir DIR [--config.field=value ...] [--extend]
  sppnet evaluate   --workdir DIR --views crop,full,ten,multiview [--sweep] [--config.eval.FIELD=VALUE ...]
  sppnet report     DIR [DIR ...] --out report.md
  sppnet summary    --model zf5 --size 224 [--nospp]
  sppnet ablation   --workdir DIR [--seeds N] [--extended]   (the scale ablation on the built-in data)
  sppnet budget-curve --workdir DIR [--factors 1,2,4]   (multi- against single-size at several budgets)
  sppnet publish    --workdir DIR --out docs/results/NAME   (a workdir's reports and records, to commit)
  sppnet detect     --config experiments/detection/X.py[:TRUNK_WORKDIR] --workdir DIR [--start_over]
  sppnet detect     --workdir DIR --image PATH [--out detections.png] [--top_k 10] [--score_threshold S]
  sppnet transfer   --config experiments/transfer/X.py --workdir DIR   (Tables 6-7: SVMs on SPP features)
  sppnet bench      [--out DIR] [--quick] [--[no]torch_compile]
  sppnet bench-input [--out DIR] [--quick]   (input pipeline: images/s per core, efficiency)
  sppnet check-data --config experiments/X.py [--split train|eval|both] [--workers N]
  sppnet reproduce  --run docs/results/NAME/RUN --workdir DIR   (retrains a committed run and compares)

`sppnet COMMAND --help` lists a command's flags. Errors in what was asked for (a bad value, a
missing file, a broken config file, an undecodable image, a non-finite loss, a workdir in use
by another process, a full disk) print one line, `sppnet COMMAND: error: ...`, and exit with
status 2; `--traceback` (or SPPNET_TRACEBACK=1) shows the full traceback and the libraries'
own error logs.

train, evaluate, detect (training) and transfer hold their workdir's lock (`DIR/.lock`) while
they run: a second command in the same workdir is refused at once, naming the first.
"""

from __future__ import annotations

import ast
import errno
import json
import logging as std_logging
import os
import re
import sys
import traceback
from typing import Callable, NamedTuple, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from sppnet_jax import runlock

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "An experiments/*.py config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (config, checkpoints, metrics).")
flags.DEFINE_bool("extend", False, "train: let a run in --workdir continue under a longer schedule "
                  "(train.num_epochs, train.lr_drop_epochs, train.max_lr_drops may grow).")
flags.DEFINE_list("views", None, "Test views for evaluate: crop, full, ten, multiview (default: the run's "
                  "eval.views).")
flags.DEFINE_bool("sweep", False, "evaluate: also run the test-size sweep (eval.sweep_views at eval.sweep_sizes).")
flags.DEFINE_integer("seeds", 1, "ablation: training seeds per variant (more than 1: mean ± std and a t-test "
                     "across seeds).", lower_bound=1)
flags.DEFINE_bool("extended", False, "ablation: also train whole-image ('full') SPP and the scale-shift pair "
                  "(narrow training band).")
flags.DEFINE_list("factors", ["1", "2", "4"], "budget-curve: multiples of the ablation's training budget.")
flags.DEFINE_string("out", None, "Output path (report: report.md; detect --image: detections.png) or directory "
                    "(bench: benchmarks/results).")
flags.DEFINE_string("model", "zf5", "Network for summary: zf5, convnet5, overfeat5, overfeat7.")
flags.DEFINE_integer("size", 224, "Input size for summary.")
flags.DEFINE_bool("nospp", False, "summary: the no-SPP baseline head.")
flags.DEFINE_bool("quick", False, "bench: smaller problem sizes.")
flags.DEFINE_bool("torch_compile", None, "bench: torch.compile the PyTorch peer's training step (default: on, "
                  "off with --quick).")
flags.DEFINE_string("image", None, "detect: an image file to run a trained detection workdir on.")
flags.DEFINE_integer("top_k", 10, "detect --image: draw the k best-scoring detections.", lower_bound=0)
flags.DEFINE_float("score_threshold", None, "detect --image: draw only detections scoring above this "
                   "(default: none, the top_k best are drawn whatever their score).")
flags.DEFINE_enum("split", "both", ["train", "eval", "both"], "check-data: which split of the config's dataset "
                  "to scan.")
flags.DEFINE_integer("workers", None, "check-data: threads decoding in parallel (default: the number of CPUs).",
                     lower_bound=1)
flags.DEFINE_bool("start_over", False, "detect: in a --workdir whose trained outputs depend on a changed config "
                  "field, redo just those outputs (the cached features and the untouched outputs are kept).")
flags.DEFINE_string("run", None, "reproduce: a run folder written by 'sppnet publish' (config.json, eval.json, "
                    "predictions.npz).")
flags.DEFINE_bool("traceback", False, "Show the full traceback of an error instead of one line (also "
                  "SPPNET_TRACEBACK=1).")

# Errors raised on purpose, for something wrong in what was asked: printed as one line, exit status 2.
# (CorruptImageError and CorruptCheckpointError are ValueErrors; train.NonFiniteError is a FloatingPointError.)
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, app.UsageError, flags.Error,
                   runlock.WorkdirBusyError)
ERROR_STATUS = 2


def _require(name: str, default: str | None = None) -> str:
  """The value of flag ``--name`` (``default`` when it is not given); an empty value is refused, and
  ``--workdir`` must not name a file."""
  value = getattr(FLAGS, name)
  if value is None:
    if default is None:
      raise app.UsageError(f"--{name} is required.")
    value = default
  if not value.strip():
    raise app.UsageError(f"--{name} is empty; give a path, e.g. --{name}=runs/my_run.")
  if name == "workdir" and os.path.exists(value) and not os.path.isdir(value):
    raise app.UsageError(f"--workdir={value} is a file, not a directory; give a new or existing run directory.")
  return value


def _config(example: str):
  if FLAGS.config is None:
    raise app.UsageError(f"--config is required, e.g. --config {example}")
  return FLAGS.config


def _train(args) -> None:
  from sppnet_jax import train
  config = _config("experiments/synthetic/scale_single.py")
  workdir = _require("workdir")
  kwargs = {"extend": True} if FLAGS.extend else {}
  print(json.dumps(train.train_and_evaluate(config, workdir, **kwargs), indent=2))


def _apply_eval_overrides(config, overrides: Sequence[str]) -> None:
  """Sets ``--config.eval.FIELD=VALUE`` items on a run's config (only ``eval.*`` may change
  after training); values are Python literals, anything else is taken as a string."""
  from sppnet_jax import config_checks
  for item in overrides:
    name, sep, text = item[len("--config."):].partition("=")
    section, _, field = name.partition(".")
    if not sep or section != "eval" or not field or "." in field:
      raise app.UsageError(f"{item}: evaluate takes only --config.eval.FIELD=VALUE (the model, data and training "
                           "of a trained run are fixed).")
    if field not in config.eval:
      raise app.UsageError(f"{item}: the config has no field eval.{field}; it has {', '.join(sorted(config.eval))}.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    if isinstance(value, list):
      value = tuple(value)
    config.eval[field] = value
  config_checks.validate_config(config)


def _evaluate(args) -> None:
  workdir = _require("workdir")
  with runlock.hold(workdir):
    _evaluate_locked(workdir, args)


def _evaluate_locked(workdir: str, args) -> None:
  from sppnet_jax import evaluate, workdir as workdir_lib
  from sppnet_jax.data import sources
  run = workdir_lib.load_trained_run(workdir)
  config = run.config
  _apply_eval_overrides(config, args)
  names = sources.load_class_names(workdir)
  by_name = {"class_names": names} if names else {}
  source = workdir_lib.config_source(config.data, "eval", **by_name)
  train_source = workdir_lib.config_source(config.data, "train", **by_name)
  results = evaluate.evaluate_run(run.model, run.params, source, config=config, mean=run.mean, workdir=workdir,
                                  view_names=FLAGS.views, sweep=FLAGS.sweep, train_source=train_source, step=run.step)
  print(json.dumps(results, indent=2))


def _report(args) -> None:
  from sppnet_jax import report
  if not args:
    raise app.UsageError("give one or more run directories: sppnet report DIR [DIR ...] --out report.md")
  print(report.write_report(args, FLAGS.out or "report.md"))


def _summary(args) -> None:
  from sppnet_jax import models
  print(models.summary(models.create_model(FLAGS.model, spp=not FLAGS.nospp), FLAGS.size))


def _ablation(args) -> None:
  from sppnet_jax import ablation
  print(ablation.run_scale_ablation(_require("workdir", "runs/scale_ablation"), seeds=FLAGS.seeds,
                                    extended=FLAGS.extended))


def _publish(args) -> None:
  from sppnet_jax import publish
  print(f"Published to {publish.publish(_require('workdir'), _require('out'))}")


def _budget_curve(args) -> None:
  from sppnet_jax import budget
  try:
    factors = [int(f) for f in FLAGS.factors]
  except ValueError:
    raise app.UsageError(f"--factors takes whole numbers separated by commas, e.g. 1,2,4; got {FLAGS.factors}.")
  print(budget.run_budget_curve(_require("workdir", "runs/scale_ablation"), factors))


def _detect(args) -> None:
  from sppnet_jax.detection import pipeline
  workdir = _require("workdir")
  if FLAGS.image is not None:
    out = FLAGS.out or "detections.png"
    result = pipeline.detect_image(workdir, FLAGS.image, out, score_threshold=FLAGS.score_threshold,
                                   top_k=FLAGS.top_k)
    print(result["summary"])
    return
  if FLAGS.config is None:
    raise app.UsageError("give --config experiments/detection/X.py to train, or --image PATH to detect.")
  with runlock.hold(workdir):
    result = pipeline.train_and_evaluate_detection(FLAGS.config, workdir, start_over=FLAGS.start_over)
    print(json.dumps(result, indent=2, default=str))


def _transfer(args) -> None:
  from sppnet_jax.transfer import run
  workdir = _require("workdir")
  config = _config("experiments/transfer/synthetic_scenes.py")
  with runlock.hold(workdir):
    result = run.transfer_and_evaluate(config, workdir)
  if result.get("preempted"):
    print(f"stopped while training trunk {result['trunk']!r} (saved); run the same command again to resume.")
    return
  print(open(os.path.join(workdir, run.REPORT_FILE)).read())


def _bench(args) -> None:
  from sppnet_jax.bench import suite
  print(suite.run_suite(FLAGS.out or "benchmarks/results", quick=FLAGS.quick, torch_compile=FLAGS.torch_compile))


def _bench_input(args) -> None:
  from sppnet_jax.bench import input as bench_input
  print(json.dumps(bench_input.run(FLAGS.out or "benchmarks/input", quick=FLAGS.quick), indent=2))


def _check_data(args) -> int:
  from sppnet_jax import config_checks
  from sppnet_jax.data import check
  config = _config("experiments/synthetic/scale_single.py")
  config_checks.validate_config(config)
  results = check.check_data(config, FLAGS.split, workers=FLAGS.workers)
  print(check.format_checks(results))
  return 1 if any(r.bad for r in results) else 0


def _reproduce(args) -> int:
  from sppnet_jax import reproduce
  reproduced, lines = reproduce.reproduce(_require("run"), _require("workdir"))
  print("\n".join(lines))
  print("reproduced" if reproduced else "NOT reproduced")
  return 0 if reproduced else 1


class Command(NamedTuple):
  handler: Callable[[list[str]], int | None]
  usage: str
  about: str
  flags: tuple[str, ...]


COMMANDS: dict[str, Command] = {
    "train": Command(_train, "sppnet train --config experiments/X.py --workdir DIR [--config.FIELD=VALUE ...] "
                     "[--extend]", "Trains (or resumes) a classification run in DIR, then evaluates it.",
                     ("config", "workdir", "extend")),
    "evaluate": Command(_evaluate, "sppnet evaluate --workdir DIR [--views crop,full,ten,multiview] [--sweep] "
                        "[--config.eval.FIELD=VALUE ...]",
                        "Evaluates the newest intact checkpoint of a training run under the given test views and "
                        "merges the results into DIR/eval.json, which holds one checkpoint's results only (those "
                        "of another step are moved to eval.step<N>.json).", ("workdir", "views", "sweep")),
    "report": Command(_report, "sppnet report DIR [DIR ...] [--out report.md]",
                      "Writes a report (tables beside the paper's numbers, training curves) of runs.", ("out",)),
    "summary": Command(_summary, "sppnet summary [--model zf5] [--size 224] [--nospp]",
                       "Prints a network's layers with their output shapes and parameter counts.",
                       ("model", "size", "nospp")),
    "ablation": Command(_ablation, "sppnet ablation [--workdir runs/scale_ablation] [--seeds N] [--extended]",
                        "Runs the scale ablation on the built-in data and prints its report.",
                        ("workdir", "seeds", "extended")),
    "budget-curve": Command(_budget_curve, "sppnet budget-curve [--workdir runs/scale_ablation] [--factors 1,2,4]",
                            "Trains single- and multi-size at multiples of the ablation's budget and reports "
                            "multi − single at each (paired, 95 % intervals).", ("workdir", "factors")),
    "publish": Command(_publish, "sppnet publish --workdir runs/scale_ablation --out docs/results/scale_ablation",
                       "Copies a workdir's reports, figures and run records (config, eval, metrics, predictions) into a folder to "
                       "commit, with provenance.json (commit, wall times, environment).", ("workdir", "out")),
    "detect": Command(_detect, "sppnet detect --config experiments/detection/X.py[:TRUNK_WORKDIR] --workdir DIR "
                      "[--start_over]\n"
                      "       sppnet detect --workdir DIR --image PATH [--out detections.png] [--top_k 10] "
                      "[--score_threshold S]",
                      "Trains and evaluates the detection system in DIR, or runs a trained one on one image.",
                      ("config", "workdir", "start_over", "image", "out", "top_k", "score_threshold")),
    "transfer": Command(_transfer, "sppnet transfer --config experiments/transfer/X.py --workdir DIR",
                        "Transfer classification (paper Tables 6-7): features of trained trunks, linear SVMs, "
                        "the report beside the paper's figures.", ("config", "workdir")),
    "bench": Command(_bench, "sppnet bench [--out DIR] [--quick] [--[no]torch_compile]",
                     "Runs the benchmark suite and writes its results.", ("out", "quick", "torch_compile")),
    "bench-input": Command(_bench_input, "sppnet bench-input [--out DIR] [--quick]",
                           "Input pipeline on photo-like JPEGs: images/s per core before and after on-device "
                           "augmentation with 0, 1 and 2 workers; pipeline efficiency of the slim training.",
                           ("out", "quick")),
    "check-data": Command(_check_data, "sppnet check-data --config experiments/X.py [--split train|eval|both] "
                          "[--workers N]",
                          "Decodes every example of a config's dataset in parallel and lists those that fail "
                          "(exit status 1 when any does).", ("config", "split", "workers")),
    "reproduce": Command(_reproduce, "sppnet reproduce --run docs/results/NAME/RUN --workdir DIR",
                         "Trains a committed run's config again in DIR and compares every per-example record: "
                         "identical on the machine kind that made it (exit status 1 if not), elsewhere each "
                         "difference with its 95 % interval.", ("run", "workdir")),
}

HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def command_help(name: str) -> str:
  """The usage line, description and flags of one command."""
  command = COMMANDS[name]
  lines = [f"usage: {command.usage}", "", command.about, "", "flags:"]
  for flag in (*command.flags, "traceback"):
    f = FLAGS[flag]
    shown = str(f.default).lower() if isinstance(f.default, bool) else f.default
    default = "" if f.default is None or flag == "config" else f" (default: {shown})"
    lines.append(f"  --{flag}: {f.help}{default}")
  if "config" in command.flags:
    lines.append("  --config.FIELD=VALUE: override one field of the config, e.g. --config.train.num_epochs=4")
  return "\n".join(lines)


def _config_path(argv: Sequence[str]) -> str | None:
  """The file part of ``--config=PATH[:ARGS]`` (or ``--config PATH``) in ``argv``."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg[len("--config="):]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    return value.split(":", 1)[0]
  return None


def _same_file(a: str | None, b: str) -> bool:
  return bool(a) and os.path.realpath(a) == os.path.realpath(b)


def _error_chain(error: BaseException) -> list[BaseException]:
  """``error`` and the errors it was raised from or while handling, outermost first."""
  chain, seen = [], error
  while seen is not None and seen not in chain:
    chain.append(seen)
    seen = seen.__cause__ or seen.__context__
  return chain


def _config_file_problem(path: str, error: BaseException) -> str | None:
  """One line for an error that loading config file ``path`` raised (a syntax error, no
  ``get_config``, an exception raised by the file), or None when the error came from elsewhere."""
  for e in _error_chain(error):
    if isinstance(e, SyntaxError) and _same_file(e.filename, path):
      return f"{path}, line {e.lineno}: {e.msg} (a syntax error); fix the config file."
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if _same_file(f.filename, path)]
    if isinstance(e, AttributeError) and e.name == "get_config" and not lines:
      return (f"{path} defines no get_config(); a config file's get_config() returns the experiment's "
              "ml_collections.ConfigDict (see experiments/).")
    if lines:
      text = " ".join(str(e).split())
      return (f"{path}, line {lines[-1]}: loading the config raised {type(e).__name__}"
              f"{': ' + text if text else ''}; fix the config file.")
  return None


def _override_hint(error: AttributeError, argv: Sequence[str]) -> str | None:
  """ml_collections' "did you mean" for a misspelt ``--config.FIELD`` as plain text, or None."""
  text = str(error)
  for _ in range(3):  # the message comes quoted (and escaped) once or twice
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      break
    if not isinstance(value, str):
      break
    text = value
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return None
  key = lines[0].strip("'\"")
  names = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  flag = next((n for n in names if key in n[len("--config."):].split(".")), None)
  if flag is None:
    return None
  hint = " ".join(lines[1:])
  return f"{flag}: the config has no field {key!r}." + (f" {hint}" if hint else "")


def _show_traceback(argv: Sequence[str]) -> bool:
  if os.environ.get("SPPNET_TRACEBACK", "") not in ("", "0"):
    return True
  return any(a in ("--traceback", "--traceback=true", "--traceback=True", "--traceback=1") for a in argv)


def _fail(command: str, message: str) -> None:
  message = " ".join(str(message).split()) or "(no message)"
  print(f"sppnet {command}: error: {message}", file=sys.stderr)
  sys.exit(ERROR_STATUS)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "os_error_code='28'", "os_error_code='122'")


def disk_full_message(error: BaseException) -> str | None:
  """One line for an error caused by a full disk (an ``OSError`` of ENOSPC or EDQUOT, or the
  same failure reported by orbax or tensorstore as text), naming what was being written; else None."""
  for e in _error_chain(error):
    text = str(e)
    if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
      target = e.filename
    elif any(t in text for t in _DISK_FULL_TEXT):
      quoted = re.findall(r'"(/[^"]+)"', text)
      target = quoted[0] if quoted else None
    else:
      continue
    if target and ".orbax-checkpoint-tmp" in str(target):  # a checkpoint step being saved
      target = f"checkpoint {str(target).split('.orbax-checkpoint-tmp')[0]}"
    where = f" while writing {target}" if target else ""
    return (f"no space left on the device{where}; free some space (or move the workdir to a disk with room) and "
            "run the same command again: what was saved is kept, and training resumes from its last checkpoint.")
  return None


class _LibraryErrorLogs(std_logging.Filter):
  """Drops the error logs (with their tracebacks) that orbax's threads and asyncio print on the
  way to an error the command reports in one line; ``active`` is off with --traceback."""

  active = True

  def filter(self, record: std_logging.LogRecord) -> bool:
    library = record.name == "asyncio" or f"{os.sep}orbax{os.sep}" in (record.pathname or "")
    return not (self.active and library and record.levelno >= std_logging.ERROR)


_LIBRARY_ERROR_LOGS = _LibraryErrorLogs()


# The commands that take positional arguments (report: run directories).
POSITIONAL = ("report",)


def _check_overrides(argv: Sequence[str]) -> None:
  """Refuses a ``--config.FIELD`` given twice (absl would append a tuple's items, so
  ``--config.model.levels`` given twice would train a pyramid of both)."""
  names = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise app.UsageError(f"{repeated[0]} is given {names.count(repeated[0])} times; give each override once.")


def _check_positional(command: str, args: Sequence[str]) -> None:
  """Refuses stray arguments, above all an override written without its leading ``--``."""
  if command in POSITIONAL or not args:
    return
  stray = args[0]
  if stray.startswith("config.") and "=" in stray:
    raise app.UsageError(f"{stray}: an override needs its leading dashes: --{stray}")
  raise app.UsageError(f"unexpected argument {stray!r}; sppnet {command} --help lists its flags.")


def _parse(command: str, argv: list[str]) -> list[str]:
  """Parses the flags (``argv[0]`` is the program); returns the positional arguments."""
  path = _config_path(argv[1:])
  if path is not None and not os.path.isfile(path):
    raise FileNotFoundError(f"config file not found: {path}")
  _check_overrides(argv[1:])
  try:
    args = FLAGS(argv)[1:]
  except Exception as e:
    problem = _config_file_problem(path, e) if path is not None else None
    if problem is not None:
      raise app.UsageError(problem) from e
    hint = _override_hint(e, argv) if isinstance(e, AttributeError) else None  # a --config.FIELD naming no field
    if hint is None:
      raise
    raise app.UsageError(hint) from e
  if path is not None and not isinstance(FLAGS.config, ml_collections.ConfigDict):
    raise app.UsageError(f"{path}: get_config() returned {type(FLAGS.config).__name__}, not an "
                         "ml_collections.ConfigDict; return the experiment's config.")
  _check_positional(command, args)
  return args


def main(argv: Sequence[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in HELP_ARGS:
    print(__doc__)
    sys.exit(0)
  command = argv.pop(1)
  if command not in COMMANDS:
    print(f"sppnet: error: unknown command {command!r}; one of {', '.join(COMMANDS)} (sppnet --help lists them).",
          file=sys.stderr)
    sys.exit(ERROR_STATUS)
  if any(a in HELP_ARGS for a in argv[1:]):
    print(command_help(command))
    sys.exit(0)
  show_traceback = _show_traceback(argv)
  # evaluate takes --config.eval.FIELD=VALUE with no --config file: they reach it as arguments.
  overrides = [a for a in argv[1:] if a.startswith("--config.")] if command == "evaluate" else []
  argv = [a for a in argv if a not in overrides]
  try:
    _check_overrides(overrides)
    args = _parse(command, argv) + overrides
    logging.use_absl_handler()
    logging.set_verbosity(logging.WARNING)
    _LIBRARY_ERROR_LOGS.active = not show_traceback
    logging.get_absl_handler().addFilter(_LIBRARY_ERROR_LOGS)
    status = COMMANDS[command].handler(args)
  except Exception as e:
    message = disk_full_message(e)
    if message is None and not isinstance(e, EXPECTED_ERRORS):
      raise
    if show_traceback:
      traceback.print_exc()
      sys.exit(ERROR_STATUS)
    _fail(command, message or str(e))
  sys.exit(status or 0)


if __name__ == "__main__":
  main()
