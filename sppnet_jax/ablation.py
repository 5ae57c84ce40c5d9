"""The scale ablation on the built-in synthetic data: no SPP, SPP single-size, SPP multi-size.

Each variant trains from ``experiments/synthetic/scale_<variant>.py`` (via
``configs.synthetic``) into ``<workdir>/<variant>`` and is evaluated on the centre-crop and
full-image views; the table and the training curves go to ``<workdir>/report.md``. Rerunning
resumes unfinished variants and re-evaluates finished ones.
"""

from __future__ import annotations

import pathlib
import time

from sppnet_jax import configs, report, train

VARIANTS = ("nospp", "single", "multi")


def run_scale_ablation(workdir: str, variants=VARIANTS) -> str:
  workdir = pathlib.Path(workdir)
  runs, seconds = [], {}
  for variant in variants:
    start = time.perf_counter()
    train.train_and_evaluate(configs.synthetic(variant), workdir / variant)
    seconds[variant] = time.perf_counter() - start
    runs.append(str(workdir / variant))
  text = report.write_report(runs, str(workdir / "report.md"))
  timing = ", ".join(f"{v} {s:.0f} s" for v, s in seconds.items())
  return f"{text}\nWall time (this invocation): {timing}; report in {workdir / 'report.md'}\n"
