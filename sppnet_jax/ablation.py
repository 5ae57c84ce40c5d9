"""The scale ablation on the built-in data: does SPP help, does multi-size training help?

The main job (``experiments/synthetic/scale_<variant>.py``): no SPP, SPP single-size and SPP
multi-size, on the same object-size band, each evaluated on the centre crop and the full image
of the same validation images (beside the same views of a fixed training subset: the fit
diagnostics) and swept over test sizes. ``extended=True`` adds SPP whole-image ('full')
training and the shift experiment (``experiments/synthetic/shift_<variant>.py``: single- and
multi-size SPP trained on a narrow band of object sizes and tested on the standard band, the
same validation images again).

Every run's results must be of one checkpoint: a run whose ``eval.json`` mixes checkpoints
(written before ``sppnet evaluate`` kept them apart) stops the report with an error naming it.

Every error carries its 95 % interval, every comparison of two networks its paired test
(exact McNemar on the same images) and the interval of the difference, or, with
``seeds > 1``, mean ± std over seeds and a paired t-test across seeds. The verdict lines
are generated from those numbers. Runs live in ``<workdir>/<name>``; rerunning resumes
unfinished runs and re-reports finished ones.
"""

from __future__ import annotations

import pathlib
import time

import jax
import ml_collections
import numpy as np

from sppnet_jax import configs, evaluate, publish, report, run_files, stats, train

MAIN = ("nospp", "single", "multi")
STANDARD = MAIN + ("full",)  # extended: whole-image training on the standard band, and the shift pair
SHIFT = ("single", "multi")
# (label, variant A, variant B, views): each line reports error(A) - error(B).
STANDARD_COMPARISONS = (
    ("SPP single − no SPP", "single", "nospp", ("crop", "full")),
    ("multi − single", "multi", "single", ("crop", "full")),
    ("full − single", "full", "single", ("crop", "full")),
    ("full − multi", "full", "multi", ("crop", "full")),
)
SHIFT_COMPARISONS = (
    ("shift: multi − single", "shift-multi", "shift-single", ("crop", "full")),
    ("narrow − wide training band, single-size", "shift-single", "single", ("crop", "full")),
)


def run_name(variant: str, seed: int) -> str:
  return variant if seed == 0 else f"{variant}-seed{seed}"


def ablation_configs(seeds: int = 1, extended: bool = False) -> dict[str, ml_collections.ConfigDict]:
  """Every run of the ablation by name; seed k > 0 changes the initialisation and data order
  (``train.seed``), never the images, so every run is scored on the same validation set."""
  factories = [(variant, lambda v=variant: configs.synthetic(v)) for variant in (STANDARD if extended else MAIN)]
  if extended:
    factories += [(f"shift-{variant}", lambda v=variant: configs.synthetic_shift(v)) for variant in SHIFT]
  runs = {}
  for seed in range(seeds):
    for name, make in factories:
      config = make()
      config.train.seed = seed
      runs[run_name(name, seed)] = config
  return runs


def _comparison_lines(workdir: pathlib.Path, comparisons, seeds: int, present: set[str]) -> list[str]:
  lines = []
  for label, a, b, views in comparisons:
    if not {run_name(a, s) for s in range(seeds)} | {run_name(b, s) for s in range(seeds)} <= present:
      continue
    crop_size = run_config(workdir / a)["data"]["crop_size"]
    for view in views:
      key = evaluate.record_key(view, crop_size)
      if seeds == 1:
        diff = evaluate.paired(workdir / a, workdir / b, key)
      else:
        errors = lambda v: [_result(workdir / run_name(v, s))[view]["top1_error"] for s in range(seeds)]
        diff = stats.seed_comparison(errors(a), errors(b))
      lines.append("- " + stats.verdict(f"{label}, {view} view, top-1", diff))
  return lines


def _view_lines(workdir: pathlib.Path, names: list[str]) -> list[str]:
  """Full view minus crop view of each SPP run, paired on the same images (the paper's Table 3)."""
  lines = []
  for name in names:
    config = run_config(workdir / name)
    if not config["model"]["spp"]:
      continue
    crop = config["data"]["crop_size"]
    diff = evaluate.paired(workdir / name, workdir / name, evaluate.record_key("full", crop),
                           key_b=evaluate.record_key("crop", crop))
    lines.append("- " + stats.verdict(f"full view − crop view, {name}, top-1", diff))
  return lines


def _sweep_lines(workdir: pathlib.Path, a: str, b: str) -> list[str]:
  """``a − b`` at every test size of both runs' sweeps, paired on the sweep's images."""
  result = _result(workdir / a).get("sweep", {})
  lines = []
  for view, by_size in result.items():
    for size in sorted(by_size, key=int):
      key = evaluate.record_key(view, int(size), sweep=True)
      lines.append("- " + stats.verdict(f"{a} − {b}, {view} view at {size}, top-1", evaluate.paired(
          workdir / a, workdir / b, key)))
  return lines


def _result(run_dir: pathlib.Path) -> dict:
  return evaluate.read_eval(run_dir)


def run_config(run_dir: pathlib.Path) -> dict:
  """A run's ``config.json``; an unreadable one is one error naming it and how to go on."""
  return run_files.read_json(run_dir / "config.json", "restore it, or delete the run's folder and run the ablation "
                             "again to retrain it")


def check_one_checkpoint(runs: list[dict]) -> None:
  """Refuses runs whose ``eval.json`` holds results of more than one checkpoint (the name of the
  file, the checkpoints and how to go on, in one line)."""
  for run in runs:
    mixed = evaluate.mixed_checkpoints(run["results"])
    if mixed:
      views = ",".join(evaluate.view_results(run["results"])) or "crop,full"
      raise ValueError(f"{run['workdir'] / evaluate.EVAL_FILE} holds results of different checkpoints ({mixed}), "
                       f"so its views cannot be compared; evaluate them again (sppnet evaluate --workdir "
                       f"{run['workdir']} --views {views}) and write the report again.")


def _main_table(runs: list[dict]) -> str:
  """Validation errors with intervals and the fit diagnostics: the fixed training subset's error
  under the same views and the gap val − train, per view."""
  lines = ["| run | crop top-1 err % [95 % CI] | full top-1 err % [95 % CI] | crop top-5 | full top-5 "
           "| train-subset top-1 err % crop / full | gap val − train crop / full |",
           "|---|---|---|---|---|---|---|"]
  for run in runs:
    r = run["results"]
    fit = r.get(evaluate.TRAIN_SUBSET, {})
    train_err = " / ".join(report.with_interval(fit[v]) if v in fit else "–" for v in ("crop", "full"))
    gap = " / ".join(f"{r[v]['top1_error'] - fit[v]['top1_error']:+.1f}" if v in fit else "–" for v in ("crop", "full"))
    name = run["workdir"].name + (" (full view warped)" if r["full"].get("warped") else "")
    lines.append(f"| {name} | {report.with_interval(r['crop'])} | {report.with_interval(r['full'])} "
                 f"| {report.with_interval(r['crop'], 'top5')} | {report.with_interval(r['full'], 'top5')} "
                 f"| {train_err} | {gap} |")
  return "\n".join(lines)


def _two_sizes_table(runs: list[dict]) -> str:
  """Training-subset and validation top-1 error of each multi-size run at both of its sizes."""
  lines = ["| run | input size | view | train-subset top-1 err % [95 % CI] | val top-1 err % [95 % CI] |",
           "|---|---|---|---|---|"]
  for run in runs:
    r = run["results"]
    if evaluate.SECOND_SIZE not in r:
      continue
    crop = run["config"]["data"]["crop_size"]
    second = r[evaluate.SECOND_SIZE]
    at_size = ((crop, r.get(evaluate.TRAIN_SUBSET, {}), evaluate.view_results(r)),
               (second["size"], second.get(evaluate.TRAIN_SUBSET, {}), second["validation"]))
    for size, fit, val in at_size:
      for view in val:
        train_err = report.with_interval(fit[view]) if view in fit else "–"
        lines.append(f"| {run['workdir'].name} | {size} | {view} | {train_err} | {report.with_interval(val[view])} |")
  return "\n".join(lines) if len(lines) > 2 else ""


def _seed_table(workdir: pathlib.Path, names: list[str], seeds: int) -> str:
  lines = ["| variant | seeds | crop top-1 err % mean ± std | full top-1 err % mean ± std |", "|---|---|---|---|"]
  for name in names:
    errs = {v: np.array([_result(workdir / run_name(name, s))[v]["top1_error"] for s in range(seeds)])
            for v in ("crop", "full")}
    lines.append(f"| {name} | {seeds} | " + " | ".join(f"{e.mean():.2f} ± {e.std(ddof=1):.2f}" for e in errs.values())
                 + " |")
  return "\n".join(lines)


def report_name(seeds: int) -> str:
  return "report.md" if seeds == 1 else f"report_seeds{seeds}.md"


def write_ablation_report(workdir: str | pathlib.Path, seeds: int = 1) -> str:
  """The ablation's Markdown report with its figures beside it: ``<workdir>/report.md``, or with
  several seeds ``report_seeds<N>.md`` (its figures suffixed alike), so both reports coexist."""
  name = report_name(seeds)
  suffix = name[len("report"):-len(".md")]
  workdir = pathlib.Path(workdir)
  present = {p.name for p in workdir.iterdir() if (p / evaluate.EVAL_FILE).exists()}
  standard = [run_name(v, s) for s in range(seeds) for v in STANDARD if run_name(v, s) in present]
  shifted = [run_name(f"shift-{v}", s) for s in range(seeds) for v in SHIFT if run_name(f"shift-{v}", s) in present]
  standard_runs = report.load_runs([str(workdir / n) for n in standard])
  shift_runs = report.load_runs([str(workdir / n) for n in shifted])
  check_one_checkpoint(standard_runs + shift_runs)
  report.plot_curves(standard_runs + shift_runs, workdir / f"curves{suffix}.png")
  has_sweep = report.plot_sweep(standard_runs, workdir / f"sweep{suffix}.png", "standard: ")
  shift_pair = [r for r in standard_runs if r["workdir"].name in ("single", "multi")] + shift_runs
  has_shift_sweep = bool(shift_runs) and report.plot_sweep(shift_pair, workdir / f"shift_sweep{suffix}.png", "shift: ")
  single = configs.synthetic("single")
  shift_single = configs.synthetic_shift("single")
  text = [
      "# Scale ablation on the built-in shapes", "",
      f"Slim ZF-5 networks (crop {single.data.crop_size}, second size {single.data.second_size}), "
      f"{single.data.num_train} training images, validation on {single.data.num_eval} images "
      f"(objects {tuple(single.data.eval_object_size)} of the short side); the sweep uses the first "
      f"{single.eval.sweep_examples}. Intervals are 95 % (Wilson for errors; for differences the paired Wald "
      "interval with an exact McNemar test, or a t interval across seeds). Chance is "
      f"{100 * (1 - 1 / 12):.1f} % top-1.", "",
      "## Standard band: " + ", ".join(dict.fromkeys(report.VARIANT_NAMES.get(r["config"]["variant"], "?")
                                                    for r in standard_runs)), "",
      _main_table(standard_runs), "",
      "Train-subset: a fixed subset of the training images under the same view, without augmentation. Whether the "
      "budget has converged is not read off these curves (the rate drops late in the run): `sppnet budget-curve` "
      "trains single- and multi-size at multiples of the budget.", ""]
  two_sizes = _two_sizes_table(standard_runs + shift_runs)
  if two_sizes:
    text += ["Multi-size networks at both of their training sizes (the second size is the crop resized, as in "
             "training):", "", two_sizes, ""]
  if seeds > 1:
    complete = [v for v in STANDARD if all(run_name(v, s) in present for s in range(seeds))]
    text += [_seed_table(workdir, complete, seeds), ""]
  text += ["Verdicts (error of the first minus the second; negative: the first is better):", ""]
  text += _comparison_lines(workdir, STANDARD_COMPARISONS, seeds, present) + [""]
  text += ["Full view against crop view of the same network, on the same images (the paper's Table 3):", ""]
  text += _view_lines(workdir, standard) + [""]
  if has_sweep:
    text += ["### Test-size sweep", "", report.sweep_table(standard_runs), "", f"![test-size sweep](sweep{suffix}.png)", ""]
    if {"multi", "single"} <= present:
      text += ["Multi-size against single-size at each test size, paired on the sweep's images:", ""]
      text += _sweep_lines(workdir, "multi", "single") + [""]
  if shift_runs:
    text += [f"## Shift: trained on objects {tuple(shift_single.data.train_object_size)} of the short side, tested on "
             f"{tuple(shift_single.data.eval_object_size)}", "", _main_table(shift_runs), ""]
    text += _comparison_lines(workdir, SHIFT_COMPARISONS, seeds, present) + [""]
    if has_shift_sweep:
      text += [report.sweep_table(shift_runs), "", f"![shift sweep](shift_sweep{suffix}.png)", ""]
      if {"shift-multi", "shift-single"} <= present:
        text += _sweep_lines(workdir, "shift-multi", "shift-single") + [""]
  text += [f"![training curves](curves{suffix}.png)", ""]
  times = publish.wall_time_lines(workdir, "sppnet ablation")
  if times:
    text += ["Wall time of the invocations that trained and evaluated these runs (a finished run is reused, so "
             "it counts about 0 s in a later invocation):", ""] + times + [""]
  out = "\n".join(text)
  (workdir / name).write_text(out)
  return out


def run_scale_ablation(workdir: str | pathlib.Path, seeds: int = 1, extended: bool = False) -> str:
  """Trains (or resumes) every run of the ablation, then writes and returns the report."""
  if seeds < 1:
    raise ValueError(f"seeds must be at least 1; got {seeds}.")
  workdir = pathlib.Path(workdir)
  compilation_cache(workdir)
  seconds = {}
  for name, config in ablation_configs(seeds, extended).items():
    start = time.perf_counter()
    result = train.train_unless_finished(config, workdir / name)
    if result.get("preempted"):
      return (f"Stopped during run {name!r} (saved at step {result['global_step']}); rerun the same command to "
              "resume.\n")
    seconds[name] = time.perf_counter() - start
  publish.record_wall_time(workdir, f"sppnet ablation --seeds {seeds}" + (" --extended" if extended else ""), seconds)
  text = write_ablation_report(workdir, seeds)
  return text + f"\nReport: {workdir / report_name(seeds)}\n"


def compilation_cache(workdir: pathlib.Path) -> None:
  """Keeps compiled executables in ``<workdir>/compile_cache``: the ablation's networks share
  their shapes, so each evaluation shape compiles once for all of them (and for a rerun)."""
  jax.config.update("jax_compilation_cache_dir", str(workdir / "compile_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
