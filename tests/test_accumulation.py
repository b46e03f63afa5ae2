"""Gradient accumulation inside one jitted step (trainer._mean_gradients: a scan over
micro-batches, float32 gradient sums, one optimizer update) against one step on the full batch."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxmilab import config_lib
from jaxmilab import optimizers
from jaxmilab import trainer


class _MLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.gelu(nn.Dense(16)(x)))


class _Regression:
  """Mean squared error over the examples of the batch: deterministic, no batch statistics."""

  def __init__(self):
    self.net = _MLP()

  def loss(self, params, model_state, batch, rng):
    del rng
    pred = self.net.apply({"params": params}, batch["x"])
    err = jnp.mean((pred - batch["y"]) ** 2)
    return err, ({"abs_err": jnp.mean(jnp.abs(pred - batch["y"]))}, model_state)


class _Counting:
  """model_state counts the micro-batches seen and sums their first input: threading check."""

  def loss(self, params, model_state, batch, rng):
    del rng
    seen = {"n": model_state["n"] + 1, "x0": model_state["x0"] + batch["x"][0, 0]}
    return jnp.sum(params["w"] * batch["x"]), ({}, seen)


def _adamw(total_steps, accumulate):
  config = ml_collections.ConfigDict(dict(optimizers.CONFIG_DEFAULTS))
  config.update(
      name="adamw",
      learning_rate=1e-2,
      weight_decay=1e-2,
      grad_clip_norm=0.5,
      schedule="cosine",
      warmup_steps=1,
      accumulate_steps=accumulate,
  )
  return optimizers.create(config, total_steps), optimizers.create_schedule(
      config, max(total_steps // accumulate, 1)
  )


def _run(accumulate: int, updates: int, data):
  """`updates` optimizer updates, each on 8 examples split into `accumulate` micro-batches."""
  method = _Regression()
  tx, schedule = _adamw(updates * accumulate, accumulate)
  params = method.net.init(jax.random.key(0), data["x"][:1])["params"]
  state = trainer.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), model_state={}
  )
  step = jax.jit(
      lambda s, b: trainer._train_step(  # pylint: disable=protected-access
          s,
          b,
          jax.random.key(0),
          method=method,
          tx=tx,
          schedule=schedule,
          accumulate=accumulate,
          ema_decay=0.0,
      )
  )
  history = []
  for u in range(updates):
    batch = {k: v[u * 8 : (u + 1) * 8] for k, v in data.items()}
    if accumulate > 1:
      batch = {k: v.reshape((accumulate, 8 // accumulate) + v.shape[1:]) for k, v in batch.items()}
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  return state, history


@pytest.mark.parametrize("accumulate", [2, 4])
def test_accumulated_update_equals_one_step_on_the_full_batch(accumulate):
  """k micro-batches of 8 / k give the parameters, Adam state, loss, metrics and learning rate of
  one step on the 8 examples (the loss is a mean over equal micro-batches), update after update."""
  rng = np.random.default_rng(0)
  data = {
      "x": rng.normal(size=(24, 5)).astype(np.float32),
      "y": rng.normal(size=(24, 3)).astype(np.float32),
  }
  full, full_hist = _run(1, 3, data)
  acc, acc_hist = _run(accumulate, 3, data)
  assert int(full.step) == 3 and int(acc.step) == 3 * accumulate  # steps count micro-batches
  for a, b in zip(
      jax.tree.leaves((acc.params, acc.opt_state)), jax.tree.leaves((full.params, full.opt_state))
  ):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  for h_acc, h_full in zip(acc_hist, full_hist):
    for key in ("loss", "abs_err", "grad_norm", "learning_rate"):
      assert float(h_acc[key]) == pytest.approx(float(h_full[key]), rel=1e-5), key
  # A positive control: the updates moved the parameters.
  params0 = _Regression().net.init(jax.random.key(0), data["x"][:1])["params"]
  assert (
      max(
          float(jnp.max(jnp.abs(a - b)))
          for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(params0))
      )
      > 1e-3
  )


def test_one_optimizer_update_per_call():
  """The mechanism: Adam's count (updates applied) advances once per call, not once per
  micro-batch as it did under optax.MultiSteps, whose inner Adam ran every micro-step."""
  rng = np.random.default_rng(1)
  data = {
      "x": rng.normal(size=(16, 5)).astype(np.float32),
      "y": rng.normal(size=(16, 3)).astype(np.float32),
  }
  state, _ = _run(4, 2, data)
  counts = [
      np.asarray(x)
      for x in jax.tree.leaves(state.opt_state)
      if np.asarray(x).dtype == np.int32 and np.asarray(x).ndim == 0
  ]
  assert counts and all(int(c) == 2 for c in counts), counts
  assert not any(
      isinstance(s, optax.MultiStepsState)
      for s in jax.tree.leaves(
          state.opt_state, is_leaf=lambda s: isinstance(s, optax.MultiStepsState)
      )
  )


def test_gradients_are_summed_in_float32_and_model_state_is_threaded():
  """bfloat16 parameters: the k micro-batch gradients are summed in float32 (a bfloat16 sum of
  1 + 1e-3 * k ... would round away the small terms), then cast back; model_state passes from
  micro-batch to micro-batch."""
  k = 8
  method = _Counting()
  params = {"w": jnp.zeros((1, 1), jnp.bfloat16)}
  # Gradient of sum(w * x) is x: micro-batch i has x = 1 + 2**-9 * i; bfloat16 has 8 bits of
  # mantissa, so 1 + 2**-9 is not representable and a bfloat16 running sum loses every 2**-9 i.
  x = jnp.asarray([[[1.0 + 2.0**-9 * i]] for i in range(k)], jnp.float32)
  _, _, model_state, grads = trainer._mean_gradients(  # pylint: disable=protected-access
      params,
      {"n": jnp.zeros((), jnp.int32), "x0": jnp.zeros((), jnp.float32)},
      {"x": x},
      jax.random.key(0),
      jnp.zeros((), jnp.int32),
      method=method,
      accumulate=k,
  )
  assert grads["w"].dtype == jnp.bfloat16
  exact = float(np.mean(1.0 + 2.0**-9 * np.arange(k)))  # 1.0068359375
  assert float(grads["w"][0, 0]) == pytest.approx(exact, abs=2**-8)
  bf16_sum = jnp.zeros((), jnp.bfloat16)
  for i in range(k):  # the sum a bfloat16 carry would do
    bf16_sum = bf16_sum + x[i, 0, 0].astype(jnp.bfloat16)
  assert abs(float(bf16_sum) / k - exact) > abs(float(grads["w"][0, 0]) - exact)
  assert int(model_state["n"]) == k
  assert float(model_state["x0"]) == pytest.approx(float(jnp.sum(x)), rel=1e-6)


def test_micro_batch_rngs_are_those_of_plain_steps():
  """Micro-batch i of a call at step s draws with fold_in(rng, s + i), as plain step s + i does."""
  seen = []

  class _Rng:

    def loss(self, params, model_state, batch, rng):
      seen.append(None)
      return jnp.sum(params["w"]) * 0 + jax.random.uniform(rng), (
          {"u": jax.random.uniform(rng)},
          model_state,
      )

  params = {"w": jnp.zeros(2)}
  rng = jax.random.key(3)
  _, metrics, _, _ = trainer._mean_gradients(  # pylint: disable=protected-access
      params,
      {},
      {"x": jnp.zeros((3, 1))},
      rng,
      jnp.asarray(6, jnp.int32),
      method=_Rng(),
      accumulate=3,
  )
  expected = np.mean([float(jax.random.uniform(jax.random.fold_in(rng, 6 + i))) for i in range(3)])
  assert float(metrics["u"]) == pytest.approx(expected, rel=1e-6)


def test_trainer_cadences_must_be_multiples_of_accumulate(tmp_path):
  config = config_lib.load(
      "configs/dcpt.py:smoke",
      {"mesh.num_devices": 1, "optimizer.accumulate_steps": 2, "log_every_steps": 3},
  )
  with pytest.raises(ValueError, match="log_every_steps=3 must be a multiple of"):
    trainer.Trainer(config, str(tmp_path))


@pytest.mark.slow
def test_trainer_accumulated_run_equals_full_batch_run(tmp_path):
  """The whole trainer (data pipeline, prefetch, jit, checkpoints) on the DCPT smoke config:
  batch 4 x accumulate 2 for 4 micro-steps ends with the parameters of batch 8 for 2 steps (the
  global example stream is the same; the smoke loss draws no random numbers)."""
  common = {
      "mesh.num_devices": 1,
      "log_every_steps": 2,
      "eval_every_steps": 100,
      "checkpoint_every_steps": 2,
      "ema_decay": 0.0,
  }
  full = trainer.train_and_evaluate(
      config_lib.load(
          "configs/dcpt.py:smoke",
          {
              **common,
              "batch_size": 8,
              "data.eval_batch_size": 8,
              "total_steps": 2,
              "eval_every_steps": 2,
          },
      ),
      str(tmp_path / "full"),
  )
  acc = trainer.train_and_evaluate(
      config_lib.load(
          "configs/dcpt.py:smoke",
          {
              **common,
              "batch_size": 4,
              "data.eval_batch_size": 8,
              "total_steps": 4,
              "eval_every_steps": 4,
              "optimizer.accumulate_steps": 2,
          },
      ),
      str(tmp_path / "acc"),
  )
  assert int(full.step) == 2 and int(acc.step) == 4
  for a, b in zip(jax.tree.leaves(acc.params), jax.tree.leaves(full.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)
  # Checkpoints and rows at micro-step numbers.
  assert sorted(
      p.name for p in (tmp_path / "acc" / "checkpoints").iterdir() if p.name.isdigit()
  ) == ["2", "4"]
