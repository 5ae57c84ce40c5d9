"""Pooling ops against independent oracles.

The oracle for every bin is ``torch.nn.functional.adaptive_max_pool2d`` (bin ``i`` of ``n``
over ``L`` is ``[floor(i*L/n), ceil((i+1)*L/n))``), rearranged into the documented layout:
levels in order, each level's (n, n, C) block flattened row-major with channels contiguous.
"""

import logging

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from sppnet_jax.ops import bin_edges, check_levels, padded_spp, roi_spp, sliding_window_spp, spp, spp_output_dim
from sppnet_jax.ops.pooling import level_sources, max_pool

torch = pytest.importorskip("torch")
F = torch.nn.functional

ALL_LEVELS = (1, 2, 3, 4, 6, 7)
PAPER_LEVELS = (6, 3, 2, 1)

spp_jit = jax.jit(spp, static_argnames="levels")
roi_spp_jit = jax.jit(roi_spp, static_argnames="levels")


# ----------------------------------------------------------------------------------------
# Oracles (torch / numpy only)


def torch_spp(x, levels):
  """(B, H, W, C) numpy -> (B, C * sum(n*n)) with torch adaptive max pooling per level."""
  t = torch.from_numpy(np.array(x, np.float32).transpose(0, 3, 1, 2).copy())
  parts = [F.adaptive_max_pool2d(t, n).permute(0, 2, 3, 1).reshape(t.shape[0], -1) for n in levels]
  return torch.cat(parts, dim=1).numpy()


def clip_box(box, height, width):
  """The oracle's reading of a box: each coordinate clipped to the map."""
  x1, y1, x2, y2 = (int(v) for v in box)
  return (min(max(x1, 0), width - 1), min(max(y1, 0), height - 1),
          min(max(x2, 0), width - 1), min(max(y2, 0), height - 1))


def torch_roi_spp(features, boxes, valid, levels):
  """Crop each (clipped) box, then adaptive pooling; invalid rows are zero."""
  batch, height, width, channels = features.shape
  out = np.zeros((batch, boxes.shape[1], spp_output_dim(channels, levels)), np.float32)
  for b in range(batch):
    for r in range(boxes.shape[1]):
      if valid[b, r]:
        x1, y1, x2, y2 = clip_box(boxes[b, r], height, width)
        out[b, r] = torch_spp(features[b:b + 1, y1:y2 + 1, x1:x2 + 1], levels)[0]
  return out


def distinct_values(rng, shape):
  """Random float32 values that are pairwise different, so every max has a single arg-max."""
  size = int(np.prod(shape))
  return (rng.permutation(size).astype(np.float32) / size - 0.5).reshape(shape)


def eval_jaxpr_with_numpy(closed, *args):
  """Runs a traced program, evaluating the structural primitives with numpy.

  slice / reduce_max / stack / concatenate / reshape are evaluated exactly with numpy (these
  are all ``spp`` is made of); anything else falls back to JAX itself, so the helper stays
  correct if the op is rewritten.
  """
  jaxpr = closed.jaxpr
  env = {}

  def read(var):
    return var.val if isinstance(var, jax.extend.core.Literal) else env[var]

  for var, value in zip(jaxpr.constvars, closed.consts):
    env[var] = np.asarray(value)
  for var, value in zip(jaxpr.invars, args):
    env[var] = np.asarray(value)
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name, params = eqn.primitive.name, eqn.params
    if name == "slice" and params.get("strides") is None:
      outs = [ins[0][tuple(slice(s, e) for s, e in zip(params["start_indices"], params["limit_indices"]))]]
    elif name == "reduce_max":
      outs = [np.max(ins[0], axis=tuple(params["axes"]))]
    elif name == "stack":
      outs = [np.stack(ins, axis=params["axis"])]
    elif name == "concatenate":
      outs = [np.concatenate(ins, axis=params["dimension"])]
    elif name == "reshape" and params.get("dimensions") is None:
      outs = [np.reshape(ins[0], params["new_sizes"])]
    else:
      result = eqn.primitive.bind(*ins, **params)
      outs = [np.asarray(r) for r in (result if eqn.primitive.multiple_results else [result])]
    for var, value in zip(eqn.outvars, outs):
      env[var] = value
  return [read(v) for v in jaxpr.outvars]


# ----------------------------------------------------------------------------------------
# spp


def test_bin_edges_match_the_integer_rule_and_cover_the_map():
  for length in range(1, 200):
    for n in range(1, 16):
      edges = bin_edges(length, n)
      assert len(edges) == n
      assert edges[0][0] == 0 and edges[-1][1] == length
      for i, (s, e) in enumerate(edges):
        # The integer forms of ATen's AdaptivePooling.h start_index / end_index.
        assert s == (i // n) * length + ((i % n) * length) // n
        assert e == 1 + ((i + 1) * length - 1) // n
        assert s < e


def test_spp_every_size_up_to_40_against_torch(rng):
  """Every H, W in 1..40 with levels {1, 2, 3, 4, 6, 7}, float32.

  ``spp`` is a fixed sequence of static slices and maxima per input shape; compiling 1,600
  shapes would take minutes, so this sweep traces ``spp`` for each shape and evaluates the
  traced program exactly with numpy. ``test_spp_compiled_matches_torch`` runs the compiled
  program on a sample of shapes (including the awkward ones).
  """
  for height in range(1, 41):
    for width in range(1, 41):
      x = rng.standard_normal((2, height, width, 3)).astype(np.float32)
      closed = jax.make_jaxpr(lambda v: spp(v, ALL_LEVELS))(jax.ShapeDtypeStruct(x.shape, x.dtype))
      (got,) = eval_jaxpr_with_numpy(closed, x)
      assert got.shape == (2, 3 * sum(n * n for n in ALL_LEVELS))
      np.testing.assert_array_equal(got, torch_spp(x, ALL_LEVELS), err_msg=f"H={height} W={width}")


# Sizes where the paper's sliding-window rule fails, the 180- and 224-input maps, 1-wide maps.
COMPILED_SHAPES = [(1, 1), (1, 40), (40, 1), (2, 3), (5, 3), (7, 4), (10, 10), (11, 6), (13, 13), (14, 15),
                   (18, 18), (29, 6), (43, 57)]


@pytest.mark.parametrize("height,width", COMPILED_SHAPES)
def test_spp_compiled_matches_torch(rng, height, width):
  x = rng.standard_normal((2, height, width, 5)).astype(np.float32)
  got = np.asarray(spp_jit(x, levels=ALL_LEVELS))
  np.testing.assert_array_equal(got, torch_spp(x, ALL_LEVELS))


@pytest.mark.parametrize("height,width", [(13, 13), (10, 10), (3, 17)])
def test_spp_bfloat16(rng, height, width):
  """A max selects one input element, so bfloat16 output equals the oracle on the same bfloat16 values."""
  x = jnp.asarray(rng.standard_normal((2, height, width, 4)), jnp.bfloat16)
  got = spp_jit(x, levels=PAPER_LEVELS)
  assert got.dtype == jnp.bfloat16
  want = torch_spp(np.asarray(x.astype(jnp.float32)), PAPER_LEVELS)
  np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), want)


def test_spp_layout_is_level_then_row_major_bins_then_channels():
  """Hand-built 4x4 map: value = 100*channel + 10*row + col, levels (1, 2)."""
  rows, cols, chans = np.meshgrid(np.arange(4), np.arange(4), np.arange(2), indexing="ij")
  x = (100 * chans + 10 * rows + cols).astype(np.float32)[None]
  got = np.asarray(spp(x, (1, 2)))[0]
  # level 1: one bin, channels 0 and 1; level 2: bins (0,0), (0,1), (1,0), (1,1), each 2 channels.
  want = [33, 133, 11, 111, 13, 113, 31, 131, 33, 133]
  np.testing.assert_array_equal(got, want)


def test_spp_gradient_matches_torch_without_ties(rng):
  for shape, levels in [((2, 13, 13, 3), PAPER_LEVELS), ((1, 10, 10, 2), PAPER_LEVELS), ((2, 5, 7, 2), ALL_LEVELS)]:
    x = distinct_values(rng, shape)
    cot = rng.standard_normal((shape[0], spp_output_dim(shape[3], levels))).astype(np.float32)
    grad = jax.jit(jax.grad(lambda v, c: jnp.sum(spp(v, levels) * c)))(x, cot)

    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    parts = [F.adaptive_max_pool2d(t, n).permute(0, 2, 3, 1).reshape(shape[0], -1) for n in levels]
    (torch.cat(parts, 1) * torch.from_numpy(cot)).sum().backward()
    np.testing.assert_allclose(np.asarray(grad), t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_gradient_tie_rule():
  """JAX shares a tied maximum's gradient among the tied elements (torch gives it all to the
  first arg-max). The shares need not be equal, but they always sum to the incoming gradient
  and only tied maxima receive any."""
  # One bin over [[1, 1], [1, 0]]: three tied maxima.
  x = jnp.array([[1.0, 1.0], [1.0, 0.0]]).reshape(1, 2, 2, 1)
  grad = np.asarray(jax.jit(jax.grad(lambda v: spp(v, (1,)).sum() * 3.0))(x))[0, ..., 0]
  assert grad.sum() == pytest.approx(3.0)
  assert grad[1, 1] == 0.0 and (grad[x[0, ..., 0] == 1.0] > 0).all()

  t = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).reshape(1, 1, 2, 2).requires_grad_(True)
  (F.adaptive_max_pool2d(t, 1).sum() * 3.0).backward()
  np.testing.assert_array_equal(t.grad.numpy()[0, 0], [[3.0, 0.0], [0.0, 0.0]])  # torch: first arg-max only

  # A post-ReLU map with many tied zeros: per channel, the gradient sums to the sum of the
  # cotangents, for spp and for roi_spp alike.
  rng = np.random.default_rng(1)
  x = np.maximum(rng.standard_normal((1, 6, 5, 3)), 0).astype(np.float32)
  x[0, :3, :3] = 0.0  # a whole bin of zeros at level 2
  cot = rng.uniform(0.5, 1.5, (1, spp_output_dim(3, PAPER_LEVELS))).astype(np.float32)
  grad = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(spp(v, PAPER_LEVELS) * cot)))(x))
  np.testing.assert_allclose(grad.sum(axis=(0, 1, 2)), cot.reshape(-1, 3).sum(axis=0), rtol=1e-5)

  boxes = np.array([[[0, 0, 4, 5], [0, 0, 2, 2], [1, 2, 3, 5]]], np.int32)
  valid = np.ones((1, 3), bool)
  cot = rng.uniform(0.5, 1.5, (1, 3, spp_output_dim(3, PAPER_LEVELS))).astype(np.float32)
  grad = np.asarray(jax.jit(jax.grad(lambda v: jnp.sum(roi_spp(v, boxes, valid, PAPER_LEVELS) * cot)))(x))
  np.testing.assert_allclose(grad.sum(axis=(0, 1, 2)), cot.reshape(-1, 3).sum(axis=0), rtol=1e-5)
  assert (grad[x == 0] >= 0).all() and (grad >= 0).all()


# ----------------------------------------------------------------------------------------
# roi_spp


def all_boxes(height, width):
  return np.array([(x1, y1, x2, y2) for y1 in range(height) for y2 in range(y1, height)
                   for x1 in range(width) for x2 in range(x1, width)], np.int32)


def test_roi_spp_every_box_and_outside_boxes_against_torch(rng):
  height, width, channels = 7, 9, 4
  features = rng.standard_normal((2, height, width, channels)).astype(np.float32)
  features[1] -= 10.0  # all negative: a zero in image 1 can only come from masking

  inside = all_boxes(height, width)  # 1,260 boxes: every 1x1 box, every border box, the full map
  num = len(inside)
  # Boxes partly or wholly outside the map (coordinates in [-6, 15]).
  lo = rng.integers(-6, 16, (300, 2))
  span = rng.integers(0, 10, (300, 2))
  outside = np.concatenate([lo, lo + span], axis=1).astype(np.int32)
  outside = np.concatenate([outside, [[-5, -5, 20, 20], [-3, 2, -1, 4], [9, 0, 14, 6], [2, 7, 4, 12],
                                      [-4, -4, -2, -2], [12, 9, 13, 10]]]).astype(np.int32)
  assert (outside[:, 2] >= outside[:, 0]).all() and (outside[:, 3] >= outside[:, 1]).all()

  boxes = np.zeros((2, num, 4), np.int32)
  boxes[0] = inside
  boxes[1, :len(outside)] = outside
  boxes[1, len(outside):] = rng.integers(-20, 20, (num - len(outside), 4))  # garbage, possibly inverted
  valid = np.zeros((2, num), bool)
  valid[0] = True
  valid[1, :len(outside)] = True

  got = np.asarray(roi_spp_jit(features, boxes, valid, levels=ALL_LEVELS))
  np.testing.assert_array_equal(got, torch_roi_spp(features, boxes, valid, ALL_LEVELS))
  np.testing.assert_array_equal(got[1, len(outside):], 0.0)  # invalid rows: exactly zero

  # Boxes wholly outside land on the nearest border row/column, as documented.
  def row_of(box):
    return got[1, [tuple(b) for b in outside.tolist()].index(box)]
  np.testing.assert_array_equal(row_of((-3, 2, -1, 4)), torch_spp(features[1:, 2:5, 0:1], ALL_LEVELS)[0])
  np.testing.assert_array_equal(row_of((9, 0, 14, 6)), torch_spp(features[1:, 0:7, 8:9], ALL_LEVELS)[0])
  np.testing.assert_array_equal(row_of((-4, -4, -2, -2)), torch_spp(features[1:, 0:1, 0:1], ALL_LEVELS)[0])
  np.testing.assert_array_equal(row_of((12, 9, 13, 10)), torch_spp(features[1:, 6:7, 8:9], ALL_LEVELS)[0])
  np.testing.assert_array_equal(row_of((-5, -5, 20, 20)), torch_spp(features[1:], ALL_LEVELS)[0])


def test_roi_spp_on_a_detection_sized_map(rng):
  features = rng.standard_normal((1, 43, 57, 3)).astype(np.float32)
  x1 = rng.integers(0, 57, 64)
  y1 = rng.integers(0, 43, 64)
  boxes = np.stack([x1, y1, x1 + rng.integers(0, 40, 64), y1 + rng.integers(0, 30, 64)], -1)[None].astype(np.int32)
  boxes[0, 0] = [0, 0, 56, 42]
  valid = np.ones((1, 64), bool)
  got = np.asarray(roi_spp_jit(features, boxes, valid, levels=PAPER_LEVELS))
  np.testing.assert_array_equal(got, torch_roi_spp(features, boxes, valid, PAPER_LEVELS))
  np.testing.assert_array_equal(got[0, 0], torch_spp(features, PAPER_LEVELS)[0])


def test_roi_spp_bfloat16(rng):
  features = jnp.asarray(rng.standard_normal((1, 6, 8, 3)), jnp.bfloat16)
  boxes = all_boxes(6, 8)[None]
  valid = np.ones(boxes.shape[:2], bool)
  got = roi_spp_jit(features, boxes, valid, levels=PAPER_LEVELS)
  assert got.dtype == jnp.bfloat16
  want = torch_roi_spp(np.asarray(features.astype(jnp.float32)), boxes, valid, PAPER_LEVELS)
  np.testing.assert_array_equal(np.asarray(got.astype(jnp.float32)), want)


class _CompileCounter(logging.Handler):

  def __init__(self):
    super().__init__()
    self.compiles = []

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("Compiling") and "roi_spp" in message:
      self.compiles.append(message)


def test_roi_spp_new_boxes_of_the_same_shape_do_not_recompile(rng):
  features = rng.standard_normal((2, 11, 12, 3)).astype(np.float32)
  valid = np.ones((2, 17), bool)
  def roi_spp_under_test(f, b, v):  # a function of its own, so its compile cache starts empty
    return roi_spp(f, b, v, PAPER_LEVELS)

  fn = jax.jit(roi_spp_under_test)
  counter = _CompileCounter()
  logger = logging.getLogger("jax")
  logger.addHandler(counter)
  try:
    with jax.log_compiles():
      for seed in range(3):
        corners = np.random.default_rng(seed).integers(0, 11, (2, 17, 2))
        boxes = np.concatenate([corners, corners + seed], -1).astype(np.int32)
        got = fn(features, boxes, valid)
        np.testing.assert_array_equal(np.asarray(got), torch_roi_spp(features, boxes, valid, PAPER_LEVELS))
  finally:
    logger.removeHandler(counter)
  assert len(counter.compiles) == 1, counter.compiles
  if hasattr(fn, "_cache_size"):
    assert fn._cache_size() == 1


def test_roi_spp_gradient_matches_torch_without_ties(rng):
  features = distinct_values(rng, (2, 9, 7, 3))
  corners = rng.integers(-2, 9, (2, 24, 2))
  boxes = np.concatenate([corners, corners + rng.integers(0, 8, (2, 24, 2))], -1).astype(np.int32)
  boxes[0, 0] = [0, 0, 6, 8]
  boxes[1, 1] = [3, 4, 3, 4]
  valid = rng.random((2, 24)) < 0.8
  cot = rng.standard_normal((2, 24, spp_output_dim(3, PAPER_LEVELS))).astype(np.float32)
  grad = jax.jit(jax.grad(lambda f: jnp.sum(roi_spp(f, boxes, valid, PAPER_LEVELS) * cot)))(features)

  t = torch.from_numpy(features.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  total = 0.0
  for b in range(2):
    for r in range(24):
      if valid[b, r]:
        x1, y1, x2, y2 = clip_box(boxes[b, r], 9, 7)
        crop = t[b:b + 1, :, y1:y2 + 1, x1:x2 + 1]
        row = torch.cat([F.adaptive_max_pool2d(crop, n).permute(0, 2, 3, 1).reshape(-1) for n in PAPER_LEVELS])
        total = total + (row * torch.from_numpy(cot[b, r])).sum()
  total.backward()
  np.testing.assert_allclose(np.asarray(grad), t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_coarser_levels_are_unions_of_finer_bins_when_they_divide():
  """The rule roi_spp derives coarser levels by: for n | m, bin i of n is exactly the union of
  bins i*q .. i*q + q - 1 of m (q = m / n), for every length, including lengths below n."""
  for length in range(1, 120):
    for m in (2, 3, 4, 6, 8, 12):
      fine = bin_edges(length, m)
      for n in (k for k in range(1, m) if m % k == 0):
        q = m // n
        for i, (s, e) in enumerate(bin_edges(length, n)):
          group = fine[i * q:(i + 1) * q]
          assert (group[0][0], group[-1][1]) == (s, e)
          assert all(b[0] <= a[1] for a, b in zip(group, group[1:]))  # no gap between neighbours
  assert level_sources((6, 3, 2, 1)) == {1: 2, 2: 6, 3: 6, 6: None}
  assert level_sources((7, 5, 4, 2)) == {2: 4, 4: None, 5: None, 7: None}


@pytest.mark.parametrize("levels", [PAPER_LEVELS, (8, 4, 2, 1), (5, 4, 7), (4, 3, 2, 1)])
@pytest.mark.parametrize("side", [(1, 3), (1, 8), (1, 30), (10, 30)])
def test_roi_spp_every_table_depth_against_torch(rng, levels, side):
  """Box sizes that need each table depth (small boxes skip the table), on a map larger than the
  boxes, for nested and non-nested level sets."""
  height, width = 29, 33
  features = rng.standard_normal((2, height, width, 3)).astype(np.float32)
  size = rng.integers(side[0], side[1] + 1, (2, 40, 2))
  corner = rng.integers(0, 4, (2, 40, 2)) + rng.integers(-2, 30, (2, 40, 2))
  boxes = np.concatenate([corner, corner + size - 1], -1).astype(np.int32)
  valid = rng.random((2, 40)) < 0.9
  got = np.asarray(roi_spp_jit(features, boxes, valid, levels=levels))
  np.testing.assert_array_equal(got, torch_roi_spp(features, boxes, valid, levels))


def test_roi_spp_padding_rows_do_not_change_the_result(rng):
  """Invalid rows holding whole-map boxes do not push small valid boxes onto the deep table,
  and the result is the same as with the padding rows removed."""
  features = rng.standard_normal((1, 20, 24, 5)).astype(np.float32)
  corner = rng.integers(0, 17, (1, 30, 2))
  boxes = np.concatenate([corner, corner + rng.integers(0, 3, (1, 30, 2))], -1).astype(np.int32)
  padded = np.concatenate([boxes, np.tile([[[0, 0, 23, 19]]], (1, 10, 1))], 1).astype(np.int32)
  valid = np.concatenate([np.ones((1, 30), bool), np.zeros((1, 10), bool)], 1)
  got = np.asarray(roi_spp_jit(features, padded, valid, levels=PAPER_LEVELS))
  np.testing.assert_array_equal(got[:, :30], np.asarray(roi_spp_jit(features, boxes, valid[:, :30],
                                                                    levels=PAPER_LEVELS)))
  np.testing.assert_array_equal(got[:, :30], torch_roi_spp(features, boxes, valid[:, :30], PAPER_LEVELS))
  np.testing.assert_array_equal(got[:, 30:], 0.0)


@pytest.mark.parametrize("channel_blocks", [False, True])
def test_roi_spp_in_chunks_against_torch(rng, monkeypatch, channel_blocks):
  """Enough boxes that roi_spp pools them in chunks, with a box count that is not a multiple of
  the chunk (the last chunk is shifted back and recomputes a few boxes); optionally with a table
  budget that splits the 6 channels into two blocks of 3."""
  from sppnet_jax.ops import pooling
  channels = 6
  monkeypatch.setattr(pooling, "SINGLE_PASS_BYTES", 0)
  monkeypatch.setattr(pooling, "CHUNK_BYTES", 7 * 50 * 3 * 4)  # 7 boxes a chunk, 3 or 6 channels at a time
  if channel_blocks:
    monkeypatch.setattr(pooling, "TABLE_BYTES", 4 * 3 * (2 * 15 * 18) * 4)  # tables of 3 channels
  features = rng.standard_normal((2, 15, 18, channels)).astype(np.float32)
  corner = rng.integers(-1, 16, (2, 51, 2))
  boxes = np.concatenate([corner, corner + rng.integers(0, 15, (2, 51, 2))], -1).astype(np.int32)
  boxes[0, 0] = [0, 0, 17, 14]  # needs the deepest table
  valid = rng.random((2, 51)) < 0.9
  valid[0, 0] = True
  got = np.asarray(jax.jit(roi_spp, static_argnames="levels")(features, boxes, valid, levels=PAPER_LEVELS))
  np.testing.assert_array_equal(got, torch_roi_spp(features, boxes, valid, PAPER_LEVELS))
  empty = roi_spp(features, np.zeros((2, 0, 4), np.int32), np.zeros((2, 0), bool), PAPER_LEVELS)
  assert empty.shape == (2, 0, spp_output_dim(channels, PAPER_LEVELS))


# ----------------------------------------------------------------------------------------
# padded_spp and sliding_window_spp


def test_padded_spp_equals_spp_of_each_valid_crop(rng):
  features = rng.standard_normal((4, 12, 10, 3)).astype(np.float32)
  valid_hw = np.array([[12, 10], [5, 7], [1, 1], [12, 3]], np.int32)
  got = np.asarray(jax.jit(padded_spp, static_argnames="levels")(features, valid_hw, levels=ALL_LEVELS))
  for b, (h, w) in enumerate(valid_hw):
    np.testing.assert_array_equal(got[b], torch_spp(features[b:b + 1, :h, :w], ALL_LEVELS)[0])


def test_sliding_window_rule_gives_9x9_bins_on_10x10_with_n6(rng):
  x = rng.standard_normal((2, 10, 10, 3)).astype(np.float32)
  (level,) = sliding_window_spp(x, (6,))
  assert level.shape == (2, 9, 9, 3)  # window ceil(10/6) = 2, stride floor(10/6) = 1
  want = np.stack([np.stack([x[:, i:i + 2, j:j + 2].max(axis=(1, 2)) for j in range(9)], 1) for i in range(9)], 1)
  np.testing.assert_array_equal(np.asarray(level), want)


def test_sliding_window_rule_equals_spp_on_13x13(rng):
  x = rng.standard_normal((2, 13, 13, 4)).astype(np.float32)
  levels = sliding_window_spp(x, PAPER_LEVELS)
  assert [lv.shape[1:3] for lv in levels] == [(6, 6), (3, 3), (2, 2), (1, 1)]
  flat = np.concatenate([np.asarray(lv).reshape(2, -1) for lv in levels], axis=1)
  np.testing.assert_array_equal(flat, np.asarray(spp_jit(x, levels=PAPER_LEVELS)))
  np.testing.assert_array_equal(flat, torch_spp(x, PAPER_LEVELS))


# ----------------------------------------------------------------------------------------
# Bad input: a clear error, never a wrong number


@pytest.mark.parametrize("levels,words", [((), "empty"), ([], "empty"), ((6, 0), "positive"), ((-1,), "positive"),
                                           ((2.0,), "positive"), ((True,), "positive"), (None, "sequence"),
                                           (3, "sequence")])
def test_bad_levels(levels, words):
  with pytest.raises(ValueError, match=words):
    check_levels(levels)
  x = np.zeros((1, 4, 4, 2), np.float32)
  with pytest.raises(ValueError, match=words):
    spp(x, levels)
  with pytest.raises(ValueError, match=words):
    roi_spp(x, np.zeros((1, 1, 4), np.int32), np.ones((1, 1), bool), levels)
  with pytest.raises(ValueError, match=words):
    sliding_window_spp(x, levels)


def test_bad_features():
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    spp(np.zeros((4, 4, 2), np.float32))
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    spp(np.zeros((1, 1, 4, 4, 2), np.float32))
  with pytest.raises(TypeError, match="floating point"):
    spp(np.zeros((1, 4, 4, 2), np.int32))
  with pytest.raises(TypeError, match="floating point"):
    roi_spp(np.zeros((1, 4, 4, 2), np.int32), np.zeros((1, 1, 4), np.int32), np.ones((1, 1), bool))
  with pytest.raises(ValueError, match="empty spatial extent"):
    spp(np.zeros((1, 0, 4, 2), np.float32))


def test_bad_boxes():
  x = np.zeros((2, 5, 5, 2), np.float32)
  valid = np.ones((2, 3), bool)
  with pytest.raises(TypeError, match="integer feature-map cells.*project_boxes"):
    roi_spp(x, np.zeros((2, 3, 4), np.float32), valid)
  with pytest.raises(ValueError, match=r"\(B, R, 4\)"):
    roi_spp(x, np.zeros((2, 3), np.int32), valid)
  with pytest.raises(ValueError, match=r"\(B, R, 4\)"):
    roi_spp(x, np.zeros((2, 3, 5), np.int32), valid)
  with pytest.raises(ValueError, match=r"B = 2"):
    roi_spp(x, np.zeros((1, 3, 4), np.int32), valid[:1])
  with pytest.raises(ValueError, match=r"valid must be \(B, R\)"):
    roi_spp(x, np.zeros((2, 3, 4), np.int32), np.ones((2, 4), bool))
  inverted = np.zeros((2, 3, 4), np.int32)
  inverted[1, 2] = [3, 1, 2, 4]
  with pytest.raises(ValueError, match=r"box \(1, 2\).*inverted"):
    roi_spp(x, inverted, valid)
  # The same inverted box in a padding row is fine: the row is zero.
  valid[1, 2] = False
  out = np.asarray(roi_spp_jit(x + 1.0, inverted, valid, levels=PAPER_LEVELS))
  np.testing.assert_array_equal(out[1, 2], 0.0)
  assert (out[0] == 1.0).all()


def test_bad_valid_extents_for_padded_spp():
  x = np.zeros((2, 6, 5, 2), np.float32)
  with pytest.raises(ValueError, match=r"valid_hw must be \(B, 2\)"):
    padded_spp(x, np.array([6, 5]))
  with pytest.raises(ValueError, match="valid_hw"):
    padded_spp(x, np.array([[6, 5], [7, 5]]))  # taller than the map
  with pytest.raises(ValueError, match="valid_hw"):
    padded_spp(x, np.array([[6, 5], [0, 5]]))  # empty image


# ----------------------------------------------------------------------------------------
# max_pool: torch's max_pool2d values and gradient (all of it to the first arg-max)


@pytest.mark.parametrize("shape, window, stride", [((2, 110, 110, 4), 3, 2), ((2, 109, 109, 3), 3, 3),
                                                   ((1, 27, 28, 5), 3, 2), ((1, 12, 13, 2), 2, 2),
                                                   ((1, 9, 11, 3), 3, 1), ((1, 10, 10, 2), 2, 3)])
def test_max_pool_values_and_first_argmax_gradient_match_torch(rng, shape, window, stride):
  """Small integers make ties common (zeros after a ReLU and equal positive values), so the test fails
  unless every tie sends the gradient to the first maximum in row-major window order, as torch does.
  Integer gradients keep the sums exact."""
  x = np.maximum(rng.integers(-3, 4, shape), 0).astype(np.float32)
  pooled, vjp = jax.jit(lambda v: jax.vjp(lambda u: max_pool(u, window, stride), v))(jnp.asarray(x))
  g = rng.integers(-5, 6, pooled.shape).astype(np.float32)
  t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
  expected = F.max_pool2d(t, window, stride)
  expected.backward(torch.from_numpy(g.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_array_equal(np.asarray(pooled), expected.detach().numpy().transpose(0, 2, 3, 1))
  np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), t.grad.numpy().transpose(0, 2, 3, 1))


def test_max_pool_rejects_maps_smaller_than_the_window():
  with pytest.raises(ValueError, match="at least 3x3"):
    max_pool(jnp.zeros((1, 2, 5, 1)), 3, 2)
