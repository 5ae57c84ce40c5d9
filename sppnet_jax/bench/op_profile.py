"""Where the JAX training step spends its time, per compiled op, from a ``jax.profiler`` trace.

The step is ``bench.train_step.sgd_step`` (the one timed against the torch peer). Each traced
thunk event is matched to its HLO instruction in the compiled module, which names the source
operation (``op_name`` metadata, e.g. ``.../trunk/conv2/conv_general_dilated``; a weight
gradient has none and is named by its output shape, e.g. ``f32[96,5,5,256]`` for conv2's
kernel). Times are summed over the traced steps and divided by their number; on a CPU the
events of both worker threads are added, so the total exceeds the wall time of a step. XLA's own
(Eigen) convolutions, which the project's compiler options select, emit no trace event of their
own: their time is missing from the table and from the traced total, and
``bench.conv_layers`` times them layer by layer instead. With ``--xla-defaults`` they are
YNNPACK fusions and appear.

    python -m sppnet_jax.bench.op_profile --model zf5 --size 224 [--reference] [--xla-defaults]
    python -m sppnet_jax.bench.op_profile --model zf5 --size 96 --batch 32 --channels 16,64,96,96,64 \
        --fc_width 512 --num_classes 12   # the slim synthetic configs' network

``--reference`` profiles the same step with the library's plain formulations of max pooling
(``flax.linen.max_pool``, differentiated by XLA's select-and-scatter) and LRN (``reduce_window``
and ``power``, differentiated by autodiff) in place of ``ops.pooling.max_pool`` and
``models.lrn``: the before/after of those two ops in one command. ``--xla-defaults`` compiles
the step with XLA's default options instead of ``compiler.NETWORK_COMPILER_OPTIONS`` (its
convolutions become YNNPACK fusions).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import pathlib
import re
import tempfile
from typing import Sequence
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sppnet_jax import compiler, models
from sppnet_jax.bench import train_step

_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """HLO instruction name -> (result shape, source op name or '')."""
  out = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      op = _OP_NAME.search(line)
      out[match.group(1)] = (match.group(2), op.group(1) if op else "")
  return out


def label(shape: str, op_name: str) -> str:
  """'forward'/'backward'/'update' and the op's source path inside the model (e.g. 'backward
  trunk/conv2/conv_general_dilated'); ops without a source op are named by their result shape."""
  if not op_name:
    return f"(no source op) {shape}"
  if "SPPNet" not in op_name:
    return f"update {op_name.rsplit('/', 1)[-1]}"
  direction = "backward" if "transpose(" in op_name else "forward"
  path = op_name.split("SPPNet.", 1)[-1].split("/", 1)[-1]
  path = re.sub(r"jit\((\w+)\)/", r"\1/", path)
  return f"{direction} {path}"


def reference_lrn(x: jax.Array, spec: models.LRN) -> jax.Array:
  """LRN as a reduce-window sum and a power, differentiated by autodiff (the values of ``models.lrn``)."""
  sq = jnp.square(x.astype(jnp.float32))
  half = spec.size // 2
  if spec.kind == "within":
    window, pad, norm = (1, spec.size, spec.size, 1), ((0, 0), (half, half), (half, half), (0, 0)), spec.alpha / spec.size**2
  else:
    window, pad, norm = (1, 1, 1, spec.size), ((0, 0), (0, 0), (0, 0), (half, half)), spec.alpha / spec.size
  total = jax.lax.reduce_window(sq, 0.0, jax.lax.add, window, (1, 1, 1, 1), pad)
  return (x * jnp.power(1.0 + norm * total, -spec.beta).astype(x.dtype)).astype(x.dtype)


def reference_max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  return nn.max_pool(x, (window, window), (stride, stride), "VALID")


@contextlib.contextmanager
def reference_ops():
  """Inside: the trunk pools with ``flax.linen.max_pool`` and normalises with ``reference_lrn``."""
  with mock.patch.object(models, "lrn", reference_lrn), \
       mock.patch.object(models.ops.pooling, "max_pool", reference_max_pool):
    yield


def profile_step(name: str, size: int, batch: int = 8, dtype: str = "float32", steps: int = 2,
                 reference: bool = False, xla_defaults: bool = False, channels: Sequence[int] | None = None,
                 fc_width: int = 4096, num_classes: int = 1000) -> tuple[dict, float]:
  """(label -> ms per step, summed over threads) and the mean wall ms per step under the trace.
  ``reference``: compile the step under ``reference_ops``; ``xla_defaults``: with XLA's default
  compiler options; ``channels``, ``fc_width``, ``num_classes``: a slim network (see
  ``models.create_model``)."""
  import time
  model = models.create_model(name, num_classes=num_classes, dtype=dtype, channels=channels, fc_width=fc_width)
  params = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  opt_state = optax.trace(decay=train_step.MOMENTUM).init(params)
  images, labels, key = jnp.zeros((batch, size, size, 3)), jnp.zeros((batch,), jnp.int32), jax.random.key(0)
  with reference_ops() if reference else contextlib.nullcontext():
    options = None if xla_defaults else compiler.NETWORK_COMPILER_OPTIONS
    compiled = train_step.sgd_step(model, compiler_options=options).lower(params, opt_state, images, labels, key).compile()
  table = instructions(compiled.as_text())
  for _ in range(2):
    params, opt_state, loss = compiled(params, opt_state, images, labels, key)
    jax.block_until_ready(loss)
  with tempfile.TemporaryDirectory() as log_dir:
    start = time.perf_counter()
    with jax.profiler.trace(log_dir):
      for _ in range(steps):
        params, opt_state, loss = compiled(params, opt_state, images, labels, key)
        jax.block_until_ready(loss)
    wall_ms = 1e3 * (time.perf_counter() - start) / steps
    trace = next(pathlib.Path(log_dir).rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(trace))
  totals: dict[str, float] = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        if event.name in table:
          totals[label(*table[event.name])] += event.duration_ns / 1e6 / steps
  return dict(totals), wall_ms


def format_profile(totals: dict, wall_ms: float, top: int = 20) -> str:
  total = sum(totals.values())
  lines = [f"step wall time under the trace: {wall_ms:.0f} ms; traced op time (all threads): {total:.0f} ms "
           "(XLA's Eigen convolutions are not traced: see bench.conv_layers)", "",
           "| op | ms per step | share |", "|---|---:|---:|"]
  for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    lines.append(f"| {name} | {ms:.1f} | {ms / total:.1%} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="zf5")
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--top", type=int, default=20)
  parser.add_argument("--reference", action="store_true", help="plain max pool and LRN (see the module docstring)")
  parser.add_argument("--xla-defaults", action="store_true", help="compile with XLA's default options")
  parser.add_argument("--channels", default=None, help="conv widths, comma-separated (default: the paper's)")
  parser.add_argument("--fc_width", type=int, default=4096)
  parser.add_argument("--num_classes", type=int, default=1000)
  args = parser.parse_args(argv)
  channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
  totals, wall_ms = profile_step(args.model, args.size, args.batch, args.dtype, reference=args.reference,
                                 xla_defaults=args.xla_defaults, channels=channels, fc_width=args.fc_width,
                                 num_classes=args.num_classes)
  text = format_profile(totals, wall_ms, top=args.top)
  print(text)
  return text


if __name__ == "__main__":
  main()
