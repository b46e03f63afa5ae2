"""Device prefetch of the train step's next inputs, with the data-iterator state they leave.

`DevicePrefetch(iterator, put, micro_batches, size)` reads the checkpointable per-process
iterator in a background thread: `micro_batches` batches per train step (stacked on a new
leading axis when > 1), handed to `put` (host -> device: global arrays from process-local
data), at most `size` steps ahead of the loop. Each item carries the iterator's state right after
its batches were read, so `consumed_state()` (what a checkpoint must store) is the state after
the last step the loop took, not after the prefetched ones: a resume reads the same batches.

`size=0` reads synchronously in the caller's thread (no look-ahead; `consumed_state()` is then
the iterator itself). Errors of the iterator (a bad record) are raised in the loop's thread.
"""

from __future__ import annotations

import copy
import json
import queue
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np


class _StateSnapshot:
  """What grain's CheckpointSave calls: `get_state()` -> bytes of the recorded state.

  grain's handler (grain/_src/python/checkpoint/handler.py `save`) writes
  `json.dumps(get_state(), indent=4)` for a `DatasetIterator` and `get_state().decode()` for
  any other iterator; this object is the latter and returns the same text.
  """

  def __init__(self, state: Any):
    self._state = state

  def get_state(self) -> bytes:
    if isinstance(self._state, (bytes, bytearray)):
      return bytes(self._state)
    return json.dumps(self._state, indent=4).encode()


def _stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}


class DevicePrefetch:
  """Iterator of device batches for the train step (module docstring)."""

  def __init__(
      self,
      iterator: Iterator[dict[str, np.ndarray]],
      put: Callable[[Any], Any],
      *,
      micro_batches: int = 1,
      size: int = 2,
  ):
    self._iterator = iterator
    self._put = put
    self._k = int(micro_batches)
    self._size = int(size)
    self._consumed = None
    self.wait_seconds = 0.0  # time the caller blocked in `next`
    self._stop = threading.Event()
    self._thread = None
    if self._size > 0:
      self._queue: queue.Queue = queue.Queue(maxsize=self._size)
      self._thread = threading.Thread(target=self._produce, name="DevicePrefetch", daemon=True)
      self._thread.start()

  def _read(self) -> tuple[Any, Any]:
    batches = [next(self._iterator) for _ in range(self._k)]
    host = batches[0] if self._k == 1 else _stack(batches)
    return self._put(host), copy.deepcopy(self._iterator.get_state())

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        item = self._read()
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # pylint: disable=broad-except  # handed to the loop's thread
      self._offer(e)
      return

  def _offer(self, item) -> None:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return
      except queue.Full:
        continue

  def __iter__(self):
    return self

  def __next__(self):
    t0 = time.perf_counter()
    if self._thread is None:
      batches = [next(self._iterator) for _ in range(self._k)]
      out = self._put(batches[0] if self._k == 1 else _stack(batches))
    else:
      item = self._queue.get()
      if isinstance(item, BaseException):
        self.close()
        raise item
      out, self._consumed = item
    self.wait_seconds += time.perf_counter() - t0
    return out

  def consumed_state(self) -> Any:
    """For `checkpoint.save`: the iterator state after the batches the loop has taken."""
    if self._thread is None:
      return self._iterator
    if self._consumed is None:
      raise RuntimeError("DevicePrefetch.consumed_state: no batch has been taken yet.")
    return _StateSnapshot(self._consumed)

  def close(self) -> None:
    """Stops the thread (prefetched batches are dropped; the iterator is left where it is)."""
    self._stop.set()
    if self._thread is not None:
      while True:
        try:
          self._queue.get_nowait()
        except queue.Empty:
          break
      self._thread.join(timeout=60)
