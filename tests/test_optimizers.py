"""Optimizer pieces against hand computations."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxmilab import optimizers


def test_lr_multipliers_scale_matching_parameters_only():
  params = {"backbone": {"kernel": jnp.ones(3)}, "classifier": {"kernel": jnp.ones(2)}}
  grads = {"backbone": {"kernel": jnp.full(3, 2.0)}, "classifier": {"kernel": jnp.full(2, 2.0)}}
  config = ml_collections.ConfigDict(
      dict(
          name="sgd",
          learning_rate=0.1,
          momentum=0.0,
          nesterov=False,
          lr_multipliers=(("classifier", 10.0),),
      )
  )
  tx = optimizers.create(config, total_steps=10)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["backbone"]["kernel"], -0.1 * 2.0)  # lr * g
  np.testing.assert_allclose(updates["classifier"]["kernel"], -1.0 * 2.0)  # 10 lr * g


def test_schedules_match_their_definitions():
  cosine = optimizers.create_schedule(
      ml_collections.ConfigDict(
          dict(learning_rate=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.0)
      ),
      total_steps=110,
  )
  assert float(cosine(5)) == pytest.approx(0.5)  # linear warm-up
  assert float(cosine(60)) == pytest.approx(0.5 * (1 + np.cos(np.pi * 50 / 100)))
  step = optimizers.create_schedule(
      ml_collections.ConfigDict(
          dict(learning_rate=1.0, schedule="multistep", decay_steps=(10, 20), decay_factor=0.5)
      ),
      total_steps=30,
  )
  assert [float(step(s)) for s in (9, 10, 19, 20)] == [1.0, 0.5, 0.5, 0.25]


def test_accumulation_is_not_in_the_transformation():
  """With accumulate_steps = 2 every `update` is an optimizer update (the trainer averages the
  micro-batch gradients before calling it); optax.MultiSteps returned 0 on odd calls."""
  config = ml_collections.ConfigDict(
      dict(name="sgd", learning_rate=1.0, momentum=0.0, nesterov=False, accumulate_steps=2)
  )
  tx = optimizers.create(config, total_steps=4)
  params = jnp.zeros(1)
  state = tx.init(params)
  u1, state = tx.update(jnp.array([1.0]), state, params)
  u2, state = tx.update(jnp.array([3.0]), state, params)
  assert float(u1[0]) == pytest.approx(-1.0) and float(u2[0]) == pytest.approx(-3.0)


def test_unknown_optimizer_is_named():
  with pytest.raises(ValueError, match="'lamb'"):
    optimizers.create(ml_collections.ConfigDict(dict(name="lamb", learning_rate=1.0)), 1)


def test_schedule_counts_updates_under_accumulation():
  """total_steps micro-steps with accumulation k = total_steps / k updates of the schedule."""
  config = ml_collections.ConfigDict(
      dict(
          name="sgd",
          learning_rate=1.0,
          momentum=0.0,
          nesterov=False,
          schedule="cosine",
          accumulate_steps=2,
      )
  )
  tx = optimizers.create(config, total_steps=8)  # 4 updates: the cosine ends at the 4th
  params = jnp.zeros(1)
  state = tx.init(params)
  lrs = []
  for _ in range(4):
    update, state = tx.update(jnp.array([1.0]), state, params)
    lrs.append(-float(update[0]))
  np.testing.assert_allclose(lrs, [0.5 * (1 + np.cos(np.pi * i / 4)) for i in range(4)], atol=1e-6)
