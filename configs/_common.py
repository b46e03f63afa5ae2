"""Pieces shared by the experiment configs (not an experiment: no VARIANTS, not listed by --help).

from jaxmilab.configs import _common
_common.cadence(c, batch_size=8, total_steps=2, log_every=1, learning_rate=1e-3)
steps_per_epoch = _common.epoch_cadence(c, batch_size=32, examples=5994, epochs=50,
                                        log_every=50, eval_every_epochs=5)
_common.restoration_cpu_size(c, "smoke", preset="nafnet_tiny", batch_size=8,
                             eval_batch_size=8, total_steps=6, checkpoint_every=2)
"""

from __future__ import annotations

from typing import Any


def cadence(
    c,
    *,
    batch_size: int,
    total_steps: int,
    log_every: int,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    **optimizer: Any,
) -> None:
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
      raise KeyError(
          f"configs/_common.py cadence: config.optimizer has no key {key!r}; keys: "
          f"{', '.join(sorted(c.optimizer))}."
      )
    c.optimizer[key] = value


def epoch_cadence(
    c,
    *,
    batch_size: int,
    examples: int,
    epochs: int,
    log_every: int,
    eval_every_epochs: int,
    checkpoint_every_epochs: int = 1,
    drop_last: bool = True,
    **optimizer: Any,
) -> int:
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
  cadence(
      c,
      batch_size=batch_size,
      total_steps=epochs * steps_per_epoch,
      log_every=log_every,
      eval_every=eval_every_epochs * steps_per_epoch,
      checkpoint_every=checkpoint_every_epochs * steps_per_epoch,
      **optimizer,
  )
  return steps_per_epoch


# What the CPU sizes of the restoration configs (configs/dcpt.py, configs/teaformer.py) share:
# `smoke` (seconds: the tests run it) trains on 32-px crops and logs every step; `quickstart`
# (minutes on a 2-core CPU) on 64-px crops, scored on 128-px eval crops, with a short warm-up
# and a cosine decay. Ours, chosen for CPU time, not from a paper.
RESTORATION_CPU_SIZES = {
    "smoke": dict(patch_size=32, eval_size=32, log_every=1, optimizer=dict(learning_rate=1e-3)),
    "quickstart": dict(
        patch_size=64,
        eval_size=128,
        log_every=25,
        optimizer=dict(learning_rate=1e-3, schedule="cosine", warmup_steps=20),
    ),
}


def restoration_cpu_size(
    c,
    size: str,
    *,
    preset: str,
    batch_size: int,
    eval_batch_size: int,
    total_steps: int,
    checkpoint_every: int,
) -> None:
  """Sets the model preset, crops and cadence of a restoration config's `smoke` / `quickstart`.

  Evaluation runs once, at the end; crops, log period and optimizer come from
  `RESTORATION_CPU_SIZES[size]`.

  Args:
    c: the experiment config, changed in place.
    size: "smoke" or "quickstart".
    preset: `c.model.preset`.
    batch_size: the global training batch size.
    eval_batch_size: `c.data.eval_batch_size`.
    total_steps: `c.total_steps` (also the evaluation step).
    checkpoint_every: `c.checkpoint_every_steps`.

  Raises:
    KeyError: naming `size` when it is not a key of `RESTORATION_CPU_SIZES`.
  """
  if size not in RESTORATION_CPU_SIZES:
    raise KeyError(
        f"configs/_common.py restoration_cpu_size: unknown size {size!r}; sizes: "
        f"{', '.join(RESTORATION_CPU_SIZES)}."
    )
  shared = RESTORATION_CPU_SIZES[size]
  c.model.preset = preset
  c.data.update(
      patch_size=shared["patch_size"],
      eval_size=shared["eval_size"],
      eval_batch_size=eval_batch_size,
  )
  cadence(
      c,
      batch_size=batch_size,
      total_steps=total_steps,
      log_every=shared["log_every"],
      checkpoint_every=checkpoint_every,
      **shared["optimizer"],
  )
