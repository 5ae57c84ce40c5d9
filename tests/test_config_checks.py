"""validate_config: values that cannot be meant are refused with the field, the value and what is allowed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sppnet_jax import config_checks, configs

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
