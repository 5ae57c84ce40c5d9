"""The XLA compiler options of every jitted function that runs a network, in one place.

- ``xla_cpu_experimental_ynn_fusion_type=""``: jaxlib 0.10's CPU compiler hands convolutions and
  dots to YNNPACK fusions by default (``ynn_fusion`` custom fusions in ``compiled.as_text()``).
  For this project's trunks those are slower than XLA's own Eigen convolutions, most of all for
  weight gradients: for Overfeat-7 at 224, 2-3.3× as long for the 3×3 and 5×5 layers and 6-8× for
  conv1 (7×7, stride 2, 3 input channels), in two runs of ``python -m sppnet_jax.bench.conv_layers``,
  which times each layer both ways. The whole training step is 1.4-1.8× faster without them.
- ``xla_cpu_copy_insertion_use_region_analysis=True``: without it the compiled training step
  copies every donated parameter before updating it in place (548 MB per step for Overfeat-7,
  fc6's 420 MB kernel among them); with it the update writes into the donated buffers directly.

Both are fields of XLA's debug options that only the CPU compiler reads. They go to
``jax.jit(..., compiler_options=...)`` rather than ``XLA_FLAGS``, so they hold for the network's
functions whatever the environment says and leave every other computation of the process as it
was.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax

NETWORK_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": "",
                                            "xla_cpu_copy_insertion_use_region_analysis": True}


def jit(fun: Callable | None = None, **jit_kwargs) -> Callable:
  """``jax.jit`` with ``NETWORK_COMPILER_OPTIONS``; usable as ``@jit``, ``@jit(static_argnums=...)``
  or ``jit(f, donate_argnums=...)``."""
  if fun is None:
    return functools.partial(jit, **jit_kwargs)
  return jax.jit(fun, compiler_options=NETWORK_COMPILER_OPTIONS, **jit_kwargs)
