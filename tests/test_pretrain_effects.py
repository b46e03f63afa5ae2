"""benchmarks.pretrain_effects: arms, cadences and the paired table (hand-made numbers)."""

from __future__ import annotations

import pytest

from jaxmilab.benchmarks import pretrain_effects as pe


def _eval(psnr, noise, jpeg, accuracy=None):
  rec = {
      "psnr": psnr,
      "psnr/gaussian_noise": noise,
      "psnr/jpeg": jpeg,
      "psnr_input": 23.0,
      "psnr_input/gaussian_noise": 20.0,
      "psnr_input/jpeg": 26.0,
  }
  if accuracy is not None:
    rec["accuracy"] = accuracy
  return rec


def test_gain_is_paired_by_seed():
  # Scratch varies a lot between seeds, MaskDCPT + FT is always scratch + 0.5: the paired gain
  # is +0.50 ± 0.00 in 3/3 seeds, although the two arms' own spreads overlap completely.
  scratch = {0: 24.0, 1: 26.0, 2: 28.0}
  per_seed = {
      s: {
          "ft": {
              "scratch": {100: _eval(v, v - 1, v + 1)},
              "maskdcpt": {100: _eval(v + 0.5, v - 0.5, v + 1.5)},
          },
          "pretrain": {"maskdcpt": _eval(20.0, 18.0, 22.0, accuracy=0.8)},
      }
      for s, v in scratch.items()
  }
  table = pe.format_tables(per_seed, [100], ["scratch", "maskdcpt"])
  rows = {
      line.split("|")[2].strip(): line for line in table.splitlines() if line.startswith("| 100")
  }
  assert "26.00 ± 2.00" in rows["scratch"]
  assert "+0.50 ± 0.00 (3/3 seeds > 0)" in rows["MaskDCPT + FT"]
  assert "| MaskDCPT | 20.00 ± 0.00 | 23.00 | 80.00 ± 0.00 % |" in table
  assert "| | input | 20.00 | 26.00 | 23.00 | |" in table  # noise, jpeg, all


def test_one_seed_has_no_spread():
  per_seed = {
      0: {
          "ft": {
              "scratch": {100: _eval(24.0, 23.0, 25.0)},
              "scratch_same_steps": {100: _eval(24.3, 23.1, 25.5)},
          },
          "pretrain": {},
      }
  }
  table = pe.format_tables(per_seed, [100], ["scratch", "scratch_same_steps"])
  assert "| 100 | scratch, same steps | 23.10 | 25.50 | 24.30 | +0.30 (1/1 seeds > 0) |" in table


def test_cadence_evaluates_once_at_the_end():
  assert pe._cadence(250) == {
      "total_steps": 250,
      "eval_every_steps": 250,
      "checkpoint_every_steps": 50,
      "log_every_steps": 25,
  }
  assert pe._cadence(8)["checkpoint_every_steps"] == 8


def test_unknown_arm_is_refused(tmp_path):
  with pytest.raises(ValueError, match="--arms 'pcl'"):
    pe.run_seed(str(tmp_path), 0, [4], ["pcl"], variant="smoke", pretrain_override=4)


def test_uir18_family_is_the_synthesizable_task_set_and_every_config_takes_it():
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import degradations  # pylint: disable=g-import-not-at-top

  names = [t if isinstance(t, str) else t.name for t in degradations.resolve("uir19_syn")]
  assert tuple(names) == pe.UIR18
  for spec, overrides in pe.FAMILIES["uir18"].items():
    config = config_lib.load(f"{spec}:quickstart", overrides)
    resolved = degradations.resolve(config.data.degradations)
    assert len(resolved) == 18, spec
    assert not config.data.get("levels"), spec  # random levels over each type's range
  # The fine-tuning config as the benchmark builds it: 18 types, one label per type.
  assert set(pe.FAMILIES["uir18"]) == {
      f"configs/{n}.py" for n in ("maskdcpt", "dcpt", "restoration")
  }


def test_unknown_family_is_refused(tmp_path):
  with pytest.raises(ValueError, match="--family 'blur'"):
    pe.run_seed(str(tmp_path), 0, [4], ["scratch"], variant="smoke", family="blur")
