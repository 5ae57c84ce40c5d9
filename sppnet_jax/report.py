"""``sppnet report``: the runs' results beside the paper's, and training-curve plots.

Each row names the checkpoint step its result was computed from. A run whose ``eval.json``
holds results of more than one checkpoint (written before ``sppnet evaluate`` kept them apart)
has those rows marked "mixed" and a warning under the table: its rows compare different networks.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from sppnet_jax import configs, evaluate, run_files
from sppnet_jax.metrics_io import read_metrics

VARIANT_NAMES = {"nospp": "no SPP", "single": "SPP single-size", "multi": "SPP multi-size", "random": "SPP random-size",
                 "full": "SPP whole-image"}


def load_runs(workdirs: list[str]) -> list[dict]:
  """Each run's config, ``eval.json`` results and metrics; an unreadable file is an error naming it."""
  runs = []
  for workdir in map(pathlib.Path, workdirs):
    config_path = workdir / "config.json"
    if not config_path.exists():
      raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json).")
    config = run_files.read_json(config_path, "restore it from a copy of the run (sppnet publish keeps one)")
    runs.append({"workdir": workdir, "config": config, "results": evaluate.read_eval(workdir),
                 "metrics": read_metrics(workdir)})
  return runs


def _fmt(x) -> str:
  return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.2f}"


def _paper(run: dict, view: str) -> tuple:
  c = run["config"]
  paper = c.get("paper", {})
  if view in paper:
    return tuple(paper[view])
  key = (c["model"]["name"], c["variant"])
  if view == "ten":
    return configs.TABLE2.get(key, (None, None))
  if view in ("crop", "full") and key in configs.TABLE3:
    return (configs.TABLE3[key][0 if view == "crop" else 1], None)
  return (None, None)


def with_interval(result: dict, metric: str = "top1") -> str:
  """``34.2 [32.8, 35.6]``: an error with its 95 % interval, when the result has one."""
  value = _fmt(result.get(f"{metric}_error"))
  interval = result.get(f"{metric}_interval")
  return f"{value} [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else value


def _step(entry: dict) -> str:
  step = evaluate.entry_step(entry)
  return "–" if step is None else str(step)


def results_table(runs: list[dict]) -> str:
  """One row per (run, view): the checkpoint step scored, the run's top-1/top-5 error (95 %
  interval) and the paper's for the same model, variant and view. Rows of a run whose results
  are of several checkpoints say "mixed" beside the step."""
  lines = ["| run | model | variant | levels | view | step | top-1 err % [95 % CI] | top-5 err % [95 % CI] | images "
           "| paper top-1 | paper top-5 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for run in runs:
    c = run["config"]
    levels = "–" if not c["model"]["spp"] else "{" + ",".join(map(str, c["model"]["levels"])) + "}"
    mixed = " (mixed)" if evaluate.mixed_checkpoints(run["results"]) else ""
    for view, r in evaluate.view_results(run["results"]).items():
      p1, p5 = _paper(run, view)
      lines.append(f"| {run['workdir'].name} | {c['model']['name']} | {VARIANT_NAMES.get(c['variant'], c['variant'])} "
                   f"| {levels} | {view}{' (warped)' if r.get('warped') else ''} | {_step(r)}{mixed} "
                   f"| {with_interval(r, 'top1')} | {with_interval(r, 'top5')} | {r.get('num_examples', '–')} "
                   f"| {_fmt(p1)} | {_fmt(p5)} |")
  return "\n".join(lines)


def mixed_warnings(runs: list[dict]) -> list[str]:
  """One warning line per run whose ``eval.json`` holds results of several checkpoints."""
  lines = []
  for run in runs:
    mixed = evaluate.mixed_checkpoints(run["results"])
    if mixed:
      views = ",".join(evaluate.view_results(run["results"])) or "crop"
      lines.append(f"**Warning: {run['workdir'].name} mixes checkpoints** ({mixed}); its rows compare different "
                   f"networks. Evaluate them again: `sppnet evaluate --workdir {run['workdir']} --views {views}`.")
  return lines


def plot_curves(runs: list[dict], path: pathlib.Path) -> None:
  """Training loss, and top-1 error against epochs: validation (solid) and the fixed training
  subset (dashed, the same colour), one colour per run."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4))
  for run in runs:
    label = f"{run['workdir'].name} ({VARIANT_NAMES.get(run['config']['variant'], '')})"
    train = [m for m in run["metrics"] if "train/loss" in m]
    val = [m for m in run["metrics"] if "val/top1_error" in m]
    if train:
      ax_loss.plot([m["epoch"] for m in train], [m["train/loss"] for m in train], label=label)
    if val:
      line, = ax_err.plot([m["epoch"] for m in val], [m["val/top1_error"] for m in val], marker="o", label=label)
      fit = [m for m in val if "train_subset/top1_error" in m]
      if fit:
        ax_err.plot([m["epoch"] for m in fit], [m["train_subset/top1_error"] for m in fit], marker=".",
                    linestyle="--", color=line.get_color())
  ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
  ax_err.set(xlabel="epoch", ylabel="top-1 error % (centre crop)",
             title="validation (solid) and training-subset (dashed) error")
  save_figure(fig, (ax_loss, ax_err), path)


def save_figure(fig, axes, path: pathlib.Path, legend_size: int = 8) -> None:
  """Grid and legend on every panel, then the figure saved as a PNG and closed."""
  import matplotlib.pyplot as plt
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(workdirs: list[str], out: str) -> str:
  """Writes the Markdown report to ``out`` and the curves next to it (``<out stem>_curves.png``)."""
  runs = load_runs(workdirs)
  out_path = pathlib.Path(out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  plot_path = out_path.with_name(out_path.stem + "_curves.png")
  plot_curves(runs, plot_path)
  text = "\n".join([
      "# SPP-net runs", "",
      "Errors are on each run's evaluation split. Paper columns: ImageNet-2012 val (Table 2 for the 10-view `ten`, "
      "Table 3 for `crop`/`full`, Table 4 for `multiview`); on other data they are the reference point, not a target.",
      "", results_table(runs), "", *[line + "\n" for line in mixed_warnings(runs)],
      f"![training curves]({plot_path.name})", ""])
  out_path.write_text(text)
  return text


def sweep_table(runs: list[dict]) -> str:
  """Top-1 error [95 % interval] of every run at every test size of its sweep, per view."""
  sizes = sorted({int(size) for run in runs for by_size in run["results"].get("sweep", {}).values() for size in by_size})
  if not sizes:
    return ""
  lines = ["| run | view | " + " | ".join(f"{s}" for s in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
  for run in runs:
    for view, by_size in run["results"].get("sweep", {}).items():
      warped = any(r.get("warped") for r in by_size.values())
      cells = [with_interval(by_size[str(s)]) if str(s) in by_size else "–" for s in sizes]
      lines.append(f"| {run['workdir'].name} | {view}{' (warped)' if warped else ''} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_sweep(runs: list[dict], path: pathlib.Path, title: str = "") -> bool:
  """Top-1 error against test size with 95 % intervals, one curve per run, a panel per view.
  No-SPP runs (warped to their training size) are dashed. Returns False when no run has a sweep."""
  views = sorted({view for run in runs for view in run["results"].get("sweep", {})})
  if not views:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(views), figsize=(5.5 * len(views), 4.2), squeeze=False)
  for ax, view in zip(axes[0], views):
    for run in runs:
      by_size = run["results"].get("sweep", {}).get(view)
      if not by_size:
        continue
      sizes = sorted(by_size, key=int)
      err = np.array([by_size[s]["top1_error"] for s in sizes])
      low = np.array([by_size[s]["top1_interval"][0] for s in sizes])
      high = np.array([by_size[s]["top1_interval"][1] for s in sizes])
      warped = any(by_size[s].get("warped") for s in sizes)
      label = run["workdir"].name + (" (warped)" if warped else "")
      ax.errorbar([int(s) for s in sizes], err, yerr=[err - low, high - err], capsize=3, marker="o", markersize=3,
                  linestyle="--" if warped else "-", label=label)
    train_size = runs[0]["config"]["data"]["crop_size"]
    ax.axvline(train_size, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="test size (crop edge, px; the image scales with it)", ylabel="top-1 error %",
           title=f"{title}{view} view")
  save_figure(fig, axes[0], path, legend_size=7)
  return True
