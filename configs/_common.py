"""Pieces shared by the experiment configs (not an experiment: no VARIANTS, not listed by --help).

  from jaxmilab.configs import _common
  _common.cadence(c, batch_size=8, total_steps=2, log_every=1, learning_rate=1e-3)
  steps_per_epoch = _common.epoch_cadence(c, batch_size=32, examples=5994, epochs=50,
                                          log_every=50, eval_every_epochs=5)
"""

from __future__ import annotations

from typing import Any


def cadence(c, *, batch_size: int, total_steps: int, log_every: int, eval_every: int | None = None,
            checkpoint_every: int | None = None, **optimizer: Any) -> None:
  """Sets the global batch size, the run length and the log / eval / checkpoint periods.

  Args:
    c: the experiment config (from `config_lib.base_config()`), changed in place.
    batch_size: `c.batch_size` (global).
    total_steps: `c.total_steps`.
    log_every: `c.log_every_steps`.
    eval_every: `c.eval_every_steps`; None = once, at the end (`total_steps`).
    checkpoint_every: `c.checkpoint_every_steps`; None = at the end (`total_steps`).
    **optimizer: `c.optimizer` keys to set as well (learning_rate=..., schedule=...).

  Raises:
    KeyError: naming an optimizer key that `config_lib.base_config()` does not have.
  """
  c.batch_size = batch_size
  c.total_steps = total_steps
  c.log_every_steps = log_every
  c.eval_every_steps = total_steps if eval_every is None else eval_every
  c.checkpoint_every_steps = total_steps if checkpoint_every is None else checkpoint_every
  for key, value in optimizer.items():
    if key not in c.optimizer:
      raise KeyError(f"configs/_common.py cadence: config.optimizer has no key {key!r}; keys: "
                     f"{', '.join(sorted(c.optimizer))}.")
    c.optimizer[key] = value


def epoch_cadence(c, *, batch_size: int, examples: int, epochs: int, log_every: int,
                  eval_every_epochs: int, checkpoint_every_epochs: int = 1,
                  drop_last: bool = True, **optimizer: Any) -> int:
  """`cadence` counted in epochs of `examples` training examples; returns the steps per epoch.

  Args:
    c: the experiment config, changed in place.
    batch_size: the global batch size.
    examples: training examples per epoch.
    epochs: the run length in epochs.
    log_every: `c.log_every_steps` (steps).
    eval_every_epochs: evaluation period in epochs.
    checkpoint_every_epochs: checkpoint period in epochs.
    drop_last: True = the last partial batch of an epoch is dropped (steps per epoch rounded
      down, a PyTorch DataLoader with drop_last=True); False = kept (rounded up).
    **optimizer: `c.optimizer` keys to set as well.

  Returns:
    The steps per epoch.
  """
  steps_per_epoch = examples // batch_size if drop_last else -(-examples // batch_size)
  cadence(c, batch_size=batch_size, total_steps=epochs * steps_per_epoch, log_every=log_every,
          eval_every=eval_every_epochs * steps_per_epoch,
          checkpoint_every=checkpoint_every_epochs * steps_per_epoch, **optimizer)
  return steps_per_epoch
