"""validate_config: values that cannot be meant are refused with the field, the value and what is allowed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sppnet_jax import config_checks, configs, state, train

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "experiments" / "imagenet").glob("*.py")) + \
    sorted((REPO / "experiments" / "synthetic").glob("*.py"))


def _load(path: Path):
  spec = importlib.util.spec_from_file_location(f"shipped_{path.parent.name}_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_configs_pass(path):
  config_checks.validate_config(_load(path))


def test_there_are_shipped_configs():
  assert len(SHIPPED) >= 20


BAD = [
    ("train.learning_rate", 0.0, "a finite number > 0"),
    ("train.learning_rate", -0.01, "a finite number > 0"),
    ("train.learning_rate", float("nan"), "a finite number > 0"),
    ("train.momentum", 1.0, "a number in [0, 1)"),
    ("train.momentum", -0.1, "a number in [0, 1)"),
    ("train.weight_decay", -5e-4, "a finite number >= 0"),
    ("train.batch_size", 0, "an integer >= 1"),
    ("train.batch_size", 12.5, "an integer >= 1"),
    ("train.num_epochs", 0, "an integer >= 1"),
    ("eval.batch_size", 0, "an integer >= 1"),
    ("train.mode", "multiple", "one of 'single', 'multi', 'random', 'full'"),
    ("train.optimizer", "rmsprop", "one of 'sgd', 'adam'"),
    ("train.lr_schedule", "cosine", "one of 'steps', 'plateau'"),
    ("data.normalize", "imagenet", "one of 'mean_image', 'per_image'"),
    ("model.name", "resnet50", "one of 'zf5', 'convnet5', 'overfeat5', 'overfeat7'"),
    ("model.levels", (6, 0, 1), "a non-empty sequence of integers >= 1"),
    ("model.levels", (), "a non-empty sequence of integers >= 1"),
    ("model.dropout", 1.0, "a number in [0, 1)"),
    ("model.width", 0.0, "a finite number > 0"),
    ("data.holdout_fraction", 1.5, "None or a number in (0, 1)"),
    ("data.on_bad_image", "ignore", "one of 'error', 'skip'"),
    ("data.name", "folder:", "'folder:/path/to/root'"),
    ("data.name", "mnist", "'synthetic'"),
    ("data.num_train", 0, "None or an integer >= 1"),
    ("train.random_range", (224, 180), "a pair (low, high) of integers with 0 < low <= high"),
    ("eval.views", ("ten", "twelve"), "a non-empty sequence of 'crop', 'full', 'ten', 'multiview'"),
    ("train.keep_checkpoints", 0, "an integer >= 1"),
]


@pytest.mark.parametrize("field,value,allowed", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_each_bad_value_names_the_field_the_value_and_what_is_allowed(field, value, allowed):
  config = configs.synthetic("single").to_dict()  # a dict: ConfigDict would refuse 12.5 for an int field
  section, key = field.split(".")
  config[section][key] = value
  with pytest.raises(ValueError) as info:
    config_checks.validate_config(config)
  message = str(info.value)
  shown = repr(tuple(value)) if isinstance(value, list) else repr(value)
  assert f"{field}={shown} is not allowed: " in message
  assert allowed in message
  assert message.count("is not allowed") == 1  # only the bad field is reported


def test_every_problem_is_reported_at_once_and_cross_field_rules():
  config = configs.imagenet("zf5", "nospp")
  config.train.learning_rate = 0.0
  config.train.momentum = 1.5
  config.data.short_side = 200  # < crop 224
  config.train.mode = "full"  # needs SPP
  message = str(pytest.raises(ValueError, config_checks.validate_config, config).value)
  assert message.startswith("invalid config (4 problems): ")
  for part in ("train.learning_rate=0.0", "train.momentum=1.5", "data.short_side=200 is not allowed: at least "
               "data.crop_size=224", "train.mode='full' is not allowed with model.spp=False"):
    assert part in message
  plateau = configs.imagenet("zf5", "single")
  plateau.train.lr_schedule = "plateau"
  plateau.train.eval_every_epochs = 2
  with pytest.raises(ValueError, match="train.eval_every_epochs=2 is not allowed with train.lr_schedule='plateau'"):
    config_checks.validate_config(plateau)


def test_plain_dicts_and_missing_fields():
  config_checks.validate_config({"train": {"learning_rate": 0.1}})  # fields it lacks are not checked
  with pytest.raises(ValueError, match="train.batch_size=-1"):
    config_checks.validate_config({"train": {"batch_size": -1}})


def test_choices_match_the_code_that_uses_them():
  from sppnet_jax import models, train, views
  from sppnet_jax.data import sources
  assert set(config_checks.MODEL_NAMES) == set(models.BASELINE_POOL5)
  assert config_checks.TRAIN_MODES == tuple(train.MODES)
  assert set(config_checks.VIEW_NAMES) == set(views.VIEWS)
  assert set(config_checks.TFDS_NAMES) == set(sources.TFDS_NUM_CLASSES)
  assert config_checks.ON_BAD_IMAGE == sources.ON_BAD_IMAGE


@pytest.mark.parametrize("variant", ["nospp", "single", "multi", "full"])
def test_the_main_jobs_configs_pass_the_input_size_check(variant):
  """The no-SPP network needs 57 px but warps every evaluation input to its training size, so the
  main job's sweep from 48 px is allowed there (as it is for the SPP networks, which take 25)."""
  config = configs.synthetic(variant)
  smallest = train.smallest_input(state.build_model(config, 12))
  assert smallest == (57 if variant == "nospp" else 25)
  assert min(config.eval.sweep_sizes) < 57
  assert config_checks.input_size_problems(config, smallest) == []
  config.data.crop_size = 40  # below 57: a real problem for the no-SPP network's training input
  assert bool(config_checks.input_size_problems(config, smallest)) == (variant == "nospp")


def test_input_sizes_below_the_smallest_the_network_takes_name_their_field_and_range():
  config = configs.synthetic("multi")
  config.data.update(crop_size=20, short_side=72, second_size=10)
  config.eval.update(views=("crop", "multiview"), multiview_scales=(96, 16), sweep_sizes=(48,))
  problems = config_checks.input_size_problems(config, 25)
  assert problems == [
      "data.crop_size=20 is too small for this network: an integer in [25, 72] (at most data.short_side=72); a "
      "smaller input leaves its last conv map empty",
      "data.second_size=10 is too small for this network: an integer >= 25; a smaller input leaves its last conv "
      "map empty",
      "eval.multiview_scales=(96, 16) is too small for this network: sizes >= 25; a smaller input leaves its last "
      "conv map empty"]
  config.eval.views = ("crop",)  # the multiview scales are not used
  config.train.mode = "single"  # nor is the second size
  assert len(config_checks.input_size_problems(config, 25)) == 1
  random = configs.synthetic("random")
  random.train.random_range = (20, 96)
  with pytest.raises(ValueError, match=r"^invalid config: train.random_range=\(20, 96\) is too small for this "
                                       r"network: a low end >= 25;"):
    config_checks.validate_input_sizes(random, 25)
  config_checks.validate_input_sizes(configs.synthetic("full"), 25)
