"""DCPT learns: the loss falls and the degradation classifier beats chance on held-out photos."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("dcpt"))
  config = config_lib.load("configs/dcpt.py:smoke", {
      "mesh.num_devices": 1, "total_steps": 120, "eval_every_steps": 120, "checkpoint_every_steps": 120,
      "log_every_steps": 1, "optimizer.learning_rate": 2e-3})
  trainer.train_and_evaluate(config, workdir)
  return metrics_lib.read_jsonl(workdir)


def test_loss_falls(short_run):
  losses = np.array([r["loss"] for r in short_run if r["split"] == "train" and "loss" in r])
  assert len(losses) == 120
  assert losses[-10:].mean() < 0.8 * losses[:10].mean(), (losses[:10].mean(), losses[-10:].mean())


def test_classifier_beats_chance_on_held_out_photos(short_run):
  final = [r for r in short_run if r["split"] == "eval"][-1]
  # 5 degradation types: chance is 0.2; 10 held-out examples (2 photos x 5 types), so 5 or more
  # right by chance has probability 0.033.
  assert final["accuracy"] >= 0.5, final


def test_cli_rejects_unknown_config_key(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "jaxmilab.main", "--config=configs/dcpt.py:smoke",
       "--config.no_such_key=1", f"--workdir={tmp_path}"],
      capture_output=True, text=True, timeout=120, cwd=config_lib.__file__.rsplit("/jaxmilab/", 1)[0])
  assert result.returncode != 0
  assert "no_such_key" in result.stderr
