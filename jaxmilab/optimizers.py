"""optax optimizers and learning-rate schedules from `config.optimizer`."""

from __future__ import annotations

import re
from typing import Sequence

import jax
import ml_collections
import optax

from jaxmilab import config_options

# Every config.optimizer key with its default (config_lib.base_config starts from these; read
# through config_options.options, so a stray key is an error naming it).
CONFIG_DEFAULTS = dict(
    name="adamw",  # adam | adamw | amsgrad | sgd
    learning_rate=1e-3,
    schedule="constant",  # constant | cosine | multistep
    warmup_steps=0,
    min_lr_ratio=0.0,  # cosine: final lr / peak lr
    hold_steps=0,  # cosine: steps the peak lr is held before the cosine starts
    decay_steps=(),  # multistep: steps at which lr *= decay_factor
    decay_factor=0.5,
    weight_decay=0.0,
    b1=0.9,
    b2=0.999,  # adam*
    momentum=0.9,
    nesterov=True,  # sgd
    grad_clip_norm=0.0,  # 0 = off
    # > 1: one optimizer update per that many micro-batches of `batch_size`, their gradients
    # summed in float32 inside the jitted step (trainer._train_step, a scan) and averaged.
    accumulate_steps=1,
    lr_multipliers=(),
)  # ((regex over parameter paths, factor), ...)


def _options(config) -> config_options.Options:
  return config_options.options(config, CONFIG_DEFAULTS, component="optimizer", part="optimizer")


def create_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """constant | cosine | multistep (`decay_steps` + `decay_factor`), with linear warm-up."""
  config = _options(config)
  lr = float(config.learning_rate)
  warmup = int(config.warmup_steps)
  kind = config.schedule
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    # hold_steps (optional): the peak lr is held that long before the cosine starts, as
    # Restormer's CosineAnnealingRestartCyclicLR first period with eta_min = the peak lr.
    hold = int(config.hold_steps)
    main = optax.cosine_decay_schedule(
        lr, max(total_steps - warmup - hold, 1), alpha=float(config.min_lr_ratio)
    )
    if hold:
      main = optax.join_schedules([optax.constant_schedule(lr), main], [hold])
  elif kind == "multistep":
    boundaries = {int(s) - warmup: float(config.decay_factor) for s in config.decay_steps}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    raise ValueError(
        f"config.optimizer.schedule={kind!r}: use 'constant', 'cosine' or 'multistep'."
    )
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def create(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """adam | adamw | sgd with optional global-norm clipping: one update per call of `update`.

  `total_steps` counts micro-steps (trainer steps); with `accumulate_steps` = k > 1 the trainer
  averages k micro-batch gradients inside one jitted step and calls `update` once
  (`trainer._train_step`), so the schedule here counts the `total_steps // k` optimizer
  updates. (Accumulation used to be `optax.MultiSteps` around this transformation, which
  ran a full Adam update every micro-step and a jit per micro-batch; it is no longer used.)
  """
  opts = _options(config)
  accumulate = int(opts.accumulate_steps)
  # The schedule counts optimizer updates, not micro-steps.
  schedule = create_schedule(config, max(total_steps // accumulate, 1))
  name = opts.name
  if name == "adamw":
    tx = optax.adamw(schedule, b1=opts.b1, b2=opts.b2, weight_decay=opts.weight_decay)
  elif name == "adam":
    tx = optax.adam(schedule, b1=opts.b1, b2=opts.b2, nesterov=False)
  elif name == "amsgrad":
    tx = optax.amsgrad(schedule, b1=opts.b1, b2=opts.b2)
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=opts.momentum, nesterov=opts.nesterov)
    if opts.weight_decay:
      tx = optax.chain(optax.add_decayed_weights(opts.weight_decay), tx)
  else:
    raise ValueError(f"config.optimizer.name={name!r}: use 'adam', 'adamw', 'amsgrad' or 'sgd'.")
  multipliers = opts.lr_multipliers
  if multipliers:
    tx = optax.chain(tx, scale_by_path(multipliers))
  clip = opts.grad_clip_norm
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
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
      raise ValueError(
          f"config.optimizer.lr_multipliers: entries are (regex, factor), got {entry!r}."
      )
    rules.append((re.compile(entry[0]), float(entry[1])))

  def factor(path) -> float:
    name = jax.tree_util.keystr(path)
    return next((f for pattern, f in rules if pattern.search(name)), 1.0)

  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda p, u: u * factor(p), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
