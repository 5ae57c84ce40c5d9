"""A PyTorch peer of the SPP networks and their training step, for the benchmark suite.

The torch network is built from the Flax model's own layer specs (``SPPNet.layers``, i.e.
``models.trunk_layers``), so the two architectures cannot drift: conv -> ReLU, LRN with the
Caffe conventions of ``models.lrn`` (sum of squares in float32), floor-rounded max pools,
SPP as ``adaptive_max_pool2d`` per level flattened in the layout of ``ops.spp`` (levels in
order; within a level, bins row-major; within a bin, channels), then fc6/fc7 with ReLU and
dropout and the classifier. Images are NCHW tensors kept in ``channels_last`` memory.

This module imports torch at the top; the suite imports it only when torch is installed.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sppnet_jax import models, ops
from sppnet_jax.timing import median_ms

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def lrn(x: torch.Tensor, spec: models.LRN) -> torch.Tensor:
  """``models.lrn`` on an NCHW tensor.

  Both kinds scale the zero-padded window sum by ``alpha / window_size``; an average pool
  that counts the padding divides by exactly that size, so the factor is
  ``1 + alpha * mean``.
  """
  sq = x.float().square()
  half = spec.size // 2
  if spec.kind == "within":
    mean = F.avg_pool2d(sq, spec.size, 1, half, count_include_pad=True)
  elif spec.kind == "across":
    mean = F.avg_pool3d(sq.unsqueeze(1), (spec.size, 1, 1), 1, (half, 0, 0), count_include_pad=True).squeeze(1)
  else:
    raise ValueError(f"LRN kind must be 'within' or 'across'; got {spec.kind!r}.")
  return x * (1.0 + spec.alpha * mean).pow(-spec.beta).to(x.dtype)


def spp(x: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
  """``ops.spp`` on an NCHW tensor: (B, sum(n*n) * C), per level (n, n, C) flattened."""
  return torch.cat([F.adaptive_max_pool2d(x, n).permute(0, 2, 3, 1).flatten(1) for n in levels], dim=1)


class SPPNet(torch.nn.Module):
  """Trunk, SPP and fc head of a Flax ``models.SPPNet`` with an SPP head; logits in float32."""

  def __init__(self, layers: Sequence[models.Layer], num_classes: int, levels: Sequence[int], fc_width: int,
               dropout: float):
    super().__init__()
    self.layers = tuple(layers)
    self.levels = ops.check_levels(levels)
    self.dropout = dropout
    convs, channels = [], 3
    for layer in self.layers:
      if isinstance(layer, models.Conv):
        convs.append(torch.nn.Conv2d(channels, layer.features, layer.kernel, layer.stride, layer.pad))
        channels = layer.features
    self.convs = torch.nn.ModuleList(convs)
    self.fc6 = torch.nn.Linear(ops.spp_output_dim(channels, self.levels), fc_width)
    self.fc7 = torch.nn.Linear(fc_width, fc_width)
    self.fc8 = torch.nn.Linear(fc_width, num_classes)

  def features(self, images: torch.Tensor) -> torch.Tensor:
    """The last conv map (B, C, h, w)."""
    x, index = images, 0
    for layer in self.layers:
      if isinstance(layer, models.Conv):
        x = F.relu(self.convs[index](x))
        index += 1
      elif isinstance(layer, models.Pool):
        x = F.max_pool2d(x, layer.window, layer.stride)
      else:
        x = lrn(x, layer)
    return x

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    x = spp(self.features(images), self.levels)
    for fc in (self.fc6, self.fc7):
      x = F.dropout(F.relu(fc(x)), self.dropout, self.training)
    return self.fc8(x).float()


def from_flax(model: models.SPPNet) -> SPPNet:
  """The torch peer of ``model`` (same layers, levels, widths, classes and dropout), freshly initialised."""
  if model.levels is None:
    raise ValueError("the torch peer covers SPP networks only; this model has the no-SPP baseline head.")
  return SPPNet(model.layers, model.num_classes, model.levels, model.fc_width, model.dropout)


def load_flax_params(module: SPPNet, params: Any) -> SPPNet:
  """Copies a Flax model's ``params`` into ``module`` in place and returns it.

  Conv kernels go from HWIO to OIHW, dense kernels from (in, out) to (out, in).
  """
  def put(target: torch.Tensor, value, axes=None):
    array = np.asarray(value, np.float32)
    target.copy_(torch.from_numpy(np.array(array.transpose(axes) if axes else array)))

  with torch.no_grad():
    for index, conv in enumerate(module.convs, start=1):
      p = params["trunk"][f"conv{index}"]
      put(conv.weight, p["kernel"], (3, 2, 0, 1))
      put(conv.bias, p["bias"])
    for name in ("fc6", "fc7", "fc8"):
      p = params["head"][name]
      put(getattr(module, name).weight, p["kernel"], (1, 0))
      put(getattr(module, name).bias, p["bias"])
  return module


def make_train_step(module: SPPNet, optimizer: torch.optim.Optimizer, dtype: str,
                    compile_model: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """(images, labels) -> loss: forward (under bfloat16 autocast for ``dtype='bfloat16'``),
  cross-entropy, backward and one optimizer step.

  With ``compile_model`` the forward and loss go through ``torch.compile`` (the backward is
  compiled with them by AOTAutograd); the optimizer step stays eager.
  """
  device_type = next(module.parameters()).device.type

  def loss_fn(images, labels):
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      logits = module(images)
    return F.cross_entropy(logits, labels)

  forward = torch.compile(loss_fn) if compile_model else loss_fn

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    loss = forward(images, labels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


def train_step_benchmark(model: models.SPPNet, dtype: str, size: int, batch: int, repeats: int = 5,
                         compile_model: bool = False, seed: int = 0) -> dict:
  """Times the torch peer's training step like ``suite.train_step_benchmark`` times the JAX one.

  SGD with momentum 0.9 at learning rate 0.01 (the same update as ``optax.trace(0.9)``),
  zero images and labels of ``batch`` x ``size`` x ``size``, the model in train mode (dropout
  on). ``compile_s`` is the first step's wall time (compiling included, when compiled); the
  median of ``repeats`` steps follows one more warm-up step. On CUDA, float32 matmuls may
  use TF32 during the run, as JAX's default precision does there.
  """
  if dtype not in TORCH_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}; got {dtype!r}.")
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.manual_seed(seed)
  module = from_flax(model).to(device, memory_format=torch.channels_last).train()
  optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
  step = make_train_step(module, optimizer, dtype, compile_model)
  images = torch.zeros(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
  labels = torch.zeros(batch, dtype=torch.long, device=device)
  previous_precision = torch.get_float32_matmul_precision()
  if device.type == "cuda":
    torch.set_float32_matmul_precision("high")
  try:
    start = time.perf_counter()
    float(step(images, labels))
    compile_s = time.perf_counter() - start
    ms, runs = median_ms(lambda: step(images, labels), repeats, float)
  finally:
    torch.set_float32_matmul_precision(previous_precision)
  return {"mode": "torch.compile" if compile_model else "eager", "step_ms": ms, "images_per_s": batch / (ms * 1e-3),
          "compile_s": compile_s, "runs": runs, "device": str(device)}
