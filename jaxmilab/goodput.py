"""Goodput: how much of a run's wall time went into training steps, and where the rest went.

The trainer writes one row of split "goodput" to `DIR/metrics.jsonl` at every log step,
cumulative over every start of the run in that workdir (restarts included):

  total_seconds        wall time of all starts, each from its process start (Linux /proc; else
                       from the trainer's construction) to the row
  step_seconds         productive time: the train loop minus the time below; steps redone after
                       a restart are moved to lost_seconds
  startup_seconds      process start -> first step, without compile and restore (imports, device
                       and distributed init, data set-up, parameter init)
  compile_seconds      compiling the train step (near 0 with a warm compilation cache)
  restore_seconds      reading the checkpoint at a resume
  data_wait_seconds    the loop blocked waiting for the next input batch
  checkpoint_seconds   blocking part of the saves (orbax writes the arrays asynchronously)
  eval_seconds         evaluation
  lost_seconds         step time of the steps between a start's last checkpoint and its last row,
                       which the next start computes again (MaxText's "wasted progress from
                       disruption"; the time after a killed start's last row is not seen)
  restarts             starts that resumed from a checkpoint
  goodput              step_seconds / total_seconds

The categories follow MaxText's goodput report (ml-goodput-measurement: productive step time
against TPU init, training preparation, program startup, data loading, checkpoint save /
restore and wasted progress), measured here on the host clock of the lead process. Step time
is host wall time between dispatches; the loop syncs with the devices at log steps, so over an
interval it equals device step time whenever the host keeps ahead.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

SPLIT = "goodput"
# The cumulative seconds of a row, in report order (`total_seconds` and `goodput` come after).
CATEGORIES = (
    "step_seconds",
    "startup_seconds",
    "compile_seconds",
    "restore_seconds",
    "data_wait_seconds",
    "checkpoint_seconds",
    "eval_seconds",
    "lost_seconds",
)
KEYS = ("total_seconds",) + CATEGORIES + ("restarts", "goodput")


def process_start_time() -> float:
  """time.time() at which this process started (Linux /proc), else now."""
  try:
    with open("/proc/self/stat", encoding="ascii") as f:
      # Field 22 (starttime, in clock ticks after boot) follows the ")" of the command name.
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat", encoding="ascii") as f:
      boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    start = boot + start_ticks / os.sysconf("SC_CLK_TCK")
    return start if start <= time.time() else time.time()
  except (OSError, ValueError, IndexError, StopIteration):
    return time.time()


def _interpolate(rows: Sequence[Mapping[str, Any]], step: int, key: str) -> float:
  """`key` of the rows (ordered by step) at `step`, linear between the rows around it."""
  before = [r for r in rows if r["step"] <= step]
  after = [r for r in rows if r["step"] > step]
  if not before:
    return 0.0
  a = before[-1]
  if not after or a["step"] == step:
    return float(a[key])
  b = after[0]
  frac = (step - a["step"]) / (b["step"] - a["step"])
  return float(a[key]) + frac * (float(b[key]) - float(a[key]))


class Goodput:
  """Cumulative goodput counters of one start; `row()` gives the metrics.jsonl row."""

  def __init__(self, start_time: float | None = None):
    self.start = process_start_time() if start_time is None else float(start_time)
    self.carried = {k: 0.0 for k in CATEGORIES}  # from earlier starts of the same workdir
    self.carried_total = 0.0
    self.restarts = 0
    self.now = {k: 0.0 for k in CATEGORIES}  # this start
    self._loop_start: float | None = None

  def resume_from(self, rows: Sequence[Mapping[str, Any]], checkpoint_step: int) -> None:
    """Carries the counters of earlier starts (their "goodput" rows, before the file is truncated
    to `checkpoint_step`): one restart more, and the step time past the checkpoint is lost."""
    rows = sorted((r for r in rows if r.get("split") == SPLIT), key=lambda r: r["step"])
    self.restarts = 1
    if not rows:
      return
    last = rows[-1]
    self.carried = {k: float(last.get(k, 0.0)) for k in CATEGORIES}
    self.carried_total = float(last.get("total_seconds", 0.0))
    self.restarts = int(last.get("restarts", 0)) + 1
    kept = _interpolate(rows, checkpoint_step, "step_seconds")
    lost = max(0.0, self.carried["step_seconds"] - kept)
    self.carried["step_seconds"] -= lost
    self.carried["lost_seconds"] += lost

  def add(self, category: str, seconds: float) -> None:
    self.now[category] += float(seconds)

  def loop_started(self) -> None:
    """The first step is about to run: the time since the process start not yet accounted for
    (by compile and restore) is startup."""
    t = time.time()
    self._loop_start = t
    accounted = self.now["compile_seconds"] + self.now["restore_seconds"]
    self.now["startup_seconds"] = max(0.0, t - self.start - accounted)

  def row(self) -> dict[str, float]:
    t = time.time()
    if self._loop_start is not None:
      # Everything in the loop that is not waiting for data, checkpointing or evaluating.
      self.now["step_seconds"] = max(
          0.0,
          t
          - self._loop_start
          - self.now["data_wait_seconds"]
          - self.now["checkpoint_seconds"]
          - self.now["eval_seconds"],
      )
    total = self.carried_total + (t - self.start)
    values = {k: self.carried[k] + self.now[k] for k in CATEGORIES}
    out = {"total_seconds": total, **values, "restarts": float(self.restarts)}
    out["goodput"] = values["step_seconds"] / total if total > 0 else 0.0
    return out
