"""Image-folder splits, the run's class mapping, seeded subsets and skipping bad images."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from PIL import Image

from sppnet_jax import configs
from sppnet_jax.data import sources

# One solid colour per class name, so a test reads an example's true class from its pixels.
COLOURS = {'ant': (200, 0, 0), 'bee': (0, 200, 0), 'cow': (0, 0, 200), 'dog': (200, 200, 0)}


def _images(folder: Path, cls: str, n: int, ext: str = '.png') -> None:
  (folder / cls).mkdir(parents=True, exist_ok=True)
  for i in range(n):
    Image.fromarray(np.full((6, 9, 3), COLOURS[cls], np.uint8)).save(folder / cls / f'{cls}{i:02d}{ext}')


def _class_of(example: dict) -> str:
  pixel = tuple(int(v) for v in example['image'][0, 0])
  return next(name for name, c in COLOURS.items() if np.abs(np.subtract(c, pixel)).max() < 8)


def _split_layout(root: Path) -> None:
  """root/train: ant 3, bee 2, cow 2; root/validation: ant 1, cow 2 (no bee)."""
  for cls, n in (('ant', 3), ('bee', 2), ('cow', 2)):
    _images(root / 'train', cls, n)
  _images(root / 'validation', 'ant', 1)
  _images(root / 'validation', 'cow', 2, ext='.jpg')


def test_every_split_is_labelled_by_the_training_split_class_names(tmp_path):
  _split_layout(tmp_path)
  name = f'folder:{tmp_path}'
  train = sources.get_source(name, 'train')
  val = sources.get_source(name, 'validation')
  assert sources.class_names(name) == ('ant', 'bee', 'cow')
  assert sources.num_classes(name) == 3
  assert [ex['label'] for ex in train] == [0, 0, 0, 1, 1, 2, 2]
  # The validation split lacks 'bee': 'cow' keeps label 2 (numbering its own folders would give 1).
  assert sorted((_class_of(ex), ex['label']) for ex in val) == [('ant', 0), ('cow', 2), ('cow', 2)]
  for ex in list(train) + list(val):
    assert ('ant', 'bee', 'cow')[ex['label']] == _class_of(ex)


def test_a_stored_mapping_is_applied_by_name(tmp_path):
  _split_layout(tmp_path)
  val = sources.get_source(f'folder:{tmp_path}', 'validation', class_names=('cow', 'dog', 'ant'))
  assert sorted((_class_of(ex), ex['label']) for ex in val) == [('ant', 2), ('cow', 0), ('cow', 0)]


def test_a_missing_split_folder_is_an_error_not_a_fallback(tmp_path):
  _images(tmp_path / 'train', 'ant', 2)
  with pytest.raises(ValueError, match='validation') as info:
    sources.get_source(f'folder:{tmp_path}', 'validation')
  assert str(tmp_path / 'validation') in str(info.value) and 'holdout_fraction' in str(info.value)
  flat = tmp_path / 'flat'
  _images(flat, 'ant', 2)
  _images(flat, 'bee', 2)
  for split in ('train', 'validation'):
    with pytest.raises(ValueError, match='holdout_fraction') as info:
      sources.get_source(f'folder:{flat}', split)
    assert str(flat / split) in str(info.value)
  with pytest.raises(ValueError, match=str(flat / 'train')):
    sources.num_classes(f'folder:{flat}')


def test_unknown_and_empty_class_folders_are_errors(tmp_path):
  _split_layout(tmp_path)
  _images(tmp_path / 'validation', 'dog', 1)
  with pytest.raises(ValueError, match='training split lacks: dog'):
    sources.get_source(f'folder:{tmp_path}', 'validation')
  (tmp_path / 'validation' / 'dog' / 'dog00.png').unlink()
  (tmp_path / 'validation' / 'dog').rmdir()
  (tmp_path / 'validation' / 'bee').mkdir()  # known class, but no images
  with pytest.raises(ValueError, match='empty class folder') as info:
    sources.get_source(f'folder:{tmp_path}', 'validation')
  assert str(tmp_path / 'validation' / 'bee') in str(info.value)
  (tmp_path / 'validation' / 'bee').rmdir()
  (tmp_path / 'train' / 'dog').mkdir()
  (tmp_path / 'train' / 'dog' / 'notes.txt').write_text('not an image')
  with pytest.raises(ValueError, match='empty class folder'):
    sources.get_source(f'folder:{tmp_path}', 'train')


def test_holdout_is_seeded_stratified_and_disjoint(tmp_path):
  _images(tmp_path, 'ant', 10)
  _images(tmp_path, 'bee', 5)
  _images(tmp_path, 'cow', 1)
  name = f'folder:{tmp_path}'
  kw = dict(holdout_fraction=0.2, seed=0)
  val = sources.get_source(name, 'validation', **kw)
  train = sources.get_source(name, 'train', **kw)
  # round(0.2 * 16) = 3 held out: 2 of 10 ants, 1 of 5 bees, and never the only cow.
  assert sorted(_class_of(ex) for ex in val) == ['ant', 'ant', 'bee']
  assert len(train) == 13 and sum(_class_of(ex) == 'cow' for ex in train) == 1
  files = lambda src: {src.filename(i) for i in range(len(src))}
  assert not files(val) & files(train)
  assert files(val) | files(train) == {str(p) for p in tmp_path.rglob('*.png')}
  assert sources.num_classes(name, holdout_fraction=0.2) == 3
  for ex in list(val) + list(train):
    assert ('ant', 'bee', 'cow')[ex['label']] == _class_of(ex)
  assert files(sources.get_source(name, 'validation', **kw)) == files(val)  # the same on every run
  draws = {frozenset(files(sources.get_source(name, 'validation', holdout_fraction=0.2, seed=s)))
           for s in range(6)}
  assert len(draws) > 1  # the seed chooses the images


def test_holdout_refuses_split_folders_bad_fractions_and_other_splits(tmp_path):
  _split_layout(tmp_path)
  with pytest.raises(ValueError, match='split folder'):
    sources.get_source(f'folder:{tmp_path}', 'validation', holdout_fraction=0.1)
  flat = tmp_path / 'flat'
  _images(flat, 'ant', 3)
  for bad in (0.0, 1.0, -0.1, 'a lot'):
    with pytest.raises(ValueError, match='holdout_fraction'):
      sources.get_source(f'folder:{flat}', 'validation', holdout_fraction=bad)
  with pytest.raises(ValueError, match="'test'"):
    sources.get_source(f'folder:{flat}', 'test', holdout_fraction=0.3)


def test_stratified_indices_hand_computed():
  labels = [0] * 5 + [1] * 3 + [2] * 2
  # n = 4 of 10: exact shares 2.0, 1.2, 0.8 -> 2, 1, 0 and the largest remainder (class 2) gets one.
  for seed in range(5):
    idx = sources.stratified_indices(labels, 4, seed)
    assert list(np.bincount(np.asarray(labels)[idx], minlength=3)) == [2, 1, 1]
    assert list(idx) == sorted(set(idx.tolist()))
    np.testing.assert_array_equal(idx, sources.stratified_indices(labels, 4, seed))
  assert list(sources.stratified_indices(labels, 50, 0)) == list(range(10))
  # Hold-out of 0.5: 5 in all, shares 2.5, 1.5, 1.0 -> 2, 1, 1 and one more to class 0 or 1.
  held = sources.holdout_indices(labels, 0.5, 0)
  counts = np.bincount(np.asarray(labels)[held], minlength=3)
  assert list(counts) in ([3, 1, 1], [2, 2, 1])


def test_folder_subsets_are_stratified_seeded_draws(tmp_path):
  for cls, n in (('ant', 8), ('bee', 4)):
    _images(tmp_path / 'train', cls, n)
  name = f'folder:{tmp_path}'
  sub = sources.get_source(name, 'train', num_examples=6, seed=3)
  # The first 6 files would all be ants; a stratified draw keeps the 2:1 ratio.
  assert sorted(_class_of(ex) for ex in sub) == ['ant'] * 4 + ['bee'] * 2
  again = sources.get_source(name, 'train', num_examples=6, seed=3)
  assert [sub.filename(i) for i in range(6)] == [again.filename(i) for i in range(6)]
  other = {tuple(sources.get_source(name, 'train', num_examples=6, seed=s).indices) for s in range(6)}
  assert len(other) > 1
  assert len(sources.get_source(name, 'train', num_examples=100)) == 12


def test_unlabelled_sources_get_a_uniform_seeded_draw():
  base = [{'image': np.zeros((2, 2, 3), np.uint8), 'label': 0, 'i': i} for i in range(50)]
  sub = sources.draw_subset(base, 10, seed=1)
  picked = [sub[i]['i'] for i in range(len(sub))]
  assert len(set(picked)) == 10 and picked == sorted(picked)
  assert picked != list(range(10))
  assert picked == [sources.draw_subset(base, 10, seed=1)[i]['i'] for i in range(10)]
  assert picked != [sources.draw_subset(base, 10, seed=2)[i]['i'] for i in range(10)]


def test_skip_bad_images_substitutes_the_next_decodable_example_and_counts(tmp_path):
  _images(tmp_path / 'train', 'ant', 3)
  _images(tmp_path / 'train', 'bee', 2)
  (tmp_path / 'train' / 'ant' / 'ant01.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  (tmp_path / 'train' / 'bee' / 'bee01.png').write_bytes(b'not an image at all')
  name = f'folder:{tmp_path}'
  strict = sources.get_source(name, 'train')
  with pytest.raises(sources.CorruptImageError, match='ant01.png'):
    strict[1]
  src = sources.get_source(name, 'train', on_bad_image='skip')
  assert len(src) == 5 and src.class_names == ('ant', 'bee')
  assert src.num_skipped() == 0
  assert src[1]['filename'].endswith('ant02.png')  # ant01 is bad: ant02 stands in
  assert src[4]['filename'].endswith('ant00.png')  # bee01 is the last: wraps to the first
  assert src[3]['filename'].endswith('bee00.png')
  assert src[1]['filename'].endswith('ant02.png')
  assert src.num_skipped() == 3 and src.bad_indices() == (1, 4)
  for f in ('ant00', 'ant02', 'bee00'):
    (tmp_path / 'train' / f[:3] / f'{f}.png').write_bytes(b'broken too')
  with pytest.raises(sources.CorruptImageError, match='none of the 5'):
    sources.get_source(name, 'train', on_bad_image='skip')[0]
  with pytest.raises(ValueError, match='on_bad_image'):
    sources.get_source(name, 'train', on_bad_image='ignore')


def test_class_names_are_kept_in_the_workdir(tmp_path):
  assert sources.load_class_names(tmp_path) is None
  path = sources.save_class_names(tmp_path, ['ant', 'bee'])
  assert path == tmp_path / 'classes.json'
  assert json.loads(path.read_text()) == {'class_names': ['ant', 'bee']}
  assert sources.load_class_names(tmp_path) == ('ant', 'bee')
  path.write_text('{"names": 3}')
  with pytest.raises(ValueError, match='classes.json'):
    sources.load_class_names(tmp_path)


def test_a_missing_image_file_says_file_not_found(tmp_path):
  with pytest.raises(FileNotFoundError, match='file not found: .*nothing.png'):
    sources.decode_image_file(tmp_path / 'nothing.png')


def test_source_from_config_reads_the_data_fields(tmp_path):
  _images(tmp_path, 'ant', 10)
  _images(tmp_path, 'bee', 10)
  c = configs.base()
  assert c.data.holdout_fraction is None and c.data.on_bad_image == 'error'
  c.data.name = f'folder:{tmp_path}'
  c.data.holdout_fraction = 0.3
  c.data.on_bad_image = 'skip'
  c.data.num_train = 4
  train = sources.source_from_config(c.data, 'train')
  val = sources.source_from_config(c.data, 'eval')
  assert isinstance(train, sources.SkipBadImages) and len(train) == 4 and len(val) == 6
  assert sorted(_class_of(ex) for ex in val) == ['ant'] * 3 + ['bee'] * 3
  assert sorted(_class_of(ex) for ex in train) == ['ant', 'ant', 'bee', 'bee']


def test_training_batches_skip_bad_images_and_keep_their_shape(tmp_path):
  from sppnet_jax.data import pipeline
  for cls in ('ant', 'bee'):
    _images(tmp_path / 'train', cls, 4)
  (tmp_path / 'train' / 'bee' / 'bee02.png').write_bytes(b'\x89PNG\r\n\x1a\n cut short')
  name = f'folder:{tmp_path}'
  kw = dict(batch_size=4, seed=0, epoch=0, crop_size=4, short_side=6, pca_std=0.0)
  with pytest.raises(sources.CorruptImageError, match='bee02.png'):
    list(pipeline.train_batches(sources.get_source(name, 'train'), **kw))
  src = sources.get_source(name, 'train', on_bad_image='skip')
  batches = list(pipeline.train_batches(src, **kw))
  assert [b['image'].shape for b in batches] == [(4, 4, 4, 3)] * 2
  labels = np.concatenate([b['label'] for b in batches])
  assert sorted(labels.tolist()) == [0, 0, 0, 0, 1, 1, 1, 1]  # bee02 (index 6) replaced by bee03 (index 7)
  assert src.num_skipped() == 1 and src.bad_indices() == (6,)


def test_a_subset_maps_image_shape_to_its_own_examples():
  source = sources.get_source('synthetic', 'validation', num_examples=20)
  subset = sources.Subset(source, [5, 3])
  assert [subset.image_shape(i) for i in range(2)] == [source.image_shape(5), source.image_shape(3)]
  assert not hasattr(sources.Subset([{'image': np.zeros((2, 2, 3))}], [0]), 'image_shape')


def _webp_bmp_layout(root: Path) -> None:
  """root/train: ant as .png, .webp and .BMP with notes.txt and scores.csv beside them; bee as .bmp."""
  _images(root / 'train', 'ant', 1)
  _images(root / 'train', 'ant', 1, ext='.webp')  # lossless: the colour is exact
  Image.fromarray(np.full((6, 9, 3), COLOURS['ant'], np.uint8)).save(root / 'train' / 'ant' / 'big.BMP')
  _images(root / 'train', 'bee', 2, ext='.bmp')
  (root / 'train' / 'ant' / 'notes.txt').write_text('not an image')
  (root / 'train' / 'ant' / 'scores.csv').write_text('1,2')


def test_webp_and_bmp_are_read_and_other_files_are_listed_and_warned_once(tmp_path, caplog):
  _webp_bmp_layout(tmp_path)
  name = f'folder:{tmp_path}'
  with caplog.at_level('WARNING', logger=sources.__name__):
    src = sources.get_source(name, 'train')
    again = sources.get_source(name, 'train')
  names = sorted(Path(f).name for f, _ in src.files)
  assert names == ['ant00.png', 'ant00.webp', 'bee00.bmp', 'bee01.bmp', 'big.BMP']
  assert [_class_of(ex) for ex in src] == ['ant', 'ant', 'ant', 'bee', 'bee']
  assert src.non_image_files == again.non_image_files == tuple(
    str(tmp_path / 'train' / 'ant' / f) for f in ('notes.txt', 'scores.csv'))
  warnings = [r.getMessage() for r in caplog.records if 'not images' in r.getMessage()]
  assert len(warnings) == 1  # once, however often the folder is loaded
  assert '2 file(s)' in warnings[0] and 'ant/notes.txt, ant/scores.csv' in warnings[0]


def test_check_data_reads_webp_and_bmp_and_lists_the_files_left_out(tmp_path):
  from sppnet_jax.data import check
  _webp_bmp_layout(tmp_path)
  _images(tmp_path / 'validation', 'bee', 1, ext='.webp')
  (tmp_path / 'train' / 'bee' / 'bee01.bmp').write_bytes(b'BM not really a bitmap')
  c = configs.synthetic('single')
  c.data.name, c.data.num_train, c.data.num_eval, c.data.cache = f'folder:{tmp_path}', None, None, False
  results = check.check_data(c, 'both', workers=1)
  train, val = results
  assert train.num_examples == 5 and [Path(b.filename).name for b in train.bad] == ['bee01.bmp']
  assert [Path(f).name for f in train.non_image_files] == ['notes.txt', 'scores.csv']
  assert val.num_examples == 1 and not val.bad and not val.non_image_files
  report = check.format_checks(results)
  assert "train split 'train': 5 examples, 1 undecodable, 2 file(s) left out as not images" in report
  assert f"  not an image, left out: {tmp_path / 'train' / 'ant' / 'notes.txt'}" in report
  assert report.endswith('2 file(s) are not images Pillow decodes (by extension) and are left out of the data; '
                         'convert them to an image format or move them out of the class folders.')
  assert train.to_dict()['num_non_image_files'] == 2


def _folder_with_two_corrupt_files(root: Path) -> Sequence[Any]:
  """8 images (ant 0-3, bee 4-7) of which 1 and 6 are corrupt, read with on_bad_image='skip'."""
  for cls in ('ant', 'bee'):
    _images(root / 'train', cls, 4)
  for bad in ('ant/ant01.png', 'bee/bee02.png'):
    (root / 'train' / bad).write_bytes(b'\x89PNG\r\n\x1a\n cut short')
  return sources.get_source(f'folder:{root}', 'train', on_bad_image='skip')


@pytest.mark.parametrize('worker_count', [0, 2])
def test_skipped_images_are_counted_whatever_the_worker_count(tmp_path, worker_count):
  from sppnet_jax.data import pipeline
  src = _folder_with_two_corrupt_files(tmp_path)
  kw = dict(batch_size=4, seed=0, epoch=0, crop_size=4, short_side=6, pca_std=0.0, worker_count=worker_count)
  batches = list(pipeline.train_batches(src, **kw))
  assert src.num_skipped() == 2  # what train.py logs as data/skipped_images
  assert len(batches) == 2 and sum(int(b['skipped'].sum()) for b in batches) == 2


@pytest.mark.slow
def test_skips_in_whole_image_batches_evaluation_and_the_mean_reach_the_source_from_workers(tmp_path):
  from sppnet_jax.data import augment, pipeline
  src = _folder_with_two_corrupt_files(tmp_path)
  plan = pipeline.full_epoch_plan(np.tile([[6, 9]], (8, 1)), batch_size=4, seed=0, epoch=0, short_range=(6, 6),
                                  bucket=3)
  full = list(pipeline.full_train_batches(src, plan, seed=0, epoch=0, pca_std=0.0, worker_count=2))
  assert sum(int(b['skipped'].sum()) for b in full) == 2 and src.num_skipped() == 2
  pipeline.estimate_mean_image(src, 8, crop_size=4, short_side=6, worker_count=2)
  assert src.num_skipped() == 4
  prepare = functools.partial(augment.resize_image, size=4)  # picklable for the workers
  list(pipeline.eval_batches(src, prepare=prepare, batch_size=4, worker_count=2))
  assert src.num_skipped() == 6
