"""``sppnet publish``: copies what a report cites into a folder meant to be committed.

From a workdir of runs (the ablation's, the budget curve's) it copies the reports (``*.md``),
their figures (``*.png``) and, for every run below it, the small records a reader needs to check
a figure: ``config.json``, ``eval.json``, ``metrics.jsonl`` and ``predictions.npz`` (the per-example
mistakes, so every paired comparison of the report can be recomputed from the folder).
Checkpoints and caches stay behind. ``provenance.json`` records the commit (and whether the tree had
uncommitted changes), the date, the wall time of every invocation that made the runs (by
command, from ``wall_time.json``) and the environment (CPU, core count, library versions), so
every figure quoted from the folder says where it came from.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import subprocess
import time

from sppnet_jax import run_files, timing

RUN_FILES = ("config.json", "eval.json", "metrics.jsonl", "predictions.npz")
WALL_TIME_FILE = "wall_time.json"


def _git(*args: str) -> str | None:
  try:
    out = subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                         cwd=pathlib.Path(__file__).resolve().parent)
  except (OSError, subprocess.CalledProcessError):
    return None
  return out.stdout.strip()


# The commit of the code this process runs, read when it imports this module (HEAD may move while
# a long invocation runs).
COMMIT_AT_START = _git("rev-parse", "HEAD")


def record_wall_time(workdir: pathlib.Path, command: str, seconds: dict) -> None:
  """Adds ``{command: seconds}`` to ``<workdir>/wall_time.json``: the wall time of each part of an
  invocation, with the commit the process started from. When the environment has ``SPPNET_JOB_STARTED`` (Unix time; set by
  ``scripts/ablation.sh`` before its set-up), the time since then is added as ``job (set-up
  included)``."""
  path = workdir / WALL_TIME_FILE
  times = json.loads(path.read_text()) if path.exists() else {}
  seconds = dict(seconds)
  started = os.environ.get("SPPNET_JOB_STARTED")
  if started:
    seconds["job (set-up included)"] = time.time() - float(started)
  times[command] = {k: round(v, 1) for k, v in seconds.items()} | {"commit": COMMIT_AT_START}
  run_files.write_json(path, times, indent=2)


def publish(workdir: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
  """Copies the reports, figures and run records of ``workdir`` into ``out`` (replacing what was
  there) with ``provenance.json``; returns ``out``."""
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  reports = sorted(workdir.glob("*.md"))
  if not reports:
    raise FileNotFoundError(f"{workdir} holds no report (*.md): run the command that writes it first.")
  if out.exists():
    shutil.rmtree(out)
  out.mkdir(parents=True)
  for path in reports + sorted(workdir.glob("*.png")):
    shutil.copy2(path, out / path.name)
  runs = sorted(p.parent for p in workdir.rglob("eval.json"))
  for run in runs:
    target = out / run.relative_to(workdir)
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
      if (run / name).exists():
        shutil.copy2(run / name, target / name)
  wall = workdir / WALL_TIME_FILE
  provenance = {
      "commit": _git("rev-parse", "HEAD"),
      "uncommitted_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
      "published": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "runs": [str(r.relative_to(workdir)) for r in runs],
      "wall_time_s": json.loads(wall.read_text()) if wall.exists() else None,
      "environment": timing.environment(),
  }
  run_files.write_text(out / "provenance.json", json.dumps(provenance, indent=2) + "\n")
  return out


def wall_time_lines(workdir: pathlib.Path, prefix: str = "") -> list[str]:
  """One Markdown line per invocation recorded in ``<workdir>/wall_time.json`` whose command starts
  with ``prefix``."""
  path = workdir / WALL_TIME_FILE
  if not path.exists():
    return []
  lines = []
  for command, parts in json.loads(path.read_text()).items():
    if not command.startswith(prefix):
      continue
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in parts.items() if k != "commit")
    commit = f" (commit {parts['commit'][:7]})" if parts.get("commit") else ""
    lines.append(f"- `{command}`{commit}: {seconds}")
  return lines
