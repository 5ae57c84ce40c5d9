"""The scale ablation on the built-in data: does SPP help, does multi-size training help?

Standard experiment (``experiments/synthetic/scale_<variant>.py``): no SPP, SPP single-size,
SPP multi-size and SPP whole-image ('full') training, all on the same objects-size band,
each evaluated on the centre crop and the full image of the same validation images and
swept over test sizes. Shift experiment (``experiments/synthetic/shift_<variant>.py``):
single- and multi-size SPP trained on a narrow band of object sizes and tested on the
standard (wide) band, the same validation images again.

Every error carries its 95 % interval, every comparison of two networks its paired test
(exact McNemar on the same images) and the interval of the difference, or, with
``seeds > 1``, mean ± std over seeds and a paired t-test across seeds. The verdict lines
are generated from those numbers. Runs live in ``<workdir>/<name>``; rerunning resumes
unfinished runs and re-reports finished ones.
"""

from __future__ import annotations

import json
import pathlib
import time

import ml_collections
import numpy as np

from sppnet_jax import configs, evaluate, report, stats, train

STANDARD = ("nospp", "single", "multi", "full")
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


def ablation_configs(seeds: int = 1, shift: bool = True) -> dict[str, ml_collections.ConfigDict]:
  """Every run of the ablation by name; seed k > 0 changes the initialisation and data order
  (``train.seed``), never the images, so every run is scored on the same validation set."""
  factories = [(variant, lambda v=variant: configs.synthetic(v)) for variant in STANDARD]
  if shift:
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
    crop_size = json.loads((workdir / a / "config.json").read_text())["data"]["crop_size"]
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
    config = json.loads((workdir / name / "config.json").read_text())
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
  return json.loads((run_dir / evaluate.EVAL_FILE).read_text())


def _main_table(runs: list[dict]) -> str:
  lines = ["| run | crop top-1 err % [95 % CI] | full top-1 err % [95 % CI] | crop top-5 | full top-5 | images "
           "| val error drop in the last third (flat if < CI half-width) |",
           "|---|---|---|---|---|---|---|"]
  for run in runs:
    r, conv = run["results"], report.convergence(run)
    flat = "–" if conv is None else (f"{conv['drop']:+.1f} (epochs {conv['from_epoch']:.0f}→{conv['to_epoch']:.0f}; "
                                     f"± {conv['half_width']:.1f}): {'flat' if conv['flat'] else 'NOT flat'}")
    name = run["workdir"].name + (" (full view warped)" if r["full"].get("warped") else "")
    lines.append(f"| {name} | {report.with_interval(r['crop'])} | {report.with_interval(r['full'])} "
                 f"| {report.with_interval(r['crop'], 'top5')} | {report.with_interval(r['full'], 'top5')} "
                 f"| {r['crop']['num_examples']} | {flat} |")
  return "\n".join(lines)


def _seed_table(workdir: pathlib.Path, names: list[str], seeds: int) -> str:
  lines = ["| variant | seeds | crop top-1 err % mean ± std | full top-1 err % mean ± std |", "|---|---|---|---|"]
  for name in names:
    errs = {v: np.array([_result(workdir / run_name(name, s))[v]["top1_error"] for s in range(seeds)])
            for v in ("crop", "full")}
    lines.append(f"| {name} | {seeds} | " + " | ".join(f"{e.mean():.2f} ± {e.std(ddof=1):.2f}" for e in errs.values())
                 + " |")
  return "\n".join(lines)


def write_ablation_report(workdir: str | pathlib.Path, seeds: int = 1, seconds: dict | None = None) -> str:
  """The ablation's Markdown report (``<workdir>/report.md``) with its figures beside it."""
  workdir = pathlib.Path(workdir)
  present = {p.name for p in workdir.iterdir() if (p / evaluate.EVAL_FILE).exists()}
  standard = [run_name(v, s) for s in range(seeds) for v in STANDARD if run_name(v, s) in present]
  shifted = [run_name(f"shift-{v}", s) for s in range(seeds) for v in SHIFT if run_name(f"shift-{v}", s) in present]
  standard_runs = report.load_runs([str(workdir / n) for n in standard])
  shift_runs = report.load_runs([str(workdir / n) for n in shifted])
  report.plot_curves(standard_runs + shift_runs, workdir / "curves.png")
  has_sweep = report.plot_sweep(standard_runs, workdir / "sweep.png", "standard: ")
  has_shift_sweep = report.plot_sweep(
      [r for r in standard_runs if r["workdir"].name in ("single", "multi")] + shift_runs, workdir / "shift_sweep.png",
      "shift: ")
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
      "## Standard: no SPP, SPP single-size, multi-size, whole-image training", "",
      _main_table(standard_runs), ""]
  if seeds > 1:
    complete = [v for v in STANDARD if all(run_name(v, s) in present for s in range(seeds))]
    text += [_seed_table(workdir, complete, seeds), ""]
  text += ["Verdicts (error of the first minus the second; negative: the first is better):", ""]
  text += _comparison_lines(workdir, STANDARD_COMPARISONS, seeds, present) + [""]
  text += ["Full view against crop view of the same network, on the same images (the paper's Table 3):", ""]
  text += _view_lines(workdir, standard) + [""]
  if has_sweep:
    text += ["### Test-size sweep", "", report.sweep_table(standard_runs), "", "![test-size sweep](sweep.png)", ""]
    if {"multi", "single"} <= present:
      text += ["Multi-size against single-size at each test size, paired on the sweep's images:", ""]
      text += _sweep_lines(workdir, "multi", "single") + [""]
  if shift_runs:
    text += [f"## Shift: trained on objects {tuple(shift_single.data.train_object_size)} of the short side, tested on "
             f"{tuple(shift_single.data.eval_object_size)}", "", _main_table(shift_runs), ""]
    text += _comparison_lines(workdir, SHIFT_COMPARISONS, seeds, present) + [""]
    if has_shift_sweep:
      text += [report.sweep_table(shift_runs), "", "![shift sweep](shift_sweep.png)", ""]
      if {"shift-multi", "shift-single"} <= present:
        text += _sweep_lines(workdir, "shift-multi", "shift-single") + [""]
  text += ["![training curves](curves.png)", ""]
  if seconds:
    text += ["Wall time of this invocation: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()), ""]
  out = "\n".join(text)
  (workdir / "report.md").write_text(out)
  return out


def run_scale_ablation(workdir: str | pathlib.Path, seeds: int = 1, shift: bool = True) -> str:
  """Trains (or resumes) every run of the ablation, then writes and returns the report."""
  if seeds < 1:
    raise ValueError(f"seeds must be at least 1; got {seeds}.")
  workdir = pathlib.Path(workdir)
  seconds = {}
  for name, config in ablation_configs(seeds, shift).items():
    start = time.perf_counter()
    result = train.train_and_evaluate(config, workdir / name)
    if result.get("preempted"):
      return (f"Stopped during run {name!r} (saved at step {result['global_step']}); rerun the same command to "
              "resume.\n")
    seconds[name] = time.perf_counter() - start
  return write_ablation_report(workdir, seeds, seconds) + f"\nReport: {workdir / 'report.md'}\n"
