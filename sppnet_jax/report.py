"""``sppnet report``: the runs' results beside the paper's, and training-curve plots."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from sppnet_jax import configs
from sppnet_jax.metrics_io import read_metrics

VARIANT_NAMES = {"nospp": "no SPP", "single": "SPP single-size", "multi": "SPP multi-size", "random": "SPP random-size"}


def load_runs(workdirs: list[str]) -> list[dict]:
  runs = []
  for workdir in map(pathlib.Path, workdirs):
    config_path, eval_path = workdir / "config.json", workdir / "eval.json"
    if not config_path.exists():
      raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json).")
    config = json.loads(config_path.read_text())
    results = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    runs.append({"workdir": workdir, "config": config, "results": results, "metrics": read_metrics(workdir)})
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


def results_table(runs: list[dict]) -> str:
  """One row per (run, view): the run's top-1/top-5 error and the paper's for the same model, variant and view."""
  lines = ["| run | model | variant | levels | view | top-1 err % | top-5 err % | paper top-1 | paper top-5 |",
           "|---|---|---|---|---|---|---|---|---|"]
  for run in runs:
    c = run["config"]
    levels = "–" if not c["model"]["spp"] else "{" + ",".join(map(str, c["model"]["levels"])) + "}"
    for view, r in run["results"].items():
      p1, p5 = _paper(run, view)
      lines.append(f"| {run['workdir'].name} | {c['model']['name']} | {VARIANT_NAMES.get(c['variant'], c['variant'])} "
                   f"| {levels} | {view} | {_fmt(r['top1_error'])} | {_fmt(r['top5_error'])} | {_fmt(p1)} | {_fmt(p5)} |")
  return "\n".join(lines)


def plot_curves(runs: list[dict], path: pathlib.Path) -> None:
  """Training loss and validation top-1 error against epochs, one line per run."""
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
      ax_err.plot([m["epoch"] for m in val], [m["val/top1_error"] for m in val], marker="o", label=label)
  ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
  ax_err.set(xlabel="epoch", ylabel="top-1 error % (centre crop)", title="validation error")
  for ax in (ax_loss, ax_err):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
      "", results_table(runs), "", f"![training curves]({plot_path.name})", ""])
  out_path.write_text(text)
  return text
