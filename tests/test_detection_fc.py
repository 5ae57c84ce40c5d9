"""fc6/fc7 over windows: chunked, 16-bit input converted on the device, against a float64 oracle."""

import numpy as np
import pytest

from sppnet_jax.detection import features


def _head(rng, d: int, f: int) -> dict:
  return {"fc6": {"kernel": rng.normal(0, d**-0.5, (d, f)).astype(np.float32), "bias": rng.normal(0, 0.1, f).astype(np.float32)},
          "fc7": {"kernel": rng.normal(0, f**-0.5, (f, f)).astype(np.float32), "bias": rng.normal(0, 0.1, f).astype(np.float32)}}


def _oracle(head: dict, x: np.ndarray) -> np.ndarray:
  relu = lambda v: np.maximum(v, 0)
  h = {k: {n: a.astype(np.float64) for n, a in v.items()} for k, v in head.items()}
  fc6 = relu(x.astype(np.float64) @ h["fc6"]["kernel"] + h["fc6"]["bias"])
  return relu(fc6 @ h["fc7"]["kernel"] + h["fc7"]["bias"])


@pytest.mark.parametrize("rows", [0, 1, 7, 8, 21])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fc7_features_equal_the_float64_oracle_in_any_chunking(rng, rows, dtype):
  head = _head(rng, 40, 24)
  pooled = rng.random((rows, 40)).astype(dtype)
  got = features.fc7_features(head, pooled, batch=8)
  assert got.shape == (rows, 24) and got.dtype == np.float32
  np.testing.assert_allclose(got, _oracle(head, pooled), rtol=1e-5, atol=1e-5)
  # the chunk size changes nothing but float rounding: one chunk of every row against chunks of 8
  np.testing.assert_allclose(got, features.fc7_features(head, pooled, batch=32), rtol=1e-6, atol=1e-6)


def test_sixteen_bit_rows_are_converted_exactly(rng):
  """float16 rows converted inside the compiled call give what the float32 copy of them gives."""
  head = _head(rng, 40, 24)
  pooled = (rng.random((9, 40)) * 30).astype(np.float16)
  np.testing.assert_array_equal(features.fc7_features(head, pooled, batch=8),
                                features.fc7_features(head, pooled.astype(np.float32), batch=8))
