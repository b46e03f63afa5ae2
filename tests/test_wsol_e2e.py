"""WSOL end to end: the smoke configs of cam, bcam and bagcams train a few steps and write the
protocol metrics to metrics.jsonl; bagcams loads a cam run post hoc; the colab runs."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer

PROTOCOL_KEYS = ("MaxBoxAccV2", "PxAP", "top1_loc", "gt_known_loc", "pIoU")


def _eval_record(workdir):
  evals = metrics_lib.read_split(workdir, "eval")
  assert evals, f"no eval record in {workdir}/metrics.jsonl"
  return evals[-1]


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cam"))
  state = trainer.train_and_evaluate(
      config_lib.load("configs/cam.py:smoke", {"mesh.num_devices": 1}), workdir
  )
  return workdir, jax.device_get(state.params), jax.device_get(state.model_state)


def test_cam_smoke_reports_protocol_metrics(cam_run):
  record = _eval_record(cam_run[0])
  assert record["step"] == 3
  for key in PROTOCOL_KEYS:
    assert 0.0 <= record[key] <= 100.0 and math.isfinite(record[key]), key


@pytest.mark.slow
def test_bcam_smoke_reports_prob_and_mask_metrics(tmp_path):
  trainer.train_and_evaluate(
      config_lib.load("configs/bcam.py:smoke", {"mesh.num_devices": 1}), str(tmp_path)
  )
  record = _eval_record(str(tmp_path))
  for key in (
      PROTOCOL_KEYS
      + tuple(f"mask/{k}" for k in ("MaxBoxAccV2", "PxAP"))
      + ("attention_A/top_share", "attention_A/head_top_share", "attention_B/top_share")
  ):
    assert 0.0 <= record[key] <= 100.0, key
  train = [
      r for r in metrics_lib.read_jsonl(str(tmp_path)) if r["split"] == "train" and "mlsm_bo" in r
  ]
  assert train and all(math.isfinite(r["loss"]) for r in train)


def test_bagcams_post_hoc_on_a_cam_run(cam_run, tmp_path):
  """--mode=eval with init_from a cam run: no training step; parameters AND BatchNorm statistics
  of the evaluated network are exactly the loaded ones (BagCAMs is post hoc)."""
  cam_dir, cam_params, cam_state = cam_run
  assert jax.tree.leaves(cam_state["batch_stats"])  # the tiny ResNet has BatchNorm statistics
  overrides = {"mesh.num_devices": 1, "method.init_from": cam_dir}
  config = config_lib.load("configs/bagcams.py:smoke", overrides)
  state, scalars = trainer.Trainer(config, str(tmp_path)).evaluate_checkpoint()
  state = jax.device_get(state)
  assert int(state.step) == 0
  for ref, got in ((cam_params, state.params), (cam_state, state.model_state)):
    ref_leaves = jax.tree_util.tree_leaves_with_path(ref)
    got_leaves = dict(
        (jax.tree_util.keystr(p), v) for p, v in jax.tree_util.tree_leaves_with_path(got)
    )
    assert len(ref_leaves) == len(got_leaves)
    for path, value in ref_leaves:
      np.testing.assert_array_equal(value, got_leaves[jax.tree_util.keystr(path)])
  record = _eval_record(str(tmp_path))
  assert not [r for r in metrics_lib.read_jsonl(str(tmp_path)) if r["split"] == "train"]
  for key in PROTOCOL_KEYS + ("cam/MaxBoxAccV2", "cam/PxAP", "gt_logit_nonpositive"):
    assert 0.0 <= record[key] <= 100.0 and record[key] == scalars[key], key
