"""The one image-decoding policy (sppnet_jax.data.decode), with hand-computed pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sppnet_jax.data import decode, sources
from sppnet_jax.detection import data as det_data


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def test_alpha_is_composited_over_white():
  rgba = np.array([[[100, 50, 0, 0], [100, 50, 0, 255], [100, 50, 0, 51]]], np.uint8)
  # a = 51/255 = 0.2: 100*0.2 + 255*0.8 = 224, 50*0.2 + 204 = 214, 0 + 204 = 204.
  np.testing.assert_array_equal(decode.to_rgb_uint8(rgba), [[[255, 255, 255], [100, 50, 0], [224, 214, 204]]])
  grey_alpha = np.array([[[10, 255], [10, 0]]], np.uint8)
  np.testing.assert_array_equal(decode.to_rgb_uint8(grey_alpha), [[[10, 10, 10], [255, 255, 255]]])


def test_bit_depths():
  np.testing.assert_array_equal(decode.to_rgb_uint8(np.array([[0, 257 * 10, 65535]], np.uint16))[0, :, 0],
                                [0, 10, 255])
  np.testing.assert_array_equal(decode.to_rgb_uint8(np.array([[0.0, 0.2, 1.0]]))[0, :, 0], [0, 51, 255])
  np.testing.assert_array_equal(decode.to_rgb_uint8(np.array([[0.0, 2.0, 200.0]]))[0, :, 0], [0, 2, 200])
  np.testing.assert_array_equal(decode.to_rgb_uint8(np.array([[True, False]]))[0, :, 0], [255, 0])
  np.testing.assert_array_equal(decode.to_rgb_uint8(np.array([[7, 255]], np.int64))[0, :, 0], [7, 255])
  # 16-bit alpha is scaled like the colour: 65535 is opaque.
  deep = np.array([[[257 * 40, 0, 0, 65535]]], np.uint16)
  np.testing.assert_array_equal(decode.to_rgb_uint8(deep), [[[40, 0, 0]]])


@pytest.mark.parametrize("bad, message", [
    (np.array([[0, 300]], np.int32), r"\[0, 300\].*uint16"),
    (np.array([[-1.0, 0.5]]), r"\[-1, 0.5\]"),
    (np.array([[np.nan]]), "NaN"),
    (np.zeros((2, 2, 5), np.uint8), "shape"),
    (np.zeros((0, 3, 3), np.uint8), "empty"),
    (np.array([["a"]], object), "numeric"),
])
def test_bad_pixels_are_refused(bad, message):
  with pytest.raises(ValueError, match=message):
    decode.to_rgb_uint8(bad, name="pic")


def test_files_and_bytes_follow_the_same_policy(tmp_path):
  rgba = np.zeros((4, 5, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 100, 51
  expected = decode.to_rgb_uint8(rgba)
  assert expected[0, 0].tolist() == [224, 204, 204]
  np.testing.assert_array_equal(decode.decode_image_bytes(_png(rgba)), expected)
  (tmp_path / "a.png").write_bytes(_png(rgba))
  np.testing.assert_array_equal(decode.decode_image_file(tmp_path / "a.png"), expected)
  deep = np.array([[0, 257 * 9, 65535]], np.uint16)
  (tmp_path / "d.png").write_bytes(_png(deep))
  assert decode.decode_image_file(tmp_path / "d.png")[0, :, 0].tolist() == [0, 9, 255]
  with pytest.raises(decode.CorruptImageError, match="cannot decode image 'x.jpg'"):
    decode.decode_image_bytes(b"not an image", "x.jpg")


def test_classification_and_detection_sources_share_it():
  assert sources.to_rgb_uint8 is decode.to_rgb_uint8 and sources.CorruptImageError is decode.CorruptImageError
  rgba = np.zeros((40, 40, 4), np.uint8)
  rgba[..., 1], rgba[..., 3] = 200, 51
  np.testing.assert_array_equal(det_data.check_image(rgba, "r"), decode.to_rgb_uint8(rgba))
  np.testing.assert_array_equal(det_data.check_image(_png(rgba), "r"), decode.to_rgb_uint8(rgba))


def test_the_image_extensions_are_the_formats_pillow_decodes():
  from PIL import features
  readable = decode.readable_extensions()
  assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif"} <= readable
  assert (".webp" in readable) == bool(features.check("webp"))  # this venv's Pillow has WebP
  # Written only (PDF), a stub without a handler (HDF5), identified only (MPEG), not an image at all.
  assert not {".pdf", ".h5", ".mpg", ".txt", ""} & readable
  assert decode.is_image_file("a/b/Photo.WEBP") == bool(features.check("webp"))
  assert decode.is_image_file("x.BMP") and not decode.is_image_file("notes.txt")


def test_webp_and_bmp_files_written_by_pillow_decode_exactly(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / "a.bmp")
  Image.fromarray(rgb).save(tmp_path / "a.webp", lossless=True)
  np.testing.assert_array_equal(decode.decode_image_file(tmp_path / "a.bmp"), rgb)
  np.testing.assert_array_equal(decode.decode_image_file(tmp_path / "a.webp"), rgb)
