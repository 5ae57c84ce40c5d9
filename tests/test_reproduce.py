"""The reproduction check: a committed run's records against a rerun, example by example."""

import numpy as np
import pytest

from sppnet_jax import publish, reproduce, timing, train

from test_train import tiny_config


def _write_records(run, wrong: dict[str, np.ndarray]) -> None:
  run.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for key, w in wrong.items():
    arrays.update({f"{key}/index": np.arange(w.size), f"{key}/top1_wrong": w, f"{key}/top5_wrong": np.zeros_like(w)})
  np.savez(run / "predictions.npz", **arrays)


def test_identical_records_reproduce_only_on_the_recorded_machine_kind(tmp_path):
  wrong = np.arange(200) % 5 == 0  # 20 % error
  _write_records(tmp_path / "a", {"crop@96": wrong, "full@96": ~wrong})
  _write_records(tmp_path / "b", {"crop@96": wrong, "full@96": ~wrong, "sweep:crop@48": wrong})
  comparisons = reproduce.compare_runs(tmp_path / "a", tmp_path / "b")
  assert [c.key for c in comparisons] == ["crop@96", "full@96"]  # the records both hold
  assert all(c.identical for c in comparisons) and comparisons[0].committed_error == pytest.approx(20.0)
  assert reproduce.verdict(comparisons, [])
  lines = reproduce.summary_lines(comparisons, [])
  assert lines[1] == "crop@96: identical (20.00 % top-1 error, 200 examples)"


def test_a_differing_record_fails_on_the_same_machine_and_is_weighed_elsewhere(tmp_path):
  wrong = np.zeros(1000, bool)
  wrong[:200] = True
  small, large = wrong.copy(), wrong.copy()
  small[200:203] = True  # 3 more mistakes: inside the noise of 1,000 examples
  large[200:300] = True  # 100 more: far outside it
  _write_records(tmp_path / "committed", {"crop@96": wrong, "full@96": wrong})
  _write_records(tmp_path / "rerun", {"crop@96": small, "full@96": wrong})
  comparisons = reproduce.compare_runs(tmp_path / "committed", tmp_path / "rerun")
  crop = comparisons[0]
  assert crop.examples_that_differ == 3 and crop.difference.difference == pytest.approx(0.3)
  assert crop.difference.only_a_wrong == 3  # a = the rerun
  assert not reproduce.verdict(comparisons, [])  # same machine kind: must be identical
  other_machine = ["cpu_flags: 'avx2' -> 'avx512f'"]
  assert reproduce.verdict(comparisons, other_machine)  # elsewhere: unresolved, so reproduced
  assert "3 of 1000 examples differ" in reproduce.summary_lines(comparisons, other_machine)[1]
  _write_records(tmp_path / "rerun", {"crop@96": large})
  comparisons = reproduce.compare_runs(tmp_path / "committed", tmp_path / "rerun")
  assert comparisons[0].difference.resolved and not reproduce.verdict(comparisons, other_machine)
  assert "(resolved)" in reproduce.summary_lines(comparisons, other_machine)[1]


def test_records_over_other_examples_are_refused(tmp_path):
  _write_records(tmp_path / "a", {"crop@96": np.zeros(10, bool)})
  _write_records(tmp_path / "b", {"crop@96": np.zeros(12, bool)})
  with pytest.raises(ValueError, match="other examples"):
    reproduce.compare_runs(tmp_path / "a", tmp_path / "b")


def test_machine_differences_name_each_field_and_an_unrecorded_one():
  env = timing.environment()
  assert reproduce.machine_differences(env, env) == []
  older = {k: v for k, v in env.items() if k != "cpu_flags"} | {"jaxlib": "0.0.1"}
  diffs = reproduce.machine_differences(older, env)
  assert [d.split(":")[0] for d in diffs] == ["jaxlib", "cpu_flags"]
  assert "not recorded" in diffs[1]


@pytest.mark.slow
def test_a_published_tiny_run_reproduces_bit_for_bit(tmp_path):
  runs = tmp_path / "runs"
  train.train_and_evaluate(tiny_config("single", epochs=2), runs / "single")
  (runs / "report.md").write_text("# a tiny run\n")  # publish copies a folder that holds a report
  publish.publish(runs, tmp_path / "results")
  ok, lines = reproduce.reproduce(tmp_path / "results" / "single", tmp_path / "rerun")
  assert ok, lines
  assert lines[0].startswith("environment equal") and all("identical" in line for line in lines[1:])
