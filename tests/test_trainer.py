"""The trainer end to end on the DCPT smoke config: outputs, resume, sharding, NaN, errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer


def smoke(**overrides):
  """The DCPT smoke config on one device unless the test asks for a mesh."""
  return config_lib.load("configs/dcpt.py:smoke", {"mesh.num_devices": 1, **overrides})


def train_records(workdir):
  return [{k: v for k, v in r.items() if k not in config_lib.TIMING_KEYS}
          for r in metrics_lib.read_jsonl(workdir)
          if r["split"] == "train" and set(r) - {"step", "split", *config_lib.TIMING_KEYS}]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  state = trainer.train_and_evaluate(smoke(), workdir)
  return workdir, jax.device_get(state.params)


def test_smoke_writes_metrics_checkpoints_and_images(uninterrupted):
  workdir, _ = uninterrupted
  records = metrics_lib.read_jsonl(workdir)
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [6]
  for key in ("psnr", "psnr_input", "ssim", "accuracy", "psnr/gaussian_noise", "accuracy/haze"):
    assert np.isfinite(evals[0][key]), key
  assert [r["step"] for r in train_records(workdir)] == [1, 2, 3, 4, 5, 6]
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == [2, 4, 6]
  assert os.path.exists(os.path.join(workdir, "eval_images", "step_00000006.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))


def test_resume_is_bit_for_bit(uninterrupted, tmp_path):
  """Stop after step 4 (as a kill after the checkpoint would), restart: identical end state."""
  straight_dir, straight_params = uninterrupted
  workdir = str(tmp_path)
  trainer.train_and_evaluate(smoke(total_steps=4), workdir)
  # A half-written record after the checkpoint, as a kill mid-interval leaves, must disappear.
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write(json.dumps({"step": 5, "split": "train", "loss": 123.0}) + "\n")
  resumed = trainer.train_and_evaluate(smoke(), workdir)
  for a, b in zip(jax.tree.leaves(straight_params), jax.tree.leaves(jax.device_get(resumed.params))):
    np.testing.assert_array_equal(a, b)
  assert train_records(workdir) == train_records(straight_dir)


# SGD, not Adam: Adam's per-weight normalisation turns rounding-level gradient differences of
# near-zero-gradient weights into learning-rate-sized updates, and it would hide a gradient that
# is off by a constant factor (e.g. a missing mean over devices). Plain SGD exposes both.
SGD = {"optimizer.name": "sgd", "optimizer.momentum": 0.9, "optimizer.learning_rate": 0.05,
       "total_steps": 4}


@pytest.fixture(scope="module")
def single_device_sgd(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("single_sgd"))
  trainer.train_and_evaluate(smoke(**SGD), workdir)
  return train_records(workdir)


# NAFNet has depthwise convolutions: tensor parallelism ("model" > 1) is refused for it (see
# sharding.check_tensor_parallel and tests/test_sharding.py); the rule itself is tested there.
@pytest.mark.parametrize("mesh", [dict(data=8, fsdp=1, model=1), dict(data=2, fsdp=4, model=1)])
def test_sharded_losses_equal_single_device(single_device_sgd, tmp_path, mesh):
  """The same run on 8 fake devices (data / FSDP / tensor-parallel) as on one device."""
  overrides = {f"mesh.{k}": v for k, v in mesh.items()}
  overrides.update({"mesh.num_devices": 8, "mesh.min_shard_size": 0, **SGD})
  t = trainer.Trainer(smoke(**overrides), str(tmp_path))
  sharded_axes = {axis for s in jax.tree.leaves(t.state_shardings) for axis in s.spec if axis}
  assert sharded_axes == {a for a in ("fsdp", "model") if mesh[a] > 1}
  t.run()
  a, b = single_device_sgd, train_records(str(tmp_path))
  assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
  for ra, rb in zip(a, b):
    for key, rtol in (("loss", 2e-4), ("l_pix", 5e-4), ("l_cls", 2e-4), ("grad_norm", 1e-3)):
      np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, err_msg=f"step {ra['step']} {key}")


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  original = trainer._train_step

  def poisoned(state, batch, rng, **kw):
    new_state, metrics = original(state, batch, rng, **kw)
    poison = jnp.where(new_state.step >= 3, jnp.nan, 0.0)
    params = jax.tree.map(lambda p: p + poison, new_state.params)
    return new_state.replace(params=params), dict(metrics, loss=metrics["loss"] + poison)

  monkeypatch.setattr(trainer, "_train_step", poisoned)
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 3\b.*step 2"):
    trainer.train_and_evaluate(smoke(), str(tmp_path))
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [2]
  loaded = ckpt_lib.load_variables(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(loaded["params"]))


def test_config_errors_name_the_key(tmp_path):
  with pytest.raises(KeyError, match="no_such_key"):
    smoke(**{"data.no_such_key": 1})
  with pytest.raises(ValueError, match="batch_size=9"):
    trainer.Trainer(smoke(batch_size=9, **{"mesh.num_devices": 8}), str(tmp_path))
  with pytest.raises(ValueError, match="config.mesh"):
    trainer.Trainer(smoke(**{"mesh.data": 3}), str(tmp_path))
  with pytest.raises(ValueError, match="depthwise"):
    trainer.Trainer(smoke(**{"mesh.num_devices": 8, "mesh.data": 4, "mesh.model": 2}), str(tmp_path))
  with pytest.raises(ValueError, match="Unknown model 'resnet9000'"):
    trainer.Trainer(smoke(**{"model.name": "resnet9000"}), str(tmp_path))


def test_missing_data_folder_is_a_clear_error(tmp_path):
  config = config_lib.load("configs/dcpt.py:paper", {
      "data.root": str(tmp_path / "nowhere"), "model.preset": "nafnet_tiny", "batch_size": 8,
      "data.eval_batch_size": 8, "data.worker_count": 0})
  with pytest.raises(Exception, match="nowhere"):
    trainer.Trainer(config, str(tmp_path / "run"))
