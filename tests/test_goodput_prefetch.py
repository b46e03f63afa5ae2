"""jaxmilab.goodput (counters across restarts) and jaxmilab.prefetch (device prefetch with the
iterator state of the consumed batches), against hand-made cases."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from jaxmilab import goodput
from jaxmilab import prefetch


class _Counter:
  """A checkpointable iterator: batch i = {"x": [i]}; state = next index."""

  def __init__(self, fail_at: int | None = None):
    self.i = 0
    self.fail_at = fail_at

  def __next__(self):
    if self.i == self.fail_at:
      raise ValueError(f"bad record {self.i}")
    self.i += 1
    return {"x": np.array([self.i - 1])}

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = state["i"]


@pytest.mark.parametrize("size", [0, 1, 3])
def test_prefetch_yields_the_stream_and_the_consumed_state(size):
  it = _Counter()
  pre = prefetch.DevicePrefetch(it, lambda b: {k: v * 10 for k, v in b.items()}, size=size)
  try:
    got = [int(next(pre)["x"][0]) for _ in range(5)]
    assert got == [0, 10, 20, 30, 40]
    state = pre.consumed_state().get_state()
    if size:
      time.sleep(0.2)  # the thread has read ahead by now ...
      assert it.i > 5
      assert json.loads(state) == {"i": 5}  # ... but the checkpoint gets the consumed position
    else:
      assert state == {"i": 5}
  finally:
    pre.close()
  if size:  # grain's handler writes get_state().decode() for a non-DatasetIterator: same JSON
    resumed = _Counter()
    resumed.set_state(json.loads(pre.consumed_state().get_state().decode()))
    assert int(next(resumed)["x"][0]) == 5


def test_prefetch_stacks_micro_batches_and_raises_iterator_errors():
  pre = prefetch.DevicePrefetch(_Counter(fail_at=7), lambda b: b, micro_batches=3, size=2)
  try:
    first = next(pre)
    assert first["x"].shape == (3, 1) and first["x"][:, 0].tolist() == [0, 1, 2]
    assert next(pre)["x"][:, 0].tolist() == [3, 4, 5]
    assert json.loads(pre.consumed_state().get_state()) == {"i": 6}
    with pytest.raises(ValueError, match="bad record 7"):
      next(pre)
  finally:
    pre.close()


def test_goodput_row_and_resume_carry_counters_and_lost_steps():
  g = goodput.Goodput(start_time=time.time() - 10.0)
  g.add("compile_seconds", 3.0)
  g.add("restore_seconds", 1.0)
  g.loop_started()
  g.add("data_wait_seconds", 0.0)
  row = g.row()
  assert set(row) == set(goodput.KEYS)
  assert row["startup_seconds"] == pytest.approx(6.0, abs=0.5)
  assert row["total_seconds"] == pytest.approx(10.0, abs=0.5)
  assert 0 <= row["goodput"] < 0.1

  # An earlier start logged rows at steps 100, 200, 300 and checkpointed at 250: the step time
  # between 250 and 300 (interpolated: 5 s of 10) is lost and the counters carry on.
  rows = [
      {
          "step": s,
          "split": "goodput",
          "total_seconds": 20.0 * k,
          "step_seconds": 10.0 * k,
          "startup_seconds": 5.0,
          "compile_seconds": 2.0,
          "restore_seconds": 0.0,
          "data_wait_seconds": 1.0 * k,
          "checkpoint_seconds": 0.5,
          "eval_seconds": 0.0,
          "lost_seconds": 0.0,
          "restarts": 0.0,
          "goodput": 0.5,
      }
      for k, s in ((1, 100), (2, 200), (3, 300))
  ]
  rows.append({"step": 300, "split": "train", "loss": 1.0})
  r = goodput.Goodput(start_time=time.time())
  r.resume_from(rows, checkpoint_step=250)
  out = r.row()
  assert out["restarts"] == 1
  assert out["lost_seconds"] == pytest.approx(5.0)
  assert out["step_seconds"] == pytest.approx(25.0, abs=0.01)  # 30 - 5 lost
  assert out["total_seconds"] == pytest.approx(60.0, abs=0.5)
  assert out["compile_seconds"] == pytest.approx(2.0)
  assert out["goodput"] == pytest.approx(25.0 / out["total_seconds"], rel=1e-6)
  # A resume with no goodput rows (a run from before them) still counts the restart.
  fresh = goodput.Goodput()
  fresh.resume_from([{"step": 5, "split": "train"}], 5)
  assert fresh.row()["restarts"] == 1 and fresh.row()["lost_seconds"] == 0


def test_process_start_time_is_in_the_past():
  start = goodput.process_start_time()
  assert start <= time.time() and time.time() - start < 24 * 3600
