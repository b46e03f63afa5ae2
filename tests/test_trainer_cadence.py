"""The trainer's wall-clock checkpoint cadence and its goodput rows, on the DCPT smoke config."""

from __future__ import annotations

import os

from jaxmilab import config_lib
from jaxmilab import goodput
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer


def test_minutes_cadence_checkpoints_at_log_steps_and_goodput_rows_are_written(tmp_path):
  """checkpoint_every_minutes > 0 (here ~0: always due) saves at every log step although the step
  cadence alone (checkpoint_every_steps = total_steps) would save only at the end; each log step
  writes a cumulative "goodput" row."""
  config = config_lib.load(
      "configs/dcpt.py:smoke",
      {
          "mesh.num_devices": 1,
          "total_steps": 6,
          "log_every_steps": 2,
          "eval_every_steps": 6,
          "checkpoint_every_steps": 6,
          "checkpoint_every_minutes": 1e-9,
          "keep_checkpoints": 10,
      },
  )
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(config, workdir)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps == [2, 4, 6]
  rows = metrics_lib.read_split(workdir, goodput.SPLIT)
  assert [r["step"] for r in rows] == [2, 4, 6]
  for r in rows:
    assert set(goodput.KEYS) <= set(r)
    assert 0 < r["goodput"] <= 1 and r["restarts"] == 0
    parts = sum(r[k] for k in goodput.CATEGORIES if k != "lost_seconds")
    assert parts <= r["total_seconds"] * 1.001 + 1e-3
  assert rows[-1]["checkpoint_seconds"] > 0 and rows[-1]["compile_seconds"] > 0
  assert rows[0]["total_seconds"] < rows[-1]["total_seconds"]
