"""Fit diagnostics, the multi-size identity control and the budget curve, on tiny networks trained for real."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sppnet_jax import budget, evaluate, publish, train
from sppnet_jax import workdir as workdir_lib
from sppnet_jax.data import augment
from sppnet_jax.metrics_io import read_metrics

from test_train import final_params, tiny_config

SUBSET = 24


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
  """A tiny multi-size run (64 and 52) scored on both views, with a training subset of 24 images."""
  workdir = tmp_path_factory.mktemp("fit") / "multi"
  config = tiny_config("multi", epochs=2)
  config.eval.update(views=("crop", "full"), train_subset_examples=SUBSET)
  train.train_and_evaluate(config, workdir)
  return workdir


def test_train_subset_is_a_fixed_seeded_draw(multi_run):
  config, _, _, _ = workdir_lib.load_run(multi_run)
  source = workdir_lib.config_source(config.data, "train")
  first, again = evaluate.train_subset(source, config), evaluate.train_subset(source, config)
  np.testing.assert_array_equal(first.indices, again.indices)
  assert len(first) == SUBSET and len(set(first.indices.tolist())) == SUBSET
  assert not np.array_equal(first.indices, np.arange(SUBSET))  # drawn from all 64, not the first 24
  config.eval.train_subset_examples = 0
  assert evaluate.train_subset(source, config) is None


def test_train_subset_mistakes_are_those_of_unaugmented_centre_crops(multi_run):
  # Oracle: the training images' centre crops, made here and run through the network directly.
  config, model, params, mean = workdir_lib.load_run(multi_run)
  subset = evaluate.train_subset(workdir_lib.config_source(config.data, "train"), config)
  examples = [subset[i] for i in range(len(subset))]
  crops = np.stack([augment.normalize(augment.center_crop_view(e["image"], config.data.crop_size,
                                                               config.data.short_side), mean) for e in examples])
  logits = model.apply({"params": params}, jnp.asarray(crops))
  wrong = np.asarray(jnp.argmax(logits, -1)) != np.array([e["label"] for e in examples])
  index, recorded = evaluate.load_mistakes(multi_run, evaluate.record_key("crop", config.data.crop_size, train=True))
  np.testing.assert_array_equal(index, np.arange(SUBSET))
  np.testing.assert_array_equal(recorded, wrong)


def test_fit_records_in_eval_json_and_metrics(multi_run):
  result = json.loads((multi_run / evaluate.EVAL_FILE).read_text())
  assert set(evaluate.view_results(result)) == {"crop", "full"}
  for view in ("crop", "full"):
    assert result[evaluate.TRAIN_SUBSET][view]["num_examples"] == SUBSET
    assert result["crop"]["num_examples"] == 32
  # A multi-size run is also scored at its second size, on both splits and both views.
  second = result[evaluate.SECOND_SIZE]
  assert second["size"] == 52
  assert {v: r["num_examples"] for v, r in second["validation"].items()} == {"crop": 32, "full": 32}
  assert {v: r["num_examples"] for v, r in second[evaluate.TRAIN_SUBSET].items()} == {"crop": SUBSET, "full": SUBSET}
  # Every validation during training has the training subset's error beside it.
  validations = [r for r in read_metrics(multi_run) if "val/top1_error" in r]
  assert len(validations) == 2
  assert all(0 <= r["train_subset/top1_error"] <= 100 and r["train_subset/num_examples"] == SUBSET
             for r in validations)


def test_multi_size_with_the_second_size_equal_to_the_first_is_single_size(tmp_path):
  single = tiny_config("single", epochs=2)
  multi = tiny_config("multi", epochs=2)
  multi.data.second_size = multi.data.crop_size
  train.train_and_evaluate(single, tmp_path / "single")
  train.train_and_evaluate(multi, tmp_path / "multi")
  a, b = final_params(tmp_path / "single"), final_params(tmp_path / "multi")
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.tobytes() == y.tobytes()  # bit-identical


def test_budget_scaling_keeps_the_drops_fractions():
  config = tiny_config("single", epochs=3)
  config.train.lr_drop_epochs = (1, 2)
  config.train.eval_every_epochs = 1
  doubled = budget.scaled(config, 2)
  assert (doubled.train.num_epochs, tuple(doubled.train.lr_drop_epochs), doubled.train.eval_every_epochs) == (6, (2, 4),
                                                                                                              2)
  assert config.train.num_epochs == 3  # the original is untouched
  with pytest.raises(ValueError, match="whole number"):
    budget.scaled(config, 1.5)


def test_budget_curve_pairs_every_budget_on_the_same_images(tmp_path):
  def make_config(variant):
    config = tiny_config(variant, epochs=1)
    config.eval.update(views=("crop", "full"), train_subset_examples=16)
    return config

  text = budget.run_budget_curve(tmp_path, factors=(1, 2), make_config=make_config)
  rows = budget.curve_rows(tmp_path, (1, 2))
  assert [(r["factor"], r["view"]) for r in rows] == [(1, "crop"), (1, "full"), (2, "crop"), (2, "full")]
  assert [r["steps"] for r in rows] == [4, 4, 8, 8]  # 64 images, batch 16: 4 steps per epoch
  for r in rows:
    run = {v: budget.run_dir(tmp_path, r["factor"], v) for v in budget.VARIANTS}
    key = evaluate.record_key(r["view"], 64)
    (index_m, wrong_m), (index_s, wrong_s) = (evaluate.load_mistakes(run[v], key) for v in ("multi", "single"))
    np.testing.assert_array_equal(index_m, index_s)
    assert r["diff"].difference == pytest.approx(100 * (wrong_m.mean() - wrong_s.mean()))
    assert r["train"]["single"]["num_examples"] == 16
  assert (tmp_path / "budget-x2" / "multi" / evaluate.EVAL_FILE).exists()
  assert "| 2× | 8 | full |" in text and (tmp_path / "budget_curve.png").stat().st_size > 0

  # Publishing copies the report, its figure and each run's records, never checkpoints; the copy is
  # enough to write the report again.
  out = publish.publish(tmp_path, tmp_path.parent / "published")
  assert (out / "budget_curve.md").read_text() == (tmp_path / "budget_curve.md").read_text()
  assert (out / "budget_curve.png").exists()
  for run in ("single", "multi", "budget-x2/single", "budget-x2/multi"):
    assert sorted(p.name for p in (out / run).iterdir()) == ["config.json", "eval.json", "metrics.jsonl",
                                                             "predictions.npz"]
  assert budget.write_budget_report(out, (1, 2)).split("Wall time")[0].rstrip() == text.split("Wall time")[0].rstrip()
  provenance = json.loads((out / "provenance.json").read_text())
  assert sorted(provenance["runs"]) == ["budget-x2/multi", "budget-x2/single", "multi", "single"]
  assert set(provenance["wall_time_s"]["sppnet budget-curve --factors 1,2"]) >= {"single x1", "multi x2", "commit"}
  assert provenance["environment"]["cpu_cores"] >= 1
