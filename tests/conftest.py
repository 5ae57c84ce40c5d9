"""Shared test setup: CPU only, quiet and single-threaded torch, seeded generators."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
  """The torch oracles run on tiny tensors; one thread avoids fighting JAX for the cores."""
  try:
    import torch
  except ImportError:
    yield
    return
  previous = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(previous)


@pytest.fixture
def rng():
  return np.random.default_rng(0)
