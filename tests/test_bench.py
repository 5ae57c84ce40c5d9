"""Benchmark helpers: the PyTorch peer against the Flax model, FLOP counts against XLA, peaks, bandwidth model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sppnet_jax import models, ops
from sppnet_jax.bench import conv_layers, hardware, op_profile, pooling, proposals_peer, suite, table10, train_step

torch = pytest.importorskip("torch")
from sppnet_jax.bench import torch_peer  # noqa: E402

SMALL = dict(num_classes=10, width=0.125, fc_width=32, dropout=0.0)


def random_params(model: models.SPPNet, seed: int):
  """Gaussian parameters of ``model``'s shapes: kernels at He scale, biases nonzero so their copy is checked too."""
  rng = np.random.default_rng(seed)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), images)["params"]

  def draw(leaf):
    std = np.sqrt(2.0 / np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
    return jnp.asarray(rng.standard_normal(leaf.shape) * std, jnp.float32)

  return jax.tree.map(draw, shapes)


@pytest.fixture(scope="module")
def small_models():
  """name -> (Flax model, its params, the torch peer holding the same params)."""
  out = {}
  for seed, name in enumerate(("zf5", "overfeat7")):
    model = models.create_model(name, **SMALL)
    params = random_params(model, seed)
    out[name] = (model, params, torch_peer.load_flax_params(torch_peer.from_flax(model), params).eval())
  return out


def nchw(images: np.ndarray):
  return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


@pytest.mark.parametrize("name, hw", [("zf5", (64, 64)), ("zf5", (72, 104)), ("overfeat7", (72, 104))])
def test_torch_peer_logits_match_flax(small_models, rng, name, hw):
  model, params, peer = small_models[name]
  images = rng.standard_normal((2, *hw, 3)).astype(np.float32)
  expected = np.asarray(model.apply({"params": params}, images))
  with torch.no_grad():
    got = peer(nchw(images).contiguous(memory_format=torch.channels_last)).numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_torch_spp_layout_matches_ops_spp(rng):
  x = rng.standard_normal((2, 7, 11, 5)).astype(np.float32)
  expected = np.asarray(ops.spp(jnp.asarray(x), (4, 3, 2, 1)))
  got = torch_peer.spp(nchw(x).contiguous(memory_format=torch.channels_last), (4, 3, 2, 1)).numpy()
  np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("spec", [models.LRN("within", 3, 5e-2), models.LRN("across", 5, 1e-1)])
def test_torch_lrn_matches_models_lrn(rng, spec):
  x = rng.standard_normal((2, 6, 7, 8)).astype(np.float32) * 3
  expected = np.asarray(models.lrn(jnp.asarray(x), spec)).transpose(0, 3, 1, 2)
  np.testing.assert_allclose(torch_peer.lrn(nchw(x), spec).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", [models.LRN("within", 3, 5e-2), models.LRN("within", 3, 5e-2, 0.6),
                                  models.LRN("across", 5, 1e-1)])
def test_lrn_gradient_matches_torch_autograd(rng, spec):
  """models.lrn's written-out gradient (within) and autodiff (across) against torch's autograd of the peer's LRN."""
  x = np.maximum(rng.standard_normal((2, 6, 7, 8)).astype(np.float32) * 3, 0.0)
  g = rng.standard_normal((2, 6, 7, 8)).astype(np.float32)
  expected = np.asarray(jax.vjp(lambda v: models.lrn(v, spec), jnp.asarray(x))[1](jnp.asarray(g))[0])
  t = nchw(x).requires_grad_(True)
  torch_peer.lrn(t, spec).backward(nchw(g))
  np.testing.assert_allclose(t.grad.numpy().transpose(0, 2, 3, 1), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["zf5", "overfeat7"])
def test_torch_train_step_matches_jax_step(small_models, rng, name):
  """The two timed steps (``bench.train_step.sgd_step`` and the torch peer's): two SGD-momentum steps
  from the same parameters give the same losses and parameters."""
  model, params, _ = small_models[name]
  images = rng.standard_normal((3, 64, 80, 3)).astype(np.float32)
  labels = rng.integers(0, 10, 3)
  jax_params = jax.tree.map(jnp.array, params)
  opt_state = optax.trace(decay=train_step.MOMENTUM).init(jax_params)
  jax_step = train_step.sgd_step(model)
  peer = torch_peer.load_flax_params(torch_peer.from_flax(model), params).train()
  optimizer = torch.optim.SGD(peer.parameters(), lr=train_step.LEARNING_RATE, momentum=train_step.MOMENTUM)
  step = torch_peer.make_train_step(peer, optimizer, "float32", compile_model=False)
  for _ in range(2):
    jax_params, opt_state, loss = jax_step(jax_params, opt_state, jnp.asarray(images), jnp.asarray(labels, jnp.int32),
                                           jax.random.key(0))
    torch_loss = step(nchw(images), torch.from_numpy(labels))
    np.testing.assert_allclose(float(torch_loss), float(loss), rtol=1e-5)
  for index, conv in enumerate(peer.convs, start=1):
    kernel = np.asarray(jax_params["trunk"][f"conv{index}"]["kernel"]).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(conv.weight.detach().numpy(), kernel, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(peer.fc8.bias.detach().numpy(), np.asarray(jax_params["head"]["fc8"]["bias"]),
                             rtol=1e-4, atol=1e-6)


def test_conv_layer_inputs_follow_the_trunks():
  """ZF-5 at 224 (the paper's table prints 55×55 after pool1, floor rounding gives 54; conv3-5 13×13 as
  printed) and Overfeat-7 at 180, worked by hand from the layer specs."""
  zf5 = {name: (shape, conv.kernel, conv.stride) for name, shape, conv in conv_layers.conv_inputs("zf5", 224, 8)}
  assert zf5 == {"conv1": ((8, 224, 224, 3), 7, 2), "conv2": ((8, 54, 54, 96), 5, 2),
                 "conv3": ((8, 13, 13, 256), 3, 1), "conv4": ((8, 13, 13, 384), 3, 1),
                 "conv5": ((8, 13, 13, 384), 3, 1)}
  overfeat = [shape for _, shape, _ in conv_layers.conv_inputs("overfeat7", 180, 2)]
  assert overfeat == [(2, 180, 180, 3), (2, 29, 29, 96), (2, 14, 14, 256)] + [(2, 14, 14, 512)] * 4


def test_slim_conv_inputs_and_flops_by_hand():
  """The slim synthetic ZF-5 (16, 64, 96, 96, 64) at 96, batch 32: conv1 7x7/2 pad 1 gives 46x46 (floor((96 + 2 -
  7) / 2) + 1); pool1 3/2 gives 22; conv2 5x5/2 pad 2 gives 11 (floor(21 / 2) + 1); pool2 gives 5 (conv3-5 at 5x5,
  pad 1)."""
  slim = conv_layers.conv_inputs("zf5", 96, 32, (16, 64, 96, 96, 64))
  assert [shape for _, shape, _ in slim] == [(32, 96, 96, 3), (32, 22, 22, 16), (32, 5, 5, 64), (32, 5, 5, 96),
                                            (32, 5, 5, 96)]
  _, shape, conv1 = slim[0]
  assert conv_layers.conv_flops(shape, conv1) == 2 * 32 * 46 * 46 * 7 * 7 * 3 * 16
  _, shape, conv3 = slim[2]
  assert conv_layers.conv_flops(shape, conv3) == 2 * 32 * 5 * 5 * 9 * 64 * 96


@pytest.mark.parametrize("stride,pad", [(2, 1), (1, 2)])
def test_timed_conv_passes_agree_with_torch(stride, pad):
  """The three timed passes compute what they are named for: each against torch's autograd on the
  same tensors (the JAX passes draw their own, so torch is fed those)."""
  conv = models.Conv(features=6, kernel=5, stride=stride, pad=pad)
  shape = (2, 13, 11, 4)
  passes = conv_layers.jax_passes(shape, conv, None)
  y = np.asarray(passes["forward"]())
  rng = np.random.default_rng(0)  # the draws of jax_passes, in its order
  x = rng.standard_normal(shape).astype(np.float32)
  w = (rng.standard_normal((5, 5, 4, 6)) * 0.01).astype(np.float32)
  g = rng.standard_normal(y.shape).astype(np.float32)
  tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
  ty = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=pad)
  ty.backward(torch.from_numpy(g.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(passes["input grad"]()), tx.grad.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(passes["weight grad"]()), tw.grad.numpy().transpose(2, 3, 1, 0),
                             rtol=1e-4, atol=1e-4)


def test_interleaved_alternates_runners_and_times_every_round():
  calls = []
  times = train_step.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
  assert calls == ["a", "b"] * 4
  assert [len(v) for v in times.values()] == [3, 3] and all(t >= 0 for v in times.values() for t in v)


def test_table10_fc_flops_by_hand():
  """ZF-5 with SPP {6, 3, 2, 1}: 256 channels x 50 bins = 12,800 inputs to fc6 (4,096), then fc7 (4,096)."""
  zf5 = models.create_model("zf5", num_classes=21)
  assert table10.pooled_dim(zf5) == 12800
  assert table10.fc_flops(zf5, 2000) == 2 * 2000 * (12800 * 4096 + 4096 * 4096)


def test_table10_photos_are_colour_photographs():
  images = table10.photos()
  assert [im.shape for im in images] == [(512, 512, 3), (400, 600, 3), (427, 640, 3)]
  assert all(im.dtype == np.uint8 and im.std() > 20 for im in images)
  windows, seconds = table10.windows_for([images[1][::4, ::4]], max_windows=7)
  assert windows[0].shape == (7, 4) and seconds[0] > 0


def test_torch_benchmark_row_runs():
  model = models.create_model("zf5", **SMALL)
  row = torch_peer.train_step_benchmark(model, "bfloat16", 64, 2, repeats=1)
  assert row["mode"] == "eager" and row["images_per_s"] > 0 and row["runs"] == 1


def test_train_step_flops_by_hand():
  """zf5 cut after conv1 (conv 7x7/2 pad 1, LRN, pool 3/2) at 64x64: conv map 30x30x12, pooled 14x14x12."""
  model = models.create_model("zf5", depth=1, **SMALL)
  conv = 2 * 30 * 30 * 12 * (7 * 7 * 3)
  fc = 2 * (12 * 50 * 32 + 32 * 32 + 32 * 10)
  assert hardware.forward_flops(model, (64, 64)) == conv + fc
  assert hardware.train_step_flops(model, (64, 64), 4) == 3 * 4 * (conv + fc)


@pytest.mark.parametrize("hw", [(64, 64), (112, 96)])
def test_forward_flops_close_to_xla(hw):
  """The analytic forward count agrees with XLA's cost analysis within 10 %.

  The two differ by design: XLA counts only the kernel taps that fall inside the unpadded
  input (fewer FLOPs, most visible on small maps, where padding is a large share of each
  window) and adds about one FLOP per element for bias adds, ReLU, LRN and pooling, which
  the analytic convention leaves out. For this slim ZF-5 the two effects net to XLA counting
  about 6 % less at 64x64 and 2 % less at 112x96.
  """
  model = models.create_model("zf5", **SMALL)
  images = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
  forward = jax.jit(lambda p, x: model.apply({"params": p}, x))
  xla = forward.lower(params, images).compile().cost_analysis()["flops"]
  assert xla == pytest.approx(2 * hardware.forward_flops(model, hw), rel=0.1)


@pytest.mark.parametrize("kind, name", [("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
                                        ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
                                        ("NVIDIA H200", "NVIDIA H200 SXM"),
                                        ("NVIDIA H200 NVL", "NVIDIA H200 NVL")])
def test_spec_sheet_lookup(kind, name):
  sheet = hardware.find_spec_sheet(kind)
  assert sheet.name == name
  peaks = hardware.spec_peaks(sheet, kind)
  assert peaks.flops_per_s["bfloat16"] == pytest.approx(sheet.bf16_sparse_tflops / 2 * 1e12)
  assert peaks.flops_per_s["float32"] == pytest.approx(sheet.tf32_sparse_tflops / 2 * 1e12)
  assert "spec" in peaks.flops_label["float32"] and "spec" in peaks.bytes_label


def test_unknown_devices_have_no_spec_sheet():
  assert hardware.find_spec_sheet("cpu") is None
  assert hardware.find_spec_sheet("NVIDIA A100-SXM4-80GB") is None


def test_measured_peaks_are_labelled_as_measured():
  peaks = hardware.measured_peaks("cpu", matmul_n=256, stream_bytes=2**22, dtypes=("float32",))
  assert peaks.flops_per_s["float32"] > 0 and peaks.bytes_per_s > 0
  assert peaks.flops_label["float32"] == "of measured float32 matmul peak"
  assert peaks.measured


def test_pooling_bandwidth_uses_minimal_bytes():
  peaks = hardware.Peaks("cpu", "measured", {"float32": 1e11}, {"float32": "x"}, 1e10, "of measured bandwidth")
  rows = [{"op": "roi_spp", "impl": "roi_spp (jit, sparse table)", "dtype": "float32", "shape": "43x57x256",
           "boxes": "64 small", "ms": 2.0, "min_bytes": pooling.minimal_bytes(43 * 57 * 256, 64, 256, (6, 3, 2, 1), 4)},
          {"op": "roi_spp", "impl": "torch crop + adaptive_max_pool2d loop", "dtype": "float32",
           "shape": "43x57x256", "boxes": "64 small", "ms": 1.0, "min_bytes": None},
          {"op": "spp", "impl": "spp (jit, static slices)", "dtype": "bfloat16", "shape": "32x13x13x256",
           "boxes": "whole map", "ms": 1.0,
           "min_bytes": pooling.minimal_bytes(32 * 13 * 13 * 256, 32, 256, (6, 3, 2, 1), 2)}]
  out = suite.pooling_bandwidth(rows, peaks)
  assert [r["op"] for r in out] == ["roi_spp", "spp"]
  roi_bytes = (43 * 57 * 256 + 64 * 50 * 256) * 4
  assert out[0]["min_mb"] == pytest.approx(roi_bytes / 1e6)
  assert out[0]["bandwidth_fraction"] == pytest.approx(roi_bytes / 2e-3 / 1e10)
  assert out[1]["min_mb"] == pytest.approx(32 * (13 * 13 * 256 + 50 * 256) * 2 / 1e6)


def test_train_table_names_its_denominator_and_shows_skipped_peer_rows():
  peaks = hardware.Peaks("cpu", "measured", {"float32": 1e11}, {"float32": "of measured float32 matmul peak"}, 1e10,
                         "of measured streaming bandwidth")
  jax_row = {"model": "zf5", "dtype": "float32", "input": 224, "batch": 4, "framework": "jax", "step_ms": 500.0,
             "images_per_s": 8.0, "compile_s": 5.0, "note": "jit"}
  rows = [suite._with_flops(jax_row, models.create_model("zf5"), peaks),
          {"model": "zf5", "dtype": "float32", "input": 224, "batch": 4, "framework": "torch",
           "note": "skipped: torch not installed"}]
  table = suite.format_train_table(rows, peaks)
  assert "fraction of measured matmul peak" in table and "MFU (of spec peak)" not in table
  assert "skipped: torch not installed" in table
  assert rows[0]["mfu"] == pytest.approx(rows[0]["tflops_per_s"] * 1e12 / 1e11)


def test_proposals_benchmark_counts_every_gt_box():
  from sppnet_jax.detection.data import get_detection_source
  rows = suite.proposals_benchmark(2, max_sides=(250,))
  gt = sum(len(get_detection_source("synthetic", "test", num_examples=2)[i]["boxes"]) for i in range(2))
  (row,) = rows
  assert row["gt_boxes"] == gt and row["boxes_per_image"] > 0 and row["seconds_per_image"] > 0
  assert 0.0 <= row["recall_0.7"] <= row["recall_0.5"] <= 1.0
  assert "copy with long side 250" in suite.format_proposals_table(rows)


def _roi_pool_stand_in(nchw, rois, output_size, spatial_scale):
  """torchvision roi_pool's result for integer in-map boxes at scale 1: adaptive pooling of each crop."""
  assert spatial_scale == 1.0
  crops = [nchw[int(b):int(b) + 1, :, int(y1):int(y2) + 1, int(x1):int(x2) + 1] for b, x1, y1, x2, y2 in rois.tolist()]
  return torch.cat([torch.nn.functional.adaptive_max_pool2d(c, output_size) for c in crops])


def test_torchvision_rows_time_only_identical_outputs():
  from sppnet_jax.bench import torchvision_peer
  kwargs = dict(num_boxes=(5,), kinds=("small", "random", "large"), map_hw=(9, 11), channels=3, repeats=1)
  rows = torchvision_peer.roi_spp_rows(ops=(torch, _roi_pool_stand_in), **kwargs)
  assert [r["kind"] for r in rows] == ["small", "random", "large"]
  assert all(r["identical"] and r["roi_spp_ms"] > 0 and r["torchvision_ms"] > 0 for r in rows)
  assert rows[0]["torchvision_over_roi_spp"] == pytest.approx(rows[0]["torchvision_ms"] / rows[0]["roi_spp_ms"])

  def wrong(*args):
    return _roi_pool_stand_in(*args) + 1.0

  rows = torchvision_peer.roi_spp_rows(ops=(torch, wrong), **kwargs)
  assert all(r["identical"] is False and r["roi_spp_ms"] is None and r["torchvision_ms"] is None for r in rows)
  assert "OUTPUT DIFFERS" in torchvision_peer.format_roi_table(rows)

  from sppnet_jax.detection import boxes as box_ops

  def nms_stand_in(boxes, scores, threshold):  # the peer's boxes carry x2 + 1 and y2 + 1
    return torch.from_numpy(box_ops.nms(boxes.numpy() - np.array([0, 0, 1, 1]), scores.numpy(), threshold))

  rows = torchvision_peer.nms_rows(num_boxes=(300,), repeats=1, ops=(torch, nms_stand_in))
  assert rows[0]["identical"] and rows[0]["ours_ms"] > 0 and rows[0]["kept"] > 0
  rows = torchvision_peer.nms_rows(num_boxes=(300,), repeats=1, ops=(torch, lambda b, s, t: nms_stand_in(b, s, t)[1:]))
  assert rows[0]["identical"] is False and rows[0]["ours_ms"] is None
  assert "DIFFER" in torchvision_peer.format_nms_table(rows)


def test_peer_boxes_kinds():
  from sppnet_jax.bench import torchvision_peer
  rng = np.random.default_rng(0)
  for kind in torchvision_peer.BOX_KINDS:
    b = torchvision_peer.peer_boxes(rng, 500, (43, 57), kind)
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    assert (b[:, :2] >= 0).all() and (b[:, 2] < 57).all() and (b[:, 3] < 43).all() and (w >= 1).all() and (h >= 1).all()
    if kind == "small":
      assert (w == 3).all() and (h == 3).all()
    if kind == "large":
      assert (w >= 0.9 * 57).all() and (h >= 0.9 * 43).all()
  with pytest.raises(ValueError, match="box kind"):
    torchvision_peer.peer_boxes(rng, 3, (4, 4), "huge")


def test_detection_does_not_import_bench():
  import subprocess
  import sys
  code = ("import sys, sppnet_jax.detection.timing, sppnet_jax.detection.features; "
          "sys.exit(any(m.startswith('sppnet_jax.bench') for m in sys.modules))")
  assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("name", ["zf5", pytest.param("overfeat7", marks=pytest.mark.slow)])
def test_fast_pool_and_lrn_give_the_reference_gradients(small_models, rng, name):
  """The whole network's loss gradient with ops.pooling.max_pool and models.lrn equals the one with
  flax's max_pool and the reduce-window/power LRN (op_profile.reference_ops), within float rounding.
  (The two LRNs round differently, so a near-tie in a later max pool may pick the other cell: the
  absolute tolerance is a thousandth of each gradient's largest entry.)"""
  model, params, _ = small_models[name]
  images = jnp.asarray(rng.standard_normal((2, 72, 88, 3)).astype(np.float32))

  def grads():
    loss = lambda p: jnp.sum(model.apply({"params": p}, images) ** 2)
    return jax.grad(loss)(params)

  fast = grads()
  with op_profile.reference_ops():
    reference = grads()
  assert models.lrn is not op_profile.reference_lrn
  for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(reference)):
    want = np.asarray(want)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=1e-3 * np.abs(want).max())


def test_op_profile_labels_name_direction_and_layer():
  hlo = ('  %fusion.3 = f32[8,27,27,256]{3,2,1,0} fusion(%a), metadata={op_name="jit(step)/transpose(jvp(SPPNet))/'
         'SPPNet.conv_features/trunk/conv2/conv_general_dilated" stack_frame_id=1}\n'
         '  ROOT %ynn_fusion.10 = f32[96,5,5,256]{3,2,1,0} fusion(%b, %c)\n'
         '  %sub.1 = f32[4096]{0} subtract(%d, %e), metadata={op_name="jit(step)/sub"}\n')
  table = op_profile.instructions(hlo)
  assert op_profile.label(*table["fusion.3"]) == "backward trunk/conv2/conv_general_dilated"
  assert op_profile.label(*table["ynn_fusion.10"]) == "(no source op) f32[96,5,5,256]{3,2,1,0}"
  assert op_profile.label(*table["sub.1"]) == "update sub"


def test_drawn_photo_boxes_lie_inside_their_photos():
  boxes = proposals_peer.drawn_boxes()
  assert set(boxes) == {"astronaut", "coffee", "rocket", "chelsea"}
  for name, b in boxes.items():
    h, w = proposals_peer.photo(name).shape[:2]
    assert b.shape[1] == 4 and len(b) >= 5
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w - 1).all() and (b[:, 3] <= h - 1).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()


def test_opencv_fast_boxes_are_inclusive_corners_inside_the_image():
  pytest.importorskip("cv2.ximgproc")
  image = proposals_peer.photo("coffee")[::4, ::4]
  boxes = proposals_peer.opencv_fast(image)
  assert len(boxes) > 10 and (boxes[:, :2] >= 0).all()
  assert (boxes[:, 2] <= image.shape[1] - 1).all() and (boxes[:, 3] <= image.shape[0] - 1).all()


def test_input_speedups_pair_the_paths_round_by_round():
  from sppnet_jax.bench import input as bench_input

  def row(r, path, workers, per_core):
    return {"round": r, "path": path, "workers": workers, "images_per_core_s": per_core, "images_per_s": 2 * per_core}

  # Round 0 runs at half the speed of round 1; the paired ratios are 2 and 2.5 (workers 0).
  rows = [row(0, "before", 0, 100), row(0, "after", 0, 200), row(1, "before", 0, 200), row(1, "after", 0, 500),
          row(0, "before", 1, 100), row(0, "after", 1, 300), row(1, "before", 1, 100), row(1, "after", 1, 300)]
  by_workers = {s["workers"]: s for s in bench_input.speedups(rows)}
  assert by_workers[0]["speedup"] == pytest.approx(math.sqrt(2 * 2.5))
  assert by_workers[0]["speedup_low"] < by_workers[0]["speedup"] < by_workers[0]["speedup_high"]
  assert by_workers[0]["before_per_core_s"] == 150 and by_workers[0]["after_images_per_s"] == 700
  assert by_workers[1]["speedup"] == by_workers[1]["speedup_low"] == by_workers[1]["speedup_high"] == pytest.approx(3)
