"""Tests of the data package: synthetic data, sources, augmentation and pipelines."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sppnet_jax.data import augment, pipeline, sources, synthetic
from sppnet_jax.data.synthetic import CLASS_NAMES, SyntheticClassification, SyntheticDetection

# Small sizes keep the pipeline tests fast on a CPU.
CROP, SHORT, SMALL = 48, 56, 36


def _numbered_image(h: int, w: int) -> np.ndarray:
  """uint8 (h, w, 3) image whose pixel (y, x) holds y * w + x in every channel."""
  values = np.arange(h * w, dtype=np.uint8).reshape(h, w)
  return np.repeat(values[..., None], 3, axis=2)


def _list_source(shapes: list[tuple[int, int]]) -> list[dict]:
  rng = np.random.default_rng(0)
  return [{'image': rng.integers(0, 256, (h, w, 3), dtype=np.uint8), 'label': i % 3}
          for i, (h, w) in enumerate(shapes)]


# --- synthetic -------------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed_split_index():
  a = SyntheticClassification('train', 20, seed=3)
  b = SyntheticClassification('train', 20, seed=3)
  for i in (0, 7, 19):
    assert np.array_equal(a[i]['image'], b[i]['image'])
    assert a[i]['label'] == b[i]['label']
  assert not np.array_equal(a[0]['image'], SyntheticClassification('train', 20, seed=4)[0]['image'])
  assert not np.array_equal(a[0]['image'],
                            SyntheticClassification('validation', 20, seed=3)[0]['image'])
  d1, d2 = SyntheticDetection('train', 5, seed=1), SyntheticDetection('train', 5, seed=1)
  assert np.array_equal(d1[2]['image'], d2[2]['image'])
  assert np.array_equal(d1[2]['objects']['bbox'], d2[2]['objects']['bbox'])


def test_synthetic_classification_examples_look_like_photos():
  src = SyntheticClassification('train', 300, seed=0)
  labels, extents, shapes = [], {}, []
  for i in range(len(src)):
    image, obj = src.render(i)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert 160 <= min(image.shape[:2]) <= 320
    ratio = image.shape[1] / image.shape[0]
    assert 3 / 4 - 0.01 <= ratio <= 16 / 9 + 0.01
    y0, x0, y1, x1 = obj.box
    assert 0 <= y0 < y1 <= image.shape[0] and 0 <= x0 < x1 <= image.shape[1]
    labels.append(obj.label)
    extents.setdefault(obj.label, []).append(obj.extent)
    shapes.append(image.shape[:2])
  assert len(CLASS_NAMES) >= 10
  assert set(labels) == set(range(len(CLASS_NAMES)))
  assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)
  for label, ext in extents.items():
    assert max(ext) / min(ext) >= 4.0, (CLASS_NAMES[label], min(ext), max(ext))
  assert src[5]['label'] == src.render(5)[1].label


def test_synthetic_detection_boxes_are_tight_and_inside():
  src = SyntheticDetection('train', 40, seed=0)
  difficult, counts = 0, []
  for i in range(len(src)):
    ex = src[i]
    image, objects = ex['image'], ex['objects']
    h, w = image.shape[:2]
    assert 250 <= min(h, w) <= 400 and 400 <= max(h, w) <= 500
    boxes = objects['bbox']
    assert boxes.dtype == np.float32 and boxes.shape == (len(objects['label']), 4)
    assert objects['label'].dtype == np.int64 and objects['is_difficult'].dtype == bool
    assert 1 <= len(boxes) <= 5
    assert np.all(boxes >= 0) and np.all(boxes <= 1)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert isinstance(ex['image/filename'], str)
    counts.append(len(boxes))
    difficult += int(objects['is_difficult'].sum())
    _, objs, masks = src.render(i, return_masks=True)
    for k, (obj, mask) in enumerate(zip(objs, masks)):
      rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
      tight = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1)
      assert obj.box == tight
      np.testing.assert_allclose(boxes[k] * np.array([h, w, h, w]), tight, atol=1e-3)
  assert difficult > 0 and max(counts) >= 4


def test_synthetic_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match='num_examples'):
    SyntheticClassification('train', -1)
  with pytest.raises(ValueError, match='min_side'):
    SyntheticClassification('train', 1, min_side=300, max_side=200)
  with pytest.raises(IndexError, match='out of range'):
    SyntheticClassification('train', 3)[3]


# --- augmentation ----------------------------------------------------------------------------

def test_five_crop_positions_are_whole_image_corners_and_centre():
  image = _numbered_image(8, 12)  # short side 8: no resize at short_side=8
  offsets = augment.five_crop_offsets(8, 12, 4)
  assert offsets == [(2, 4), (0, 0), (0, 8), (4, 0), (4, 8)]
  expected = {int(image[t, l, 0]) for t, l in offsets}  # top-left pixel value of each crop
  assert expected == {28, 0, 8, 48, 56}
  seen = set()
  for k in range(60):
    c = augment.train_crop(image, np.random.default_rng(k), crop_size=4, short_side=8)
    assert c.shape == (4, 4, 3)
    t, l = divmod(int(c[0, 0, 0]), 12)
    assert np.array_equal(c, image[t:t + 4, l:l + 4])
    seen.add(int(c[0, 0, 0]))
  assert seen == expected
  ten = augment.ten_view(image, crop_size=4, short_side=8)
  assert ten.shape == (10, 4, 4, 3)
  for k, (t, l) in enumerate(offsets):
    assert np.array_equal(ten[k], image[t:t + 4, l:l + 4])
    assert np.array_equal(ten[k + 5], image[t:t + 4, l:l + 4][:, ::-1])
  assert np.array_equal(augment.center_crop_view(image, 4, 8), image[2:6, 4:8])


def test_random_positions_and_resize_short_side():
  image = _numbered_image(10, 15)
  tops_lefts = set()
  for k in range(100):
    c = augment.train_crop(image, np.random.default_rng(k), crop_size=4, short_side=10,
                           positions='random')
    tops_lefts.add(divmod(int(c[0, 0, 0]), 15))
  assert len(tops_lefts) > 5
  big = np.zeros((300, 400, 3), np.uint8)
  assert augment.resize_short_side(big, 64).shape == (64, 85, 3)
  assert augment.resize_short_side(big.transpose(1, 0, 2), 64).shape == (85, 64, 3)
  assert augment.resize_short_side(big, 64).dtype == np.uint8
  assert augment.resize_short_side(big.astype(np.float64), 64).dtype == np.float32
  with pytest.raises(ValueError, match='short_side'):
    augment.train_crop(big, np.random.default_rng(0), crop_size=64, short_side=32)


def test_flip():
  image = _numbered_image(4, 6)
  assert np.array_equal(augment.horizontal_flip(image), image[:, ::-1])
  flips = sum(int(augment.random_flip(image, np.random.default_rng(k))[0, 0, 0] != 0)
              for k in range(400))
  assert 150 < flips < 250


def test_pca_noise_is_a_bounded_zero_mean_colour_shift():
  image = np.full((5, 7, 3), 100, np.uint8)
  shifts = []
  for k in range(2000):
    out = augment.pca_color_noise(image, np.random.default_rng(k), std=0.1)
    assert out.dtype == np.float32
    delta = out - 100.0
    assert np.allclose(delta, delta[0, 0])  # the same shift for every pixel
    shifts.append(delta[0, 0])
  shifts = np.array(shifts)
  # |alpha| < 5 std for 2000 draws; the largest eigen-component dominates.
  bound = 255 * np.abs(augment.IMAGENET_EIGVEC) @ (augment.IMAGENET_EIGVAL * 0.5)
  assert np.all(np.abs(shifts) <= bound)
  assert np.all(np.abs(shifts.mean(0)) < 0.3)
  assert 2.0 < shifts.std(0)[0] < 4.5  # about 255 * 0.2175 * 0.1 * 0.57 = 3.2
  assert np.array_equal(augment.pca_color_noise(image, np.random.default_rng(0), std=0.0), image)


def test_mean_resizing_and_normalisation():
  ramp = np.broadcast_to(np.linspace(0, 255, 224, dtype=np.float32)[None, :, None],
                         (224, 224, 3))
  small = augment.mean_for_size(ramp, 180, 120)
  assert small.shape == (180, 120, 3) and small.dtype == np.float32
  assert np.all(np.diff(small[0, :, 0]) > 0)  # still a left-to-right ramp
  assert abs(float(small.mean()) - float(ramp.mean())) < 1.0
  const = augment.mean_for_size(np.full((224, 224, 3), 117.0, np.float32), 90, 90)
  np.testing.assert_allclose(const, 117.0, atol=1e-3)
  assert augment.mean_for_size(128.0, 5, 5) == 128.0
  image = np.full((180, 120, 3), 200, np.uint8)
  np.testing.assert_allclose(augment.normalize(image, ramp), (200.0 - small) / 64.0, atol=1e-5)
  np.testing.assert_allclose(augment.normalize(image), (200.0 - 128.0) / 64.0)
  with pytest.raises(ValueError, match='mean'):
    augment.mean_for_size(np.zeros((4, 4)), 2, 2)


def test_per_image_standardisation():
  # Channel 0 holds 0, 10, 20, 30 (mean 15, std sqrt(125)); channel 1 is 100, 100, 100, 104
  # (std sqrt(3) < 8: floored at 8); channel 2 is flat.
  image = np.zeros((2, 2, 3), np.uint8)
  image[..., 0] = [[0, 10], [20, 30]]
  image[..., 1] = [[100, 100], [100, 104]]
  image[..., 2] = 77
  out = augment.normalize(image, augment.PER_IMAGE)
  np.testing.assert_allclose(out[..., 0], (np.array([[0, 10], [20, 30]]) - 15.0) / np.sqrt(125.0), rtol=1e-6)
  np.testing.assert_allclose(out[..., 1], np.array([[-1.0, -1.0], [-1.0, 3.0]]) / 8.0, rtol=1e-6)
  np.testing.assert_array_equal(out[..., 2], 0.0)
  assert augment.mean_for_size(augment.PER_IMAGE, 90, 90) == augment.PER_IMAGE
  with pytest.raises(ValueError, match="per_image"):
    augment.normalize(image, "per-image")


# --- pipelines -------------------------------------------------------------------------------

def test_train_batches_are_deterministic_resumable_and_static():
  src = SyntheticClassification('train', 26, seed=0, min_side=60, max_side=90)
  kw = dict(batch_size=4, seed=5, epoch=1, crop_size=CROP, short_side=SHORT)
  full = list(pipeline.train_batches(src, **kw))
  assert len(full) == pipeline.steps_per_epoch(src, 4) == 6
  for b in full:
    assert b['image'].shape == (4, CROP, CROP, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (4,) and b['label'].dtype == np.int32
  resumed = list(pipeline.train_batches(src, start_step=4, **kw))
  assert len(resumed) == 2
  for a, b in zip(full[4:], resumed):
    assert np.array_equal(a['image'], b['image']) and np.array_equal(a['label'], b['label'])
  again = list(pipeline.train_batches(src, **kw))
  assert all(np.array_equal(a['image'], b['image']) for a, b in zip(full, again))
  other = list(pipeline.train_batches(src, **{**kw, 'epoch': 2}))
  assert not np.array_equal(full[0]['label'], other[0]['label']) or \
    not np.array_equal(full[0]['image'], other[0]['image'])
  with pytest.raises(ValueError, match='start_step'):
    pipeline.train_batches(src, start_step=7, **kw)


def test_second_size_input_is_the_resized_crop():
  src = SyntheticClassification('train', 8, seed=1, min_side=60, max_side=90)
  kw = dict(batch_size=4, seed=2, epoch=0, crop_size=CROP, short_side=SHORT)
  big = list(pipeline.train_batches(src, pca_std=0.0, **kw))
  small = list(pipeline.train_batches(src, pca_std=0.0, resize_to=SMALL, **kw))
  for b, s in zip(big, small):
    assert s['image'].shape == (4, SMALL, SMALL, 3)
    assert np.array_equal(b['label'], s['label'])
    for x, y in zip(b['image'], s['image']):
      crop_u8 = np.round(x * 64.0 + 128.0).astype(np.uint8)  # exact: x = (u - 128) / 64
      expected = augment.normalize(augment.resize_image(crop_u8, SMALL))
      np.testing.assert_array_equal(y, expected)
  # With colour noise (a per-image constant shift) the two still agree up to rounding.
  big = next(pipeline.train_batches(src, **kw))
  small = next(pipeline.train_batches(src, resize_to=SMALL, **kw))
  for x, y in zip(big['image'], small['image']):
    np.testing.assert_allclose(augment.resize_image(x, SMALL), y, atol=1.5 / 64)


def test_train_batches_subtract_the_resized_mean_image():
  src = SyntheticClassification('train', 4, seed=1, min_side=60, max_side=90)
  mean = pipeline.estimate_mean_image(src, 4, crop_size=CROP, short_side=SHORT)
  assert mean.shape == (CROP, CROP, 3) and mean.dtype == np.float32
  kw = dict(batch_size=4, seed=0, epoch=0, crop_size=CROP, short_side=SHORT, resize_to=SMALL)
  plain = next(pipeline.train_batches(src, mean=0.0, **kw))['image']
  centred = next(pipeline.train_batches(src, mean=mean, **kw))['image']
  np.testing.assert_allclose(centred, plain - augment.mean_for_size(mean, SMALL, SMALL) / 64.0,
                             atol=1e-4)


def test_eval_crop_and_ten_views_pad_the_last_batch():
  src = _list_source([(60, 80)] * 5)
  crop = lambda image: augment.normalize(augment.center_crop_view(image, CROP, SHORT))
  batches = list(pipeline.eval_batches(src, prepare=crop, batch_size=4))
  assert [b['image'].shape for b in batches] == [(4, CROP, CROP, 3)] * 2
  assert batches[1]['mask'].tolist() == [True, False, False, False]
  assert batches[1]['index'].tolist() == [4, -1, -1, -1]
  assert np.all(batches[1]['image'][1:] == 0)
  expected = augment.normalize(augment.center_crop_view(src[4]['image'], CROP, SHORT))
  np.testing.assert_array_equal(batches[1]['image'][0], expected)
  ten_views = lambda image: np.stack([augment.normalize(v) for v in augment.ten_view(image, CROP, SHORT)])
  ten = list(pipeline.eval_batches(src, prepare=ten_views, batch_size=4))
  assert [b['image'].shape for b in ten] == [(4, 10, CROP, CROP, 3)] * 2
  assert int(sum(b['mask'].sum() for b in ten)) == 5


def test_eval_full_view_buckets_pad_and_report_valid_hw():
  # Full views at short side 56: 56x75, 56x70 (one bucket 64x96), 56x112, 75x56.
  src = _list_source([(60, 80), (80, 60), (60, 75), (30, 60), (40, 40)])
  full = lambda image: augment.normalize(augment.full_view(image, SHORT))
  batches = list(pipeline.eval_batches(src, prepare=full, batch_size=2, bucket=32))
  seen = []
  for b in batches:
    n, bh, bw, _ = b['image'].shape
    assert n == 2 and bh % 32 == 0 and bw % 32 == 0
    assert b['valid_hw'].dtype == np.int32 and b['mask'].dtype == bool
    for r in range(n):
      h, w = b['valid_hw'][r]
      if not b['mask'][r]:
        assert (h, w) == (0, 0) and b['index'][r] == -1 and np.all(b['image'][r] == 0)
        continue
      i = int(b['index'][r])
      seen.append(i)
      view = augment.normalize(augment.full_view(src[i]['image'], SHORT))
      assert (h, w) == view.shape[:2]
      assert pipeline.bucket_shape(h, w, 32) == (bh, bw)
      np.testing.assert_array_equal(b['image'][r, :h, :w], view)
      assert np.all(b['image'][r, h:] == 0) and np.all(b['image'][r, :, w:] == 0)
  assert sorted(seen) == list(range(5))
  shapes = {b['image'].shape for b in batches}
  assert (2, 64, 96, 3) in shapes  # 56x75 and 56x70 share a bucket
  assert len(batches) == 4


# --- sources ---------------------------------------------------------------------------------

def test_get_source_synthetic_and_errors():
  src = sources.get_source('synthetic', 'validation', num_examples=3, seed=1)
  assert len(src) == 3 and src[0]['image'].dtype == np.uint8
  assert len(sources.get_source('synthetic', 'train')) == 2000
  assert sources.num_classes('synthetic') == len(CLASS_NAMES) >= 10
  assert sources.num_classes('imagenet2012') == 1000
  with pytest.raises(ValueError, match='unknown dataset'):
    sources.get_source('mnist', 'train')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    sources.get_source('folder:/nonexistent/images', 'train')


def _png_bytes(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


@pytest.mark.parametrize('name,num_classes', [('imagenet2012', 1000), ('imagenette', 10),
                                              ('caltech101', 102)])
def test_tfds_sources_with_mocked_data(name, num_classes):
  tfds = pytest.importorskip('tensorflow_datasets')
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (333, 500), dtype=np.uint8)
  examples = [
    {'image': photo, 'label': np.int64(3), 'file_name': 'n01440764_10026.JPEG'},
    {'image': grey[..., None], 'label': 7, 'file_name': b'n01440764_10027.JPEG'},
    {'image': _png_bytes(photo[:200, :300]), 'label': np.array(1)},
  ]
  calls = []

  def as_data_source(builder, split, **kwargs):
    calls.append((builder.name, split))
    return examples

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                              as_data_source_fn=as_data_source):
    src = sources.get_source(name, 'validation')
    capped = sources.get_source(name, 'validation', num_examples=2)
    first, second, third = src[0], src[1], src[2]
  assert calls[0] == (name, 'validation')
  assert len(src) == 3 and len(capped) == 2
  assert np.array_equal(first['image'], photo) and first['label'] == 3
  assert first['filename'] == 'n01440764_10026.JPEG'
  assert second['image'].shape == (333, 500, 3) and second['filename'] == 'n01440764_10027.JPEG'
  assert np.array_equal(second['image'][..., 2], grey)
  assert np.array_equal(third['image'], photo[:200, :300]) and third['label'] == 1
  assert isinstance(first['label'], int)
  assert sources.num_classes(name) == num_classes


def test_folder_source_converts_images_and_reports_corrupt_files(tmp_path: Path):
  root, tmp_path = tmp_path, tmp_path / 'train'  # root/train/<class>/<image>
  tmp_path.mkdir()
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
  grey = rng.integers(0, 256, (30, 20), dtype=np.uint8)
  rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
  rgba[..., 3] = 255
  rgba[0, 0, 3] = 0  # one transparent pixel: composited over white
  deep = (rng.integers(0, 65536, (16, 16), dtype=np.uint32)).astype(np.uint16)
  (tmp_path / 'dog').mkdir()
  (tmp_path / 'cat').mkdir()
  (tmp_path / 'notes.txt').write_text('not a class')
  Image.fromarray(rgb).save(tmp_path / 'dog' / 'a.png')
  smooth = np.stack([*np.meshgrid(np.arange(50) * 5, np.arange(40) * 6), np.full((40, 50), 90)],
                    axis=-1).astype(np.uint8)  # JPEG keeps smooth images nearly intact
  Image.fromarray(smooth).save(tmp_path / 'dog' / 'b.JPEG', quality=95)
  Image.fromarray(grey).save(tmp_path / 'cat' / 'grey.jpg')
  Image.fromarray(rgba).save(tmp_path / 'cat' / 'rgba.png')
  Image.fromarray(deep).save(tmp_path / 'cat' / 'deep.png')
  (tmp_path / 'cat' / 'readme.md').write_text('ignored')
  src = sources.get_source(f'folder:{root}', 'train')
  assert sources.num_classes(f'folder:{root}') == 2
  assert src.class_names == ('cat', 'dog') and len(src) == 5
  by_name = {Path(src[i]['filename']).name: src[i] for i in range(len(src))}
  for ex in by_name.values():
    assert ex['image'].dtype == np.uint8 and ex['image'].ndim == 3 and ex['image'].shape[2] == 3
  assert by_name['a.png']['label'] == 1 and by_name['grey.jpg']['label'] == 0
  assert np.array_equal(by_name['a.png']['image'], rgb)
  assert np.abs(by_name['b.JPEG']['image'].astype(int) - smooth).mean() < 3
  g = by_name['grey.jpg']['image']
  assert g.shape == (30, 20, 3) and np.array_equal(g[..., 0], g[..., 1])
  r = by_name['rgba.png']['image']
  assert r.shape == (10, 12, 3) and np.array_equal(r[0, 0], [255, 255, 255])
  assert np.array_equal(r[1:, 1:], rgba[1:, 1:, :3])
  d = by_name['deep.png']['image']
  assert d.shape == (16, 16, 3)
  np.testing.assert_allclose(d[..., 0], deep / 257.0, atol=0.51)

  bad = tmp_path / 'dog' / 'broken.jpg'
  bad.write_bytes(b'\xff\xd8\xff\xe0 this is not really a jpeg')
  src = sources.get_source(f'folder:{root}', 'train')
  index = [Path(f).name for f, _ in src.files].index('broken.jpg')
  with pytest.raises(sources.CorruptImageError, match='broken.jpg'):
    src[index]
  truncated = tmp_path / 'dog' / 'cut.png'
  truncated.write_bytes(_png_bytes(rgb)[:100])
  with pytest.raises(sources.CorruptImageError, match='cut.png'):
    sources.decode_image_file(truncated)


def test_to_rgb_uint8_conversions():
  assert sources.to_rgb_uint8(np.zeros((3, 4))).shape == (3, 4, 3)
  assert sources.to_rgb_uint8(np.ones((2, 2, 3), np.float32)).max() == 255
  assert sources.to_rgb_uint8(np.full((2, 2, 1), 65535, np.uint16)).max() == 255
  with pytest.raises(ValueError, match='expected an image'):
    sources.to_rgb_uint8(np.zeros((2, 2, 5), np.uint8))


@pytest.mark.slow
def test_worker_processes_give_the_same_batches():
  src = SyntheticClassification('train', 16, seed=0, min_side=60, max_side=90)
  kw = dict(batch_size=4, seed=1, epoch=0, crop_size=CROP, short_side=SHORT, start_step=1)
  local = list(pipeline.train_batches(src, **kw))
  workers = list(pipeline.train_batches(src, worker_count=2, **kw))
  assert len(local) == len(workers) == 3
  for a, b in zip(local, workers):
    assert np.array_equal(a['image'], b['image']) and np.array_equal(a['label'], b['label'])
