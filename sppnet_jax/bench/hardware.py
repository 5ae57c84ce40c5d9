"""FLOP counts of the SPP networks and the peak rates that model FLOPs utilisation is taken against.

FLOP convention (``forward_flops``, ``train_step_flops``): only the convolutions and the
fully connected layers count, each multiply-add as 2 FLOPs; ReLU, LRN, pooling, SPP,
dropout, the loss and the optimizer update are left out (they cost O(activations), not
O(activations x kernel volume x input channels)). Every kernel tap counts, those over the
zero padding included (a dense convolution computes them; XLA's cost analysis leaves them
out, so it reports a little less on small maps). A training step counts 3x the forward
pass: the forward, the gradient with respect to the activations and the gradient with
respect to the weights each cost one forward's multiply-adds (the input gradient of conv1
is not needed but is counted, as the usual 3x convention does).

Peaks (``device_peaks``): on the GPUs in ``SPEC_SHEETS`` the vendor's dense tensor-core
figures and HBM bandwidth; on any other device, a CPU included, rates measured in the same
run instead (a large matmul per dtype and an in-place streaming pass over a large array, a
read and a write of every byte), labelled as measured.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sppnet_jax import models, ops
from sppnet_jax.timing import median_ms


# ----------------------------------------------------------------------------------------
# FLOP counts


def conv_flops(layers: Sequence[models.Layer], image_hw: tuple[int, int]) -> tuple[int, tuple[int, int, int]]:
  """(forward FLOPs of the trunk's convolutions for one image, the last map's (h, w, channels))."""
  (h, w), channels, flops = image_hw, 3, 0
  sizes = ops.layer_shapes(models.spatial_layers(layers), np.array(image_hw))
  for layer in layers:
    if isinstance(layer, (models.Conv, models.Pool)):
      h, w = (int(s) for s in next(sizes))
    if isinstance(layer, models.Conv):
      flops += 2 * h * w * layer.features * layer.kernel**2 * channels
      channels = layer.features
  return flops, (h, w, channels)


def forward_flops(model: models.SPPNet, image_hw: tuple[int, int]) -> int:
  """Forward FLOPs of ``model`` for one image of ``image_hw`` (convention in the module docstring)."""
  flops, (h, w, channels) = conv_flops(model.layers, image_hw)
  if model.levels is not None:
    fc_in = ops.spp_output_dim(channels, model.levels)
  else:
    window, stride = model.baseline_pool
    fc_in = int(np.prod(ops.layer_output(np.array((h, w)), (window, stride, 0)))) * channels
  widths = (fc_in, model.fc_width, model.fc_width, model.num_classes)
  return flops + sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


def train_step_flops(model: models.SPPNet, image_hw: tuple[int, int], batch: int) -> int:
  """FLOPs of one training step on ``batch`` images: 3 x the forward FLOPs."""
  return 3 * batch * forward_flops(model, image_hw)


# ----------------------------------------------------------------------------------------
# Peaks


@dataclasses.dataclass(frozen=True)
class SpecSheet:
  """A GPU's vendor figures. Tensor-core figures are as printed, i.e. with 2:4 sparsity;
  the dense rate is half of it."""
  name: str
  kind_contains: tuple[str, ...]
  bf16_sparse_tflops: float
  tf32_sparse_tflops: float
  hbm_tb_per_s: float


# NVIDIA data sheets (H100 Tensor Core GPU; H200 Tensor Core GPU), spec-sheet values:
#   H100 SXM:  BF16 1,979 TFLOPS*, TF32 989 TFLOPS*, 3.35 TB/s HBM3
#   H100 PCIe: BF16 1,513 TFLOPS*, TF32 756 TFLOPS*, 2 TB/s HBM2e
#   H100 NVL:  BF16 1,671 TFLOPS*, TF32 835 TFLOPS*, 3.9 TB/s HBM3
#   H200 SXM:  BF16 1,979 TFLOPS*, TF32 989 TFLOPS*, 4.8 TB/s HBM3e
#   H200 NVL:  BF16 1,671 TFLOPS*, TF32 835 TFLOPS*, 4.8 TB/s HBM3e
#   (* with sparsity; dense is half.)
# Checked in order: the first entry whose every substring is in ``device_kind`` matches.
SPEC_SHEETS = (
    SpecSheet("NVIDIA H100 PCIe", ("H100", "PCIe"), 1513.0, 756.0, 2.0),
    SpecSheet("NVIDIA H100 NVL", ("H100", "NVL"), 1671.0, 835.0, 3.9),
    SpecSheet("NVIDIA H100 SXM", ("H100",), 1979.0, 989.0, 3.35),
    SpecSheet("NVIDIA H200 NVL", ("H200", "NVL"), 1671.0, 835.0, 4.8),
    SpecSheet("NVIDIA H200 SXM", ("H200",), 1979.0, 989.0, 4.8),
)


@dataclasses.dataclass(frozen=True)
class Peaks:
  """Denominators for utilisation: FLOP/s per dtype and bytes/s, each with the label to print after a fraction."""
  device: str
  source: str
  flops_per_s: dict[str, float]
  flops_label: dict[str, str]
  bytes_per_s: float
  bytes_label: str

  @property
  def measured(self) -> bool:
    """True when the peaks were measured in this run rather than taken from a spec sheet."""
    return self.source.startswith("measured")


def find_spec_sheet(device_kind: str) -> SpecSheet | None:
  for sheet in SPEC_SHEETS:
    if all(part in device_kind for part in sheet.kind_contains):
      return sheet
  return None


def spec_peaks(sheet: SpecSheet, device_kind: str) -> Peaks:
  """Dense spec peaks. float32 rows are taken against the TF32 tensor-core rate: JAX's default
  matmul precision on these GPUs runs float32 convolutions and matmuls in TF32."""
  return Peaks(
      device=device_kind, source=f"spec sheet: {sheet.name}",
      flops_per_s={"bfloat16": sheet.bf16_sparse_tflops / 2 * 1e12, "float32": sheet.tf32_sparse_tflops / 2 * 1e12},
      flops_label={"bfloat16": f"of {sheet.name} spec dense BF16 tensor peak",
                   "float32": f"of {sheet.name} spec dense TF32 tensor peak"},
      bytes_per_s=sheet.hbm_tb_per_s * 1e12, bytes_label=f"of {sheet.name} spec HBM bandwidth")


def measure_matmul_flops(dtype: str, n: int, repeats: int = 5) -> float:
  """Achieved FLOP/s (2 n^3 per product) of a jitted n x n matmul in ``dtype``, median of ``repeats``."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
  matmul = jax.jit(jnp.matmul)
  ms, _ = median_ms(lambda: matmul(a, b), repeats, jax.block_until_ready)
  return 2 * n**3 / (ms * 1e-3)


def measure_stream_bandwidth(num_bytes: int, repeats: int = 5) -> float:
  """Achieved bytes/s of a jitted streaming pass ``x = x + 1`` over ``num_bytes`` of float32,
  median of ``repeats``: each call reads and writes ``num_bytes`` once.

  The input is donated, so the result is written in place: a fresh output buffer of that size
  would time the page faults of first touching it (several times slower on a CPU), not the
  memory traffic.
  """
  step = jax.jit(lambda v: v + 1.0, donate_argnums=0)
  holder = {"x": jnp.zeros((num_bytes // 4,), jnp.float32)}

  def run():
    holder["x"] = step(holder["x"])
    return holder["x"]

  ms, _ = median_ms(run, repeats, jax.block_until_ready)
  return 2 * holder["x"].nbytes / (ms * 1e-3)


def measured_peaks(device_kind: str, matmul_n: int, stream_bytes: int, dtypes: Sequence[str]) -> Peaks:
  """Peaks measured on the default device now: a matmul per dtype and a streaming pass."""
  source = f"measured: {matmul_n}x{matmul_n} matmul, in-place x + 1 over {stream_bytes / 2**20:.0f} MiB"
  return Peaks(
      device=device_kind, source=source,
      flops_per_s={d: measure_matmul_flops(d, matmul_n) for d in dtypes},
      flops_label={d: f"of measured {d} matmul peak" for d in dtypes},
      bytes_per_s=measure_stream_bandwidth(stream_bytes), bytes_label="of measured streaming bandwidth")


def device_peaks(dtypes: Sequence[str] = ("float32", "bfloat16"), matmul_n: int | None = None,
                 stream_bytes: int | None = None) -> Peaks:
  """Spec-sheet peaks for a GPU in ``SPEC_SHEETS``, else measured ones (default sizes: a 2048
  matmul and a 256 MiB array on a CPU, 8192 and 2 GiB elsewhere)."""
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", device.platform)
  sheet = find_spec_sheet(kind) if device.platform == "gpu" else None
  if sheet is not None:
    return spec_peaks(sheet, kind)
  on_cpu = device.platform == "cpu"
  return measured_peaks(kind, matmul_n or (2048 if on_cpu else 8192), stream_bytes or (2**28 if on_cpu else 2**31),
                        dtypes)


def utilisation(achieved: float, peak: float | None) -> float | None:
  """achieved / peak, or None without a peak."""
  return None if not peak else achieved / peak
