"""Each convolution of a trunk alone: forward, input gradient and weight gradient, JAX beside torch.

For every conv layer of ``--model`` at ``--size`` (its input shape follows from the trunk's
layers at batch ``--batch``) the three passes of the training step are timed one by one: JAX
with the project's ``compiler.NETWORK_COMPILER_OPTIONS`` (XLA's own convolutions), JAX with
XLA's default options (YNNPACK fusions) and torch's ``aten.convolution_backward`` on
``channels_last`` tensors (oneDNN, the kernels under the ``torch.compile`` peer). The gradients
are linear transposes of the convolution (``jax.linear_transpose``), as autodiff emits them;
conv1 has no input gradient row, since the training step never differentiates the image.
Median of ``--repeats`` runs after a warm-up, torch on ``--threads`` threads. Run from
``.venv-bench``::

    .venv-bench/bin/python -m sppnet_jax.bench.conv_layers --model overfeat7 --size 224 --out benchmarks/results
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax import compiler, models, ops
from sppnet_jax.timing import environment, median_ms, write_results

_DIMS = ("NHWC", "HWIO", "NHWC")
PASSES = ("forward", "input grad", "weight grad")


def conv_inputs(name: str, size: int, batch: int) -> list[tuple[str, tuple[int, int, int, int], models.Conv]]:
  """(layer name, NHWC input shape, conv spec) of every conv layer of trunk ``name`` at ``size``."""
  spatial = [layer for layer in models.TRUNKS[name] if isinstance(layer, (models.Conv, models.Pool))]
  sides = [size, *ops.layer_shapes(models.spatial_layers(spatial), size)]  # the side before each spatial layer
  convs = [(i, layer) for i, layer in enumerate(spatial) if isinstance(layer, models.Conv)]
  channels = [3] + [layer.features for _, layer in convs]
  return [(f"conv{n + 1}", (batch, sides[i], sides[i], channels[n]), layer) for n, (i, layer) in enumerate(convs)]


def jax_passes(shape: tuple[int, ...], conv: models.Conv, compiler_options: dict | None) -> dict[str, Callable]:
  """The three passes as no-argument functions returning their (not yet ready) JAX result."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal((conv.kernel, conv.kernel, shape[-1], conv.features)) * 0.01, jnp.float32)
  pad = ((conv.pad, conv.pad),) * 2

  def forward(x, w):
    return jax.lax.conv_general_dilated(x, w, (conv.stride,) * 2, pad, dimension_numbers=_DIMS)

  y = forward(x, w)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)

  def input_grad(g, w):
    return jax.linear_transpose(lambda x: forward(x, w), x)(g)[0]

  def weight_grad(g, x):
    return jax.linear_transpose(lambda w: forward(x, w), w)(g)[0]

  jit = lambda f: jax.jit(f, compiler_options=compiler_options)
  forward_c, input_c, weight_c = jit(forward), jit(input_grad), jit(weight_grad)
  return {"forward": lambda: forward_c(x, w), "input grad": lambda: input_c(g, w), "weight grad": lambda: weight_c(g, x)}


def torch_passes(shape: tuple[int, ...], conv: models.Conv) -> dict[str, Callable]:
  import torch

  b, h, w_, c = shape
  x = torch.randn(b, c, h, w_).contiguous(memory_format=torch.channels_last)
  w = (torch.randn(conv.features, c, conv.kernel, conv.kernel) * 0.01).contiguous(memory_format=torch.channels_last)
  args = dict(stride=[conv.stride] * 2, padding=[conv.pad] * 2, dilation=[1, 1], groups=1)
  y = torch.nn.functional.conv2d(x, w, None, args["stride"], args["padding"])
  g = torch.randn_like(y).contiguous(memory_format=torch.channels_last)

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(g, x, w, None, args["stride"], args["padding"],
                                                       args["dilation"], False, [0, 0], 1, mask)

  def forward():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, w, None, args["stride"], args["padding"])

  return {"forward": forward, "input grad": backward([True, False, False]), "weight grad": backward([False, True, False])}


def compare(name: str, size: int, batch: int = 8, repeats: int = 7) -> list[dict]:
  rows = []
  for index, (layer, shape, conv) in enumerate(conv_inputs(name, size, batch)):
    runners = {"jax": jax_passes(shape, conv, compiler.NETWORK_COMPILER_OPTIONS),
               "jax_xla_defaults": jax_passes(shape, conv, None), "torch": torch_passes(shape, conv)}
    for which in PASSES if index else ("forward", "weight grad"):
      row = {"model": name, "input": size, "layer": layer, "pass": which, "input_shape": list(shape),
             "kernel": conv.kernel, "stride": conv.stride, "features": conv.features}
      for side, passes in runners.items():
        sync = jax.block_until_ready if side.startswith("jax") else (lambda out: out)
        row[f"{side}_ms"] = median_ms(passes[which], repeats, sync=sync)[0]
      rows.append(row)
  return rows


def format_table(rows: Sequence[dict]) -> str:
  lines = ["| layer | input (NHWC) | kernel / stride → features | pass | JAX ms | JAX, XLA defaults ms | torch ms | "
           "torch ÷ JAX |", "|---|---|---|---|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['model']} {r['layer']} | {'×'.join(map(str, r['input_shape']))} | "
                 f"{r['kernel']}×{r['kernel']} / {r['stride']} → {r['features']} | {r['pass']} | {r['jax_ms']:.1f} | "
                 f"{r['jax_xla_defaults_ms']:.1f} | {r['torch_ms']:.1f} | {r['torch_ms'] / r['jax_ms']:.2f}× |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument("--model", default="overfeat7", choices=sorted(models.TRUNKS))
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  args = parser.parse_args(argv)
  import torch
  torch.set_num_threads(args.threads)
  rows = compare(args.model, args.size, args.batch, args.repeats)
  text = write_results(args.out, f"conv_layers_{args.model}_{args.size}_{jax.devices()[0].platform}",
                       f"Convolutions of {args.model} at {args.size} alone: JAX, JAX with XLA's defaults, torch",
                       dict(environment(), compiler_options=compiler.NETWORK_COMPILER_OPTIONS), format_table(rows), rows)
  print(text)
  return text


if __name__ == "__main__":
  main()
