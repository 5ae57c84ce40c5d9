"""Timing helpers shared by the benchmarks (``sppnet_jax.bench``) and the detection timing
(``sppnet_jax.detection.timing``): one median timer and one record of the environment.

torch and torchvision are imported only inside ``environment``, so this module imports
without them.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np


def _cpuinfo_line(prefixes: tuple[str, ...]) -> str | None:
  """The value of the first ``/proc/cpuinfo`` line starting with one of ``prefixes`` (None where
  there is no such file or line)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(prefixes):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def _cpu_model() -> str:
  return _cpuinfo_line(("model name",)) or platform.processor() or platform.machine()


# The instruction-set extensions XLA's CPU code generator chooses kernels by: two CPUs of one
# model name may differ here (virtual machines hide some), and then the arithmetic may differ.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "neon", "asimd", "sve")


def _cpu_flags() -> str:
  """The :data:`ISA_FLAGS` this CPU has, space-separated, in that order ("" where unknown)."""
  have = set((_cpuinfo_line(("flags", "Features")) or "").split())
  return " ".join(flag for flag in ISA_FLAGS if flag in have)


def environment() -> dict[str, Any]:
  """Device and library versions of this run (torch and torchvision None when not installed)."""
  import flax
  import jaxlib

  device = jax.devices()[0]
  env = {
      "jax_device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
      "jax_devices": len(jax.devices()),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "numpy": np.__version__,
      "cpu": _cpu_model(),
      "cpu_flags": _cpu_flags(),
      "cpu_cores": os.cpu_count(),
      "python": platform.python_version(),
  }
  try:
    import torch

    env["torch"] = torch.__version__
    env["torch_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
      env["torch_cuda_device"] = torch.cuda.get_device_name(0)
  except ImportError:
    env["torch"] = None
  try:
    import torchvision

    env["torchvision"] = torchvision.__version__
  except Exception:  # missing, or built for another torch
    env["torchvision"] = None
  return env


def median_ms(fn: Callable[[], Any], repeats: int, sync: Callable[[Any], Any] = lambda out: out,
              warm_up: Callable[[], Any] | None = None, budget_s: float | None = None) -> tuple[float, int]:
  """(median wall time of ``fn`` in ms, number of timed runs).

  ``warm_up`` (default: ``fn`` itself) runs once first. ``sync`` is applied to each result
  inside the timed region (``jax.block_until_ready`` for JAX). With ``budget_s`` the timing
  stops after the run that passes the budget, so slow baselines may get fewer than
  ``repeats`` runs.
  """
  sync((warm_up or fn)())
  times = []
  deadline = None if budget_s is None else time.perf_counter() + budget_s
  while len(times) < repeats:
    start = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - start)
    if deadline is not None and time.perf_counter() > deadline:
      break
  return 1e3 * statistics.median(times), len(times)


def write_results(out: str | os.PathLike, stem: str, title: str, env: dict, table: str, rows: list) -> str:
  """Writes ``<out>/<stem>_<date>.json`` (date, environment, rows) and the Markdown beside it
  (the title, the environment and ``table``); returns the Markdown."""
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  text = "\n".join([f"# {title} — {date}", "", "```", json.dumps(env, indent=2), "```", "", table, ""])
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / f"{stem}_{date[:10]}.json").write_text(json.dumps({"date": date, "environment": env, "rows": rows}, indent=2))
  (out / f"{stem}_{date[:10]}.md").write_text(text)
  return text
