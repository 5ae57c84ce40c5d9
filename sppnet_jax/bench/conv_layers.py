"""Each convolution of a trunk alone: forward, input gradient and weight gradient, JAX beside torch.

For every conv layer of ``--model`` at ``--size`` (its input shape follows from the trunk's
layers at batch ``--batch``) the three passes of the training step are timed one by one: JAX
with the project's ``compiler.NETWORK_COMPILER_OPTIONS`` (XLA's own convolutions), JAX with
XLA's default options (YNNPACK fusions) and torch's ``aten.convolution_backward`` on
``channels_last`` tensors (oneDNN, the kernels under the ``torch.compile`` peer). The gradients
are linear transposes of the convolution (``jax.linear_transpose``), as autodiff emits them;
conv1 has no input gradient row, since the training step never differentiates the image.
Median of ``--repeats`` runs after a warm-up, torch on ``--threads`` threads. Each row also
gives the pass's FLOPs (``2 * N * Ho * Wo * k^2 * Cin * Cout``, the same for all three passes)
and the JAX pass's achieved GFLOP/s as a fraction of a float32 matmul measured in the same run
(``bench.hardware.measure_matmul_flops``, 1,024 square), so a slow layer shows up as a low
fraction. ``--channels`` sets the conv widths (the slim synthetic configs' ZF-5 is
``--model zf5 --size 96 --batch 32 --channels 16,64,96,96,64``). Run from ``.venv-bench``::

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


def conv_inputs(name: str, size: int, batch: int,
                channels: Sequence[int] | None = None) -> list[tuple[str, tuple[int, int, int, int], models.Conv]]:
  """(layer name, NHWC input shape, conv spec) of every conv layer of trunk ``name`` at ``size``
  (conv widths ``channels`` where given, else the paper's)."""
  layers = models.trunk_layers(name, channels=channels)
  spatial = [layer for layer in layers if isinstance(layer, (models.Conv, models.Pool))]
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


def conv_flops(shape: Sequence[int], conv: models.Conv) -> int:
  """Multiply-adds x 2 of one pass of ``conv`` on an NHWC input of ``shape`` (each of the three
  passes does the same products)."""
  b, h, w, c = shape
  out_h, out_w = ((side + 2 * conv.pad - conv.kernel) // conv.stride + 1 for side in (h, w))
  return 2 * b * out_h * out_w * conv.kernel**2 * c * conv.features


def compare(name: str, size: int, batch: int = 8, repeats: int = 7, channels: Sequence[int] | None = None,
            matmul_flops_per_s: float | None = None) -> list[dict]:
  rows = []
  for index, (layer, shape, conv) in enumerate(conv_inputs(name, size, batch, channels)):
    runners = {"jax": jax_passes(shape, conv, compiler.NETWORK_COMPILER_OPTIONS),
               "jax_xla_defaults": jax_passes(shape, conv, None), "torch": torch_passes(shape, conv)}
    for which in PASSES if index else ("forward", "weight grad"):
      row = {"model": name, "input": size, "layer": layer, "pass": which, "input_shape": list(shape),
             "kernel": conv.kernel, "stride": conv.stride, "features": conv.features}
      for side, passes in runners.items():
        sync = jax.block_until_ready if side.startswith("jax") else (lambda out: out)
        row[f"{side}_ms"] = median_ms(passes[which], repeats, sync=sync)[0]
      row["gflop"] = conv_flops(shape, conv) / 1e9
      row["jax_gflop_per_s"] = row["gflop"] / (row["jax_ms"] * 1e-3)
      if matmul_flops_per_s:
        row["jax_fraction_of_matmul"] = row["jax_gflop_per_s"] * 1e9 / matmul_flops_per_s
      rows.append(row)
  return rows


def format_table(rows: Sequence[dict], matmul_flops_per_s: float | None = None) -> str:
  lines = ["| layer | input (NHWC) | kernel / stride → features | pass | MFLOP | JAX ms | JAX GFLOP/s | of matmul | "
           "JAX, XLA defaults ms | torch ms | torch ÷ JAX |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    fraction = f"{100 * r['jax_fraction_of_matmul']:.0f} %" if "jax_fraction_of_matmul" in r else "-"
    lines.append(f"| {r['model']} {r['layer']} | {'×'.join(map(str, r['input_shape']))} | "
                 f"{r['kernel']}×{r['kernel']} / {r['stride']} → {r['features']} | {r['pass']} | {1e3 * r['gflop']:.0f} | "
                 f"{r['jax_ms']:.2f} | {r['jax_gflop_per_s']:.0f} | {fraction} | "
                 f"{r['jax_xla_defaults_ms']:.2f} | {r['torch_ms']:.2f} | {r['torch_ms'] / r['jax_ms']:.2f}× |")
  if matmul_flops_per_s:
    lines += ["", f"Matmul rate (float32, 1,024 square, measured in this run): {matmul_flops_per_s / 1e9:.0f} GFLOP/s."]
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results")
  parser.add_argument("--model", default="overfeat7", choices=sorted(models.TRUNKS))
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
  parser.add_argument("--channels", default=None, help="conv widths, comma-separated (default: the paper's)")
  args = parser.parse_args(argv)
  import torch
  from sppnet_jax.bench.hardware import measure_matmul_flops
  torch.set_num_threads(args.threads)
  channels = tuple(int(c) for c in args.channels.split(",")) if args.channels else None
  matmul = measure_matmul_flops("float32", 1024)
  rows = compare(args.model, args.size, args.batch, args.repeats, channels, matmul)
  slim = "" if channels is None else "_" + "-".join(map(str, channels))
  text = write_results(args.out, f"conv_layers_{args.model}{slim}_{args.size}_{jax.devices()[0].platform}",
                       f"Convolutions of {args.model}{f' {channels}' if channels else ''} at {args.size}, batch "
                       f"{args.batch}, alone: JAX, JAX with XLA's defaults, torch",
                       dict(environment(), compiler_options=compiler.NETWORK_COMPILER_OPTIONS, matmul_flops_per_s=matmul),
                       format_table(rows, matmul), rows)
  print(text)
  return text


if __name__ == "__main__":
  main()
