"""The four networks of the paper's Table 1: map sizes, fc6 widths, parameter counts, forwards.

Full-size networks are only traced (``jax.eval_shape``); real forwards use slim versions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sppnet_jax import models
from sppnet_jax.models import LRN, create_model, lrn, summary

NAMES = ("zf5", "convnet5", "overfeat5", "overfeat7")


def images(height, width=None, batch=1):
  return jax.ShapeDtypeStruct((batch, height, width or height, 3), jnp.float32)


def abstract_params(model, height=224, width=None):
  return jax.eval_shape(model.init, jax.random.key(0), images(height, width))


def layer_counts(params):
  """Parameter count of each conv / fc layer, by name."""
  counts = {}
  for part in ("trunk", "head"):
    for name, layer in params["params"][part].items():
      counts[name] = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(layer))
  return counts


# ----------------------------------------------------------------------------------------
# Map sizes and fc6 widths


@pytest.mark.parametrize("name,size,side,channels", [
    ("zf5", 224, 13, 256), ("convnet5", 224, 13, 256), ("overfeat5", 224, 18, 512), ("overfeat7", 224, 18, 512),
    # At 180: ZF-5 224->110->54->27->13 becomes 180->88->43->22->10; Convnet*-5 180->44->44->21->21->10;
    # Overfeat 180->87->29->29->14.
    ("zf5", 180, 10, 256), ("convnet5", 180, 10, 256), ("overfeat5", 180, 14, 512), ("overfeat7", 180, 14, 512),
])
def test_last_conv_map_size(name, size, side, channels):
  model = create_model(name)
  params = abstract_params(model, size)
  conv = jax.eval_shape(lambda p, x: model.apply(p, x, method="conv_features"), params, images(size, batch=2))
  assert conv.shape == (2, side, side, channels)
  assert models.conv_map_size(model.layers, size) == side


@pytest.mark.parametrize("name,spp,width", [
    ("zf5", True, 256 * (36 + 9 + 4 + 1)),  # 12,800
    ("convnet5", True, 12_800),
    ("zf5", False, 6 * 6 * 256),  # 9,216: pool5 3x3/2 on 13x13 gives 6x6
    ("convnet5", False, 9_216),
    ("overfeat5", True, 512 * 50),  # 25,600
    ("overfeat7", True, 25_600),
    ("overfeat5", False, 6 * 6 * 512),  # 18,432: pool5 3x3/3 on 18x18 gives 6x6
    ("overfeat7", False, 18_432),
])
def test_fc6_input_width(name, spp, width):
  model = create_model(name, spp=spp)
  params = abstract_params(model)
  assert params["params"]["head"]["fc6"]["kernel"].shape == (width, 4096)
  side, channels = (18, 512) if name.startswith("overfeat") else (13, 256)  # the 224-input map
  conv = jax.ShapeDtypeStruct((1, side, side, channels), jnp.float32)
  pooled = jax.eval_shape(lambda p, c: model.apply(p, c, method="pool"), params, conv)
  assert pooled.shape == (1, width)


# ----------------------------------------------------------------------------------------
# Parameter counts from Table 1: weights k*k*c_in*c_out plus c_out biases.

ZF5_COUNTS = {
    "conv1": 96 * 7 * 7 * 3 + 96,  # 14,208
    "conv2": 256 * 5 * 5 * 96 + 256,  # 614,656
    "conv3": 384 * 3 * 3 * 256 + 384,  # 885,120
    "conv4": 384 * 3 * 3 * 384 + 384,  # 1,327,488
    "conv5": 256 * 3 * 3 * 384 + 256,  # 884,992
    "fc6": 12_800 * 4096 + 4096,  # 52,432,896
    "fc7": 4096 * 4096 + 4096,  # 16,781,312
    "fc8": 4096 * 1000 + 1000,  # 4,097,000
}
CONVNET5_COUNTS = dict(ZF5_COUNTS, conv1=96 * 11 * 11 * 3 + 96)  # 34,944
OVERFEAT5_COUNTS = {
    "conv1": 96 * 7 * 7 * 3 + 96,
    "conv2": 256 * 5 * 5 * 96 + 256,
    "conv3": 512 * 3 * 3 * 256 + 512,  # 1,180,160
    "conv4": 512 * 3 * 3 * 512 + 512,  # 2,359,808
    "conv5": 512 * 3 * 3 * 512 + 512,
    "fc6": 25_600 * 4096 + 4096,  # 104,861,696
    "fc7": 4096 * 4096 + 4096,
    "fc8": 4096 * 1000 + 1000,
}
OVERFEAT7_COUNTS = dict(OVERFEAT5_COUNTS, conv6=512 * 3 * 3 * 512 + 512, conv7=512 * 3 * 3 * 512 + 512)


def test_hand_counts_are_what_the_comments_say():
  assert ZF5_COUNTS["conv1"] == 14_208 and ZF5_COUNTS["fc6"] == 52_432_896
  assert sum(ZF5_COUNTS.values()) == 77_037_672
  assert CONVNET5_COUNTS["conv1"] == 34_944
  assert OVERFEAT5_COUNTS["conv3"] == 1_180_160 and OVERFEAT5_COUNTS["fc6"] == 104_861_696


@pytest.mark.parametrize("name,want", [("zf5", ZF5_COUNTS), ("convnet5", CONVNET5_COUNTS),
                                       ("overfeat5", OVERFEAT5_COUNTS), ("overfeat7", OVERFEAT7_COUNTS)])
def test_parameter_counts(name, want):
  assert layer_counts(abstract_params(create_model(name))) == want


def test_no_spp_parameter_counts():
  zf = layer_counts(abstract_params(create_model("zf5", spp=False)))
  assert zf["fc6"] == 9_216 * 4096 + 4096  # 37,752,832
  assert zf == dict(ZF5_COUNTS, fc6=37_752_832)
  overfeat = layer_counts(abstract_params(create_model("overfeat7", spp=False)))
  assert overfeat["fc6"] == 18_432 * 4096 + 4096 == 75_501_568


def test_classes_change_only_fc8():
  counts = layer_counts(abstract_params(create_model("zf5", num_classes=21)))
  assert counts == dict(ZF5_COUNTS, fc8=4096 * 21 + 21)


# ----------------------------------------------------------------------------------------
# Real forwards on slim networks


@pytest.mark.parametrize("name", ["zf5", "overfeat5"])
def test_spp_net_takes_any_size_with_the_same_params(name):
  model = create_model(name, width=0.125, fc_width=64, num_classes=10)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  apply = jax.jit(model.apply)
  rng = np.random.default_rng(0)
  outputs = {}
  for size in [(224, 224), (180, 180), (200, 260)]:
    x = rng.uniform(0, 1, (2, *size, 3)).astype(np.float32)
    logits = apply(params, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    outputs[size] = logits
  # The pieces compose to the whole: conv_features -> pool -> classify.
  x = rng.uniform(0, 1, (1, 180, 180, 3)).astype(np.float32)
  conv = jax.jit(lambda p, v: model.apply(p, v, method="conv_features"))(params, x)
  side = 10 if name == "zf5" else 14
  assert conv.shape == (1, side, side, model.layers[-1].features)
  pooled = jax.jit(lambda p, c: model.apply(p, c, method="pool"))(params, conv)
  assert pooled.shape == (1, model.layers[-1].features * 50)
  logits = jax.jit(lambda p, f: model.apply(p, f, method="classify"))(params, pooled)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(apply(params, x)), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
  model = create_model("zf5", width=0.125, fc_width=64, num_classes=5, depth=2)
  x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.key(0), x)
  apply = jax.jit(model.apply, static_argnames="train")
  a = apply(params, x)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(apply(params, x)))
  b = apply(params, x, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------------------
# LRN against Caffe's formulas, written out directly in numpy


def caffe_within_channel(x, size, alpha, beta):
  """Caffe WITHIN_CHANNEL: x * (1 + alpha/size^2 * sum of x^2 over a zero-padded size x size window)^-beta."""
  _, height, width, _ = x.shape
  half = size // 2
  out = np.empty_like(x, dtype=np.float64)
  for y in range(height):
    for z in range(width):
      window = x[:, max(y - half, 0):y + half + 1, max(z - half, 0):z + half + 1].astype(np.float64)
      total = (window ** 2).sum(axis=(1, 2))
      out[:, y, z] = x[:, y, z] * (1.0 + alpha / size**2 * total) ** -beta
  return out


def caffe_across_channels(x, size, alpha, beta):
  """Caffe ACROSS_CHANNELS (k = 1): x * (1 + alpha/size * sum of x^2 over size neighbouring channels)^-beta."""
  channels = x.shape[-1]
  half = size // 2
  out = np.empty_like(x, dtype=np.float64)
  for c in range(channels):
    window = x[..., max(c - half, 0):c + half + 1].astype(np.float64)
    out[..., c] = x[..., c] * (1.0 + alpha / size * (window ** 2).sum(-1)) ** -beta
  return out


def test_lrn_within_channel_matches_caffe():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 6, 4)).astype(np.float32) * 30
  # The released ZF-5's setting, and a strong one where the normalisation is large.
  for spec in [models.TRUNKS["zf5"][1], LRN("within", 3, 0.5, 0.75), LRN("within", 5, 2.0, 0.6)]:
    assert spec.kind == "within"
    want = caffe_within_channel(x, spec.size, spec.alpha, spec.beta)
    np.testing.assert_allclose(np.asarray(lrn(jnp.asarray(x), spec)), want, rtol=2e-5, atol=1e-5)
  assert models.TRUNKS["zf5"][1] == LRN("within", 3, 5e-5, 0.75)


def test_lrn_across_channels_matches_caffe():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 3, 4, 9)).astype(np.float32) * 30
  for spec in [LRN("across", 5, 1e-4, 0.75), LRN("across", 3, 0.5, 0.75)]:
    want = caffe_across_channels(x, spec.size, spec.alpha, spec.beta)
    np.testing.assert_allclose(np.asarray(lrn(jnp.asarray(x), spec)), want, rtol=2e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------
# summary


def test_summary_zf5():
  text = summary(create_model("zf5"), 224)
  for expected in ["110x110x96", "54x54x96", "27x27x256", "13x13x256", "13x13x384", "spp [6, 3, 2, 1]", "12800",
                   "52,432,896", "16,781,312", "4,097,000", "14,208", "77,037,672"]:
    assert expected in text, (expected, text)
  text = summary(create_model("zf5"), 180)
  assert "10x10x256" in text and "12800" in text
  text = summary(create_model("zf5", spp=False), 224)
  assert "pool5 3x3/2" in text and "9216" in text and "37,752,832" in text


def test_summary_overfeat_non_square():
  text = summary(create_model("overfeat7"), (224, 260))
  # width 260: conv1 127, pool 3/3 -> 42, pool 2/2 -> 21.
  for expected in ["109x127x96", "36x42x96", "18x21x512", "25600", "104,861,696"]:
    assert expected in text, (expected, text)


# ----------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("name,smallest", [
    # ZF-5: pool2 needs 3 cells in -> conv2 out 3 -> pool1 out 5 -> conv1 out 11 -> (s + 2 - 7)//2 + 1 >= 11 -> 25.
    ("zf5", 25),
    # Convnet*-5: pool(3,2) needs 3 -> conv3 3 -> pool(3,2) in 7 -> conv2 7 -> conv1 7 -> (s + 4 - 11)//4 + 1 >= 7 -> 31.
    ("convnet5", 31),
    # Overfeat: pool(2,2) needs 2 -> conv2 2 -> pool(3,3) in 6 -> (s - 7)//2 + 1 >= 6 -> 17.
    ("overfeat5", 17),
])
def test_too_small_image_names_the_smallest_size(name, smallest):
  model = create_model(name)
  with pytest.raises(ValueError, match=f"smallest side that works is {smallest} pixels"):
    abstract_params(model, smallest - 1)
  with pytest.raises(ValueError, match="too small"):
    abstract_params(model, 224, smallest - 1)
  assert models.min_image_size(model.layers) == smallest
  conv = jax.eval_shape(lambda p, x: model.apply(p, x, method="conv_features"), abstract_params(model, 224),
                        images(smallest))
  assert conv.shape[1:3] == (1, 1)


def test_bad_images_and_names():
  model = create_model("zf5", width=0.125, fc_width=64)
  with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((224, 224, 3), jnp.float32))
  with pytest.raises(ValueError, match="unknown trunk 'vgg16'.*zf5"):
    create_model("vgg16")
  with pytest.raises(ValueError, match="width must be positive"):
    create_model("zf5", width=0)
  with pytest.raises(ValueError, match="empty"):
    create_model("zf5", levels=())
  with pytest.raises(ValueError, match="positive"):
    create_model("zf5", levels=(6, 0))
