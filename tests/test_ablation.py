"""The test-size sweep and the ablation report on tiny networks trained for real."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sppnet_jax import ablation, evaluate, stats, train

from test_train import tiny_config

SWEEP = (48, 64, 80)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A no-SPP and an SPP single-size run, each swept over three test sizes on 16 images."""
  root = tmp_path_factory.mktemp("ablation")
  for variant in ("nospp", "single"):
    config = tiny_config(variant, epochs=1)
    config.eval.update(views=("crop", "full"), sweep_sizes=SWEEP, sweep_views=("crop", "full"), sweep_examples=16)
    train.train_and_evaluate(config, root / variant)
  return root


def test_sweep_records_every_view_at_every_size(runs):
  for variant in ("nospp", "single"):
    result = json.loads((runs / variant / evaluate.EVAL_FILE).read_text())
    assert result["crop"]["num_examples"] == 32
    for view in ("crop", "full"):
      by_size = result["sweep"][view]
      assert sorted(by_size, key=int) == [str(s) for s in SWEEP]
      for size, r in by_size.items():
        assert r["num_examples"] == 16
        low, high = r["top1_interval"]
        assert low <= r["top1_error"] <= high
        # A no-SPP network takes only its own size: everything else is warped, and says so.
        expect_warped = variant == "nospp" and (view == "full" or int(size) != 64)
        assert r.get("warped", False) == expect_warped, (variant, view, size)


def test_sweep_at_the_training_size_agrees_with_the_main_view(runs):
  # The sweep's subset is the first 16 examples; at the training size its crop mistakes must
  # be those of the full evaluation's crop view on the same examples.
  for view in ("crop", "full"):
    index, wrong = evaluate.load_mistakes(runs / "single", evaluate.record_key(view, 64))
    sweep_index, sweep_wrong = evaluate.load_mistakes(runs / "single", evaluate.record_key(view, 64, sweep=True))
    np.testing.assert_array_equal(sweep_index, np.arange(16))
    np.testing.assert_array_equal(sweep_wrong, wrong[:16])


def test_paired_comparison_reads_the_same_examples(runs):
  key = evaluate.record_key("full", 64)
  diff = evaluate.paired(runs / "single", runs / "nospp", key)
  _, wrong_single = evaluate.load_mistakes(runs / "single", key)
  _, wrong_nospp = evaluate.load_mistakes(runs / "nospp", key)
  assert diff.difference == pytest.approx(100 * (wrong_single.mean() - wrong_nospp.mean()))
  assert diff.p_value == stats.mcnemar_exact(int((wrong_single & ~wrong_nospp).sum()),
                                             int((~wrong_single & wrong_nospp).sum()))
  with pytest.raises(KeyError, match="no record 'crop@999'"):
    evaluate.paired(runs / "single", runs / "nospp", "crop@999")


def test_ablation_report_generates_its_verdicts_and_figures(runs):
  text = ablation.write_ablation_report(runs)
  verdicts = [line for line in text.splitlines() if line.startswith("- SPP single − no SPP")]
  assert len(verdicts) == 2  # crop and full view
  key = evaluate.record_key("full", 64)
  expected = stats.verdict("SPP single − no SPP, full view, top-1", evaluate.paired(runs / "single", runs / "nospp", key))
  assert "- " + expected in verdicts
  assert "[" in text.split("| nospp")[1].splitlines()[0]  # table cells carry intervals
  view_line = next(l for l in text.splitlines() if l.startswith("- full view − crop view, single"))
  key = evaluate.record_key("full", 64)
  assert view_line == "- " + stats.verdict("full view − crop view, single, top-1", evaluate.paired(
      runs / "single", runs / "single", key, key_b=evaluate.record_key("crop", 64)))
  assert not any(l.startswith("- full view − crop view, nospp") for l in text.splitlines())
  for figure in ("curves.png", "sweep.png"):
    assert (runs / figure).stat().st_size > 0
  assert (runs / "report.md").read_text() == text


def test_seeds_report_mean_std_and_a_t_test_across_seeds(runs, tmp_path):
  # Seed 1 of each variant: the seed-0 run with its errors set by hand, so the table and the
  # test across seeds can be checked against values worked out on paper.
  import shutil
  root = tmp_path / "seeds"
  for variant in ("nospp", "single"):
    shutil.copytree(runs / variant, root / variant)
    shutil.copytree(runs / variant, root / f"{variant}-seed1")
  errors = {"nospp": (40.0, 44.0), "single": (30.0, 36.0)}  # (seed 0, seed 1), crop view
  for variant, (e0, e1) in errors.items():
    for name, e in ((variant, e0), (f"{variant}-seed1", e1)):
      path = root / name / evaluate.EVAL_FILE
      result = json.loads(path.read_text())
      result["crop"]["top1_error"] = e
      path.write_text(json.dumps(result))
  text = ablation.write_ablation_report(root, seeds=2)
  # single: 30, 36 -> mean 33, std 4.24; differences single - nospp: -10, -8 -> mean -9, sd 1.414,
  # t = 9 on 1 degree of freedom, two-sided p = 1 - 2 atan(9) / pi = 0.0704.
  assert "| single | 2 | 33.00 ± 4.24 |" in text
  line = next(l for l in text.splitlines() if l.startswith("- SPP single − no SPP, crop view"))
  assert "−9.0 points" in line and "paired t over 2 seeds, p = 0.07" in line and "unresolved" in line


def test_ablation_configs_vary_the_training_seed_never_the_evaluation_images():
  runs = ablation.ablation_configs(seeds=2, extended=True)
  assert list(runs)[:6] == ["nospp", "single", "multi", "full", "shift-single", "shift-multi"]
  assert {name: c.train.seed for name, c in runs.items()}["shift-multi-seed1"] == 1
  assert all(c.train.seed == (1 if name.endswith("-seed1") else 0) for name, c in runs.items())
  evaluation = {(c.data.eval_split, c.data.num_eval, c.data.seed, tuple(c.data.eval_object_size)) for c in runs.values()}
  assert len(evaluation) == 1  # every run is scored on the same images, so paired tests apply
  assert tuple(runs["shift-single"].data.train_object_size) != tuple(runs["single"].data.train_object_size)
  assert list(ablation.ablation_configs()) == ["nospp", "single", "multi"]
