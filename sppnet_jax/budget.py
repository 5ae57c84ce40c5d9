"""The budget curve: multi-size against single-size training at several multiples of the
ablation's training budget, paired on the same validation images.

At factor ``f`` both networks train ``f`` times the epochs of the built-in configs with the
learning-rate drops at the same fractions of the run (epochs scaled by ``f``), and nothing else
changes. The curve asks whether a multi − single gap closes, holds or flips as the networks fit
their task. Factor 1 is the ablation's own ``single`` and ``multi`` runs (the same workdir, so
``sppnet ablation`` and this command share them); factor ``f > 1`` lives in
``<workdir>/budget-x<f>/``. The report (``<workdir>/budget_curve.md``, ``budget_curve.png``) has
per factor the steps, each network's training-subset and validation error, and the paired
difference with its 95 % interval and exact McNemar test.
"""

from __future__ import annotations

import pathlib
import time

import ml_collections

from sppnet_jax import ablation, configs, evaluate, publish, report, stats, train
from sppnet_jax.metrics_io import read_metrics

VARIANTS = ("single", "multi")
VIEWS = ("crop", "full")


def scaled(config: ml_collections.ConfigDict, factor: int) -> ml_collections.ConfigDict:
  """``config`` with ``factor`` times the epochs; the drops keep their fractions of the run and
  the validation curve keeps its number of points."""
  if int(factor) != factor or factor < 1:
    raise ValueError(f"a budget factor must be a whole number >= 1; got {factor!r}.")
  config = ml_collections.ConfigDict(config.to_dict())
  t = config.train
  t.num_epochs = int(t.num_epochs * factor)
  t.lr_drop_epochs = tuple(int(e * factor) for e in t.lr_drop_epochs)
  t.eval_every_epochs = int(t.eval_every_epochs * factor)
  return config


def run_dir(workdir: pathlib.Path, factor: int, variant: str) -> pathlib.Path:
  return workdir / variant if factor == 1 else workdir / f"budget-x{factor}" / variant


def run_budget_curve(workdir: str | pathlib.Path, factors=(1, 2, 4), make_config=configs.synthetic) -> str:
  """Trains (or resumes) single- and multi-size at every factor, then writes and returns the report."""
  factors = sorted({int(f) for f in factors})
  if not factors or factors[0] < 1:
    raise ValueError(f"--factors must be whole numbers >= 1, e.g. 1,2,4; got {factors}.")
  workdir = pathlib.Path(workdir)
  ablation.compilation_cache(workdir)
  seconds = {}
  for factor in factors:
    for variant in VARIANTS:
      start = time.perf_counter()
      result = train.train_unless_finished(scaled(make_config(variant), factor), run_dir(workdir, factor, variant))
      if result.get("preempted"):
        return (f"Stopped during {variant} at {factor}x (saved at step {result['global_step']}); rerun the same "
                "command to resume.\n")
      seconds[f"{variant} x{factor}"] = time.perf_counter() - start
  publish.record_wall_time(workdir, "sppnet budget-curve --factors " + ",".join(map(str, factors)), seconds)
  text = write_budget_report(workdir, factors)
  return text + f"\nReport: {workdir / 'budget_curve.md'}\n"


def _steps(run: pathlib.Path) -> int:
  return max(int(r["step"]) for r in read_metrics(run))


def curve_rows(workdir: pathlib.Path, factors) -> list[dict]:
  """One row per (factor, view): steps, both networks' errors and their paired difference."""
  rows = []
  for factor in factors:
    runs = {v: run_dir(workdir, factor, v) for v in VARIANTS}
    results = {v: evaluate.read_eval(d) for v, d in runs.items()}
    ablation.check_one_checkpoint([{"workdir": d, "results": results[v]} for v, d in runs.items()])
    crop = ablation.run_config(runs["single"])["data"]["crop_size"]
    steps = _steps(runs["single"])
    for view in VIEWS:
      if not all(view in r for r in results.values()):
        continue
      key = evaluate.record_key(view, crop)
      rows.append({
          "factor": factor, "steps": steps, "view": view,
          "val": {v: results[v][view] for v in VARIANTS},
          "train": {v: results[v].get(evaluate.TRAIN_SUBSET, {}).get(view) for v in VARIANTS},
          "diff": evaluate.paired(runs["multi"], runs["single"], key)})
  return rows


def _table(rows: list[dict]) -> str:
  lines = ["| budget | steps | view | single train err % | single val err % [95 % CI] | multi train err % "
           "| multi val err % [95 % CI] | multi − single (val) [95 % CI] | McNemar p |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    train_err = lambda v: report.with_interval(r["train"][v]) if r["train"][v] else "–"
    d = r["diff"]
    lines.append(f"| {r['factor']}× | {r['steps']} | {r['view']} | {train_err('single')} "
                 f"| {report.with_interval(r['val']['single'])} | {train_err('multi')} "
                 f"| {report.with_interval(r['val']['multi'])} | {stats.signed(d.difference, 2)} [{stats.signed(d.low)}, "
                 f"{stats.signed(d.high)}] "
                 f"| {stats.format_p(d.p_value)} |")
  return "\n".join(lines)


def plot_budget_curve(rows: list[dict], path: pathlib.Path) -> None:
  """Left: each network's validation error against steps (95 % intervals); right: multi − single."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, (ax_err, ax_diff) = plt.subplots(1, 2, figsize=(11, 4))
  for view, style in zip(VIEWS, ("-", "--")):
    mine = [r for r in rows if r["view"] == view]
    if not mine:
      continue
    steps = np.array([r["steps"] for r in mine])
    for variant in VARIANTS:
      err = np.array([r["val"][variant]["top1_error"] for r in mine])
      low = np.array([r["val"][variant]["top1_interval"][0] for r in mine])
      high = np.array([r["val"][variant]["top1_interval"][1] for r in mine])
      ax_err.errorbar(steps, err, yerr=[err - low, high - err], capsize=3, marker="o", linestyle=style,
                      label=f"{variant}, {view} view")
    diff = np.array([r["diff"].difference for r in mine])
    ax_diff.errorbar(steps, diff, yerr=[diff - np.array([r["diff"].low for r in mine]),
                                        np.array([r["diff"].high for r in mine]) - diff],
                     capsize=3, marker="o", linestyle=style, label=f"{view} view")
  ax_diff.axhline(0, color="grey", linewidth=0.8)
  ax_err.set(xscale="log", xlabel="training steps", ylabel="validation top-1 error %", title="error at each budget")
  ax_diff.set(xscale="log", xlabel="training steps", ylabel="points (negative: multi-size better)",
              title="multi − single, paired, 95 % CI")
  report.save_figure(fig, (ax_err, ax_diff), path)


def convergence_lines(rows: list[dict]) -> list[str]:
  """For each network and view, the change of its validation error from each budget to the next."""
  lines = []
  for variant in VARIANTS:
    for view in VIEWS:
      mine = sorted((r for r in rows if r["view"] == view), key=lambda r: r["factor"])
      for before, after in zip(mine, mine[1:]):
        low, high = before["val"][variant]["top1_interval"]
        change = after["val"][variant]["top1_error"] - before["val"][variant]["top1_error"]
        half = (high - low) / 2
        verdict = "converged with respect to budget" if abs(change) < half else "not converged with respect to budget"
        lines.append(f"- {variant}, {view} view, {before['factor']}× → {after['factor']}×: {stats.signed(change)} points "
                     f"(± {half:.1f} at {before['factor']}×): {verdict}")
  return lines


def write_budget_report(workdir: str | pathlib.Path, factors) -> str:
  workdir = pathlib.Path(workdir)
  rows = curve_rows(workdir, factors)
  plot_budget_curve(rows, workdir / "budget_curve.png")
  text = ["# Budget curve: multi-size against single-size as the budget grows", "",
          "Each budget multiplies the epochs of the built-in configs (the learning-rate drops keep their fractions "
          "of the run). Train err: the fixed training subset under the same view, no augmentation. Differences are "
          "paired on the same validation images (Wald interval, exact McNemar test); each budget is one seed.", "",
          _table(rows), "",
          "Verdicts:", ""]
  for r in rows:
    label = f"multi − single at {r['factor']}× ({r['steps']} steps), {r['view']} view, top-1"
    text.append("- " + stats.verdict(label, r["diff"]))
  text += ["", "Budget convergence (criterion: doubling the steps changes the validation error by less than its 95 % "
           "half-width at the smaller budget):", ""]
  text += convergence_lines(rows)
  text += ["", "![budget curve](budget_curve.png)", ""]
  times = publish.wall_time_lines(workdir, "sppnet budget-curve")
  if times:
    text += ["Wall time (a finished run is reused, so it counts about 0 s in a later invocation):", ""] + times + [""]
  out = "\n".join(text)
  (workdir / "budget_curve.md").write_text(out)
  return out
