"""optax optimizers and learning-rate schedules from `config.optimizer`."""

from __future__ import annotations

import re
from typing import Sequence

import jax
import ml_collections
import optax


def create_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """constant | cosine | multistep (`decay_steps` + `decay_factor`), with linear warm-up."""
  lr = float(config.learning_rate)
  warmup = int(config.get("warmup_steps", 0))
  kind = config.get("schedule", "constant")
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    # hold_steps (optional): the peak lr is held that long before the cosine starts, as
    # Restormer's CosineAnnealingRestartCyclicLR first period with eta_min = the peak lr.
    hold = int(config.get("hold_steps", 0) or 0)
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup - hold, 1),
                                       alpha=float(config.get("min_lr_ratio", 0.0)))
    if hold:
      main = optax.join_schedules([optax.constant_schedule(lr), main], [hold])
  elif kind == "multistep":
    boundaries = {int(s) - warmup: float(config.get("decay_factor", 0.5))
                  for s in config.get("decay_steps", ())}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(f"config.optimizer.schedule={kind!r}: use 'constant', 'cosine' or 'multistep'.")
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def create(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """adam | adamw | sgd, optional global-norm clipping and gradient accumulation.

  `accumulate_steps` > 1 averages the gradients of that many micro-batches
  (optax.MultiSteps); the schedule then counts optimizer updates.
  """
  accumulate = int(config.get("accumulate_steps", 1))
  # With accumulation the schedule counts optimizer updates, not micro-steps.
  schedule = create_schedule(config, max(total_steps // accumulate, 1))
  name = config.get("name", "adamw")
  if name == "adamw":
    tx = optax.adamw(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999),
                     weight_decay=config.get("weight_decay", 0.0))
  elif name == "adam":
    tx = optax.adam(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999),
                    nesterov=False)
  elif name == "amsgrad":
    tx = optax.amsgrad(schedule, b1=config.get("b1", 0.9), b2=config.get("b2", 0.999))
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=config.get("momentum", 0.9), nesterov=config.get("nesterov", True))
    if config.get("weight_decay", 0.0):
      tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
  else:
    raise ValueError(f"config.optimizer.name={name!r}: use 'adam', 'adamw', 'amsgrad' or 'sgd'.")
  multipliers = config.get("lr_multipliers", ())
  if multipliers:
    tx = optax.chain(tx, scale_by_path(multipliers))
  clip = config.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  if accumulate > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accumulate)
  return tx


def scale_by_path(multipliers: Sequence[tuple[str, float]]) -> optax.GradientTransformation:
  """Multiplies the updates of parameters whose path matches a regex (first match wins).

  Learning-rate groups as in PyTorch's param groups: `config.optimizer.lr_multipliers =
  (("classifier", 10.0),)` gives 10x the learning rate to parameters whose path (e.g.
  "['params']['classifier']['kernel']") contains "classifier".
  """
  rules = []
  for entry in multipliers:
    if len(entry) != 2:
      raise ValueError(f"config.optimizer.lr_multipliers: entries are (regex, factor), got {entry!r}.")
    rules.append((re.compile(entry[0]), float(entry[1])))

  def factor(path) -> float:
    name = jax.tree_util.keystr(path)
    return next((f for pattern, f in rules if pattern.search(name)), 1.0)

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
