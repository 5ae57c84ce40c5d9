"""The JAX training step beside the ``torch.compile`` peer, timed interleaved in one process.

Both sides run the same update on the same network (``bench.torch_peer`` builds the torch
network from the Flax model's layer specs): forward in train mode (dropout on), softmax
cross-entropy, backward, and SGD with momentum 0.9 at learning rate 0.01 (``optax.trace`` +
``p - lr * v``, torch's ``SGD(momentum=0.9)``). The JAX step is one jitted function with the
parameters and momentum donated, compiled with the project's ``compiler.NETWORK_COMPILER_OPTIONS``;
the torch step compiles forward, loss and backward with ``torch.compile`` (``channels_last``) and
runs the optimizer eagerly. ``--xla-defaults`` adds a third runner to every round: the same JAX
step compiled with XLA's default options, so the options' effect is measured on the same rounds.

Rounds alternate one JAX step and one torch step after warm-up, so both see the same machine
load; the figure of merit is the median over rounds of torch's step time over JAX's (above 1:
JAX faster). Run from ``.venv-bench``::

    .venv-bench/bin/python -m sppnet_jax.bench.train_step --out benchmarks/results
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sppnet_jax import compiler, models, stats
from sppnet_jax.timing import environment, write_results

LEARNING_RATE, MOMENTUM = 0.01, 0.9
CASES = (("zf5", 224), ("zf5", 180), ("overfeat7", 224), ("overfeat7", 180))


def sgd_step(model: models.SPPNet, learning_rate: float = LEARNING_RATE, momentum: float = MOMENTUM,
             compiler_options: dict | None = compiler.NETWORK_COMPILER_OPTIONS) -> Callable:
  """(params, momentum_state, images, labels, key) -> (params, momentum_state, loss), jitted with
  ``compiler_options`` (None: XLA's defaults), the first two arguments donated."""
  tx = optax.trace(decay=momentum)

  def step(params, opt_state, images, labels, key):
    def loss_fn(p):
      logits = model.apply({"params": p}, images, train=True, rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p - learning_rate * u, params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options)


def jax_runner(model: models.SPPNet, size: int, batch: int,
               compiler_options: dict | None = compiler.NETWORK_COMPILER_OPTIONS) -> tuple[Callable[[], None], float]:
  """A no-argument function running one JAX step (state kept inside), and the compile seconds."""
  params = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  opt_state = optax.trace(decay=MOMENTUM).init(params)
  images = jnp.zeros((batch, size, size, 3), jnp.float32)
  labels = jnp.zeros((batch,), jnp.int32)
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = sgd_step(model, compiler_options=compiler_options).lower(params, opt_state, images, labels, key).compile()
  compile_s = time.perf_counter() - start
  state = {"params": params, "opt": opt_state}

  def run():
    state["params"], state["opt"], loss = compiled(state["params"], state["opt"], images, labels, key)
    jax.block_until_ready(loss)

  return run, compile_s


def torch_runner(model: models.SPPNet, size: int, batch: int, dtype: str, compile_model: bool
                 ) -> tuple[Callable[[], None], float]:
  """The torch peer's step as a no-argument function (first step, compiling included, already run)."""
  import torch

  from sppnet_jax.bench import torch_peer
  torch.manual_seed(0)
  module = torch_peer.from_flax(model).to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
  step = torch_peer.make_train_step(module, optimizer, dtype, compile_model)
  images = torch.zeros(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
  labels = torch.zeros(batch, dtype=torch.long)
  start = time.perf_counter()
  float(step(images, labels))
  return (lambda: float(step(images, labels))), time.perf_counter() - start


def interleaved(runners: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
  """Milliseconds of each runner per round, the runners alternating within every round."""
  for _ in range(warmup):
    for run in runners.values():
      run()
  times = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      times[name].append(1e3 * (time.perf_counter() - start))
  return times


def compare(name: str, size: int, batch: int = 8, dtype: str = "float32", rounds: int = 7,
            compile_model: bool = True, xla_defaults: bool = False) -> dict:
  """One row: JAX and torch step times (medians and every round) and the median per-round ratio;
  with ``xla_defaults`` also the step compiled with XLA's default options, timed in the same rounds."""
  model = models.create_model(name, dtype=dtype)
  runners = {}
  runners["jax"], jax_compile_s = jax_runner(model, size, batch)
  if xla_defaults:
    runners["jax_xla_defaults"], _ = jax_runner(model, size, batch, compiler_options=None)
  runners["torch"], torch_first_s = torch_runner(model, size, batch, dtype, compile_model)
  times = interleaved(runners, rounds)
  ratios = np.asarray(times["torch"]) / np.asarray(times["jax"])
  interval = stats.ratio_interval(ratios)
  row = {"model": name, "input": size, "batch": batch, "dtype": dtype, "rounds": rounds,
         "jax_ms": float(np.median(times["jax"])), "torch_ms": float(np.median(times["torch"])),
         "jax_over_torch": float(np.median(ratios)), "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()),
         "ratio_geomean": interval.mean, "ratio_ci95": [interval.low, interval.high],
         "jax_ms_rounds": times["jax"], "torch_ms_rounds": times["torch"], "jax_compile_s": jax_compile_s,
         "torch_first_step_s": torch_first_s, "torch": "torch.compile" if compile_model else "eager",
         "compiler_options": compiler.NETWORK_COMPILER_OPTIONS}
  if xla_defaults:
    gains = np.asarray(times["jax_xla_defaults"]) / np.asarray(times["jax"])
    gain = stats.ratio_interval(gains)
    row.update(jax_xla_defaults_ms=float(np.median(times["jax_xla_defaults"])),
               jax_xla_defaults_ms_rounds=times["jax_xla_defaults"], options_gain_geomean=gain.mean,
               options_gain_ci95=[gain.low, gain.high])
  return row


def format_table(rows: Sequence[dict]) -> str:
  """Per-round ratios as a median with the range, and as a geometric mean with its 95 % t interval."""
  defaults = all("options_gain_geomean" in r for r in rows)
  lines = ["| model | input | dtype | batch | JAX ms / step | torch ms / step | JAX speed / torch, median of rounds "
           "(range) | geometric mean [95 % CI] |" + (" JAX, XLA defaults ms / step | XLA defaults / project options, "
                                                   "geometric mean [95 % CI] |" if defaults else ""),
           "|---|---:|---|---:|---:|---:|---|---|" + ("---:|---|" if defaults else "")]
  for r in rows:
    low, high = r["ratio_ci95"]
    line = (f"| {r['model']} | {r['input']} | {r['dtype']} | {r['batch']} | {r['jax_ms']:.0f} | {r['torch_ms']:.0f} | "
            f"{r['jax_over_torch']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
            f"{r['ratio_geomean']:.2f}x [{low:.2f}, {high:.2f}] |")
    if defaults:
      low, high = r["options_gain_ci95"]
      line += f" {r['jax_xla_defaults_ms']:.0f} | {r['options_gain_geomean']:.2f}x [{low:.2f}, {high:.2f}] |"
    lines.append(line)
  return "\n".join(lines)


def _case(text: str) -> tuple[str, int]:
  name, _, size = text.partition(":")
  if name not in models.BASELINE_POOL5 or not size.isdigit():
    raise argparse.ArgumentTypeError(f"expected MODEL:SIZE with MODEL one of {', '.join(models.BASELINE_POOL5)} "
                                     f"and SIZE an integer, e.g. overfeat7:224; got {text!r}")
  return name, int(size)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--cases", nargs="+", metavar="MODEL:SIZE", type=_case,
                      default=list(CASES), help="e.g. overfeat7:224 zf5:180 (default: all four)")
  parser.add_argument("--xla-defaults", action="store_true",
                      help="also time the JAX step compiled with XLA's default options, in the same rounds")
  args = parser.parse_args(argv)
  if args.rounds < 2:
    parser.error(f"--rounds {args.rounds}: the 95 % interval of the per-round ratios needs at least 2 rounds")
  import torch
  torch.set_num_threads(args.threads)
  rows = []
  for name, size in args.cases:
    rows.append(compare(name, size, args.batch, args.dtype, args.rounds, xla_defaults=args.xla_defaults))
    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
  text = write_results(args.out, f"train_step_{jax.devices()[0].platform}_{args.dtype}",
                       "Training step, JAX beside the torch.compile peer, interleaved", environment(),
                       format_table(rows), rows)
  print(text)
  return text


if __name__ == "__main__":
  main()
