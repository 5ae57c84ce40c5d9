"""The XLA compiler options of every jitted function that runs a network, in one place.

jaxlib 0.10's CPU compiler hands convolutions and dots to YNNPACK fusions by default (``ynn_fusion``
custom fusions in ``compiled.as_text()``). For this project's trunks those are slower than XLA's
own Eigen convolutions, most of all in the backward pass: conv1 of ZF-5 and Overfeat (7×7, stride
2, 3 input channels) takes about 3× as long forward and 4.6× as long for its weight gradient, and
the 3×3 and 5×5 layers of 256-512 channels 1.0-1.4× as long (per-layer timings in the README's
training-step section). ``NETWORK_COMPILER_OPTIONS`` turns those fusions off; the field is one of
XLA's CPU debug options, which other backends' compilers read past.

The options go to ``jax.jit(..., compiler_options=...)`` rather than ``XLA_FLAGS``, so they hold
for the network's functions whatever the environment says and leave every other computation of
the process as it was.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

NETWORK_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}


def jit(fun: Callable | None = None, **jit_kwargs) -> Callable:
  """``jax.jit`` with ``NETWORK_COMPILER_OPTIONS``; usable as ``@jit``, ``@jit(static_argnums=...)``
  or ``jit(f, donate_argnums=...)``."""
  if fun is None:
    return functools.partial(jit, **jit_kwargs)
  return jax.jit(fun, compiler_options=NETWORK_COMPILER_OPTIONS, **jit_kwargs)
