"""Streaming evaluation by sufficient statistics.

An evaluator never keeps the eval set: each batch adds to fixed-size sums (counts,
confusion matrices, histograms, per-type PSNR sums), sums from several batches or
hosts are merged by addition, and `compute()` turns the final sums into scalars.
Host memory is therefore independent of the eval-set size, and N hosts that each
see a slice of the set produce exactly the numbers one host would.

Two abstract classes:

* `Metric`: the sums (`add`, `merge`, `merge_across_processes`) and `compute()`. Metric
  evaluators (`SegmentationEvaluator`, `DiceEvaluator`, `BoxEvaluator`, `MaskEvaluator`) are
  Metrics that take arrays with their own `accumulate(...)`.
* `Evaluator(Metric)`: what every `Method.evaluator()` returns; its `update(batch, outputs)`
  receives the process-local numpy batch (with its bool "valid" mask) and the method's eval
  outputs, and `images()` gives an optional picture made from a few kept examples
  (`RestorationEvaluator`, `WSOLEvaluator`, `DenoisingEvaluator`, `CDSPEvaluator`,
  `MACLEvaluator`, `MACLFinetuneEvaluator`: every method's evaluator lives in this package).

The trainer calls `update` per batch, `merge_across_processes()` once, then `compute()`.
"""

from __future__ import annotations

import abc
from typing import Mapping

import numpy as np


class Metric(abc.ABC):
  """Sums of numpy arrays keyed by name; addition is the only way statistics combine.

  Subclasses create their statistics up front with `add` and implement `compute`.
  """

  def __init__(self):
    self.sums: dict[str, np.ndarray] = {}

  # -- statistics ---------------------------------------------------------------------------
  def add(self, name: str, value) -> None:
    """Adds `value` (a scalar or a fixed-shape array) to the running sum `name`."""
    value = np.asarray(value, dtype=np.float64)
    if name in self.sums:
      if self.sums[name].shape != value.shape:
        raise ValueError(
            f"{type(self).__name__} statistic {name!r} changed shape from "
            f"{self.sums[name].shape} to {value.shape}; statistics must be fixed-size."
        )
      self.sums[name] = self.sums[name] + value
    else:
      self.sums[name] = value.copy()

  def merge(self, other: "Metric") -> "Metric":
    """Adds `other`'s statistics into this one (same kind of evaluator); returns self."""
    for name, value in other.sums.items():
      self.add(name, value)
    return self

  def merge_across_processes(self) -> "Metric":
    """Sums the statistics over all JAX processes (a no-op on one process); returns self.

    Every process must hold the same statistic names; evaluators create all of their
    statistics up front (e.g. zeros per class) so that a host that saw no example of a
    class still contributes a zero.
    """
    import jax  # pylint: disable=g-import-not-at-top

    if jax.process_count() == 1:
      return self
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    import zlib  # pylint: disable=g-import-not-at-top

    names = sorted(self.sums)
    # A digest that is the same in every process (Python's str hash is salted per process).
    digest = zlib.crc32("\n".join(f"{n}:{self.sums[n].shape}" for n in names).encode()) % (2**31)
    gathered_names = multihost_utils.process_allgather(np.array([digest], np.int32))
    if len(set(np.asarray(gathered_names).ravel().tolist())) != 1:
      raise ValueError(
          f"Processes hold different evaluator statistics ({names} here); create "
          f"every statistic before the first batch."
      )
    # float64 is unavailable on device with x64 off: the float64 sums travel as their bits
    # (uint32 pairs) and are added on the host, exactly.
    for name in names:
      bits = np.ascontiguousarray(self.sums[name]).view(np.uint32)
      stacked = np.asarray(multihost_utils.process_allgather(bits))
      per_host = stacked.reshape((-1,) + bits.shape).view(np.float64)
      self.sums[name] = per_host.reshape((-1,) + self.sums[name].shape).sum(axis=0)
    return self

  @abc.abstractmethod
  def compute(self) -> dict[str, float]:
    """The results (name -> float) of the statistics summed so far."""


class Evaluator(Metric):
  """A method's streaming evaluator (`Method.evaluator()`), fed batch by batch by the trainer."""

  @abc.abstractmethod
  def update(self, batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """Adds one process-local batch; `batch["valid"]` is False on padding examples."""

  def images(self) -> np.ndarray | None:
    """An optional [H, W, 3] float image in [0, 1] from a few kept examples (None: no picture)."""
    return None


def ratio(numerator, denominator, scale: float = 1.0) -> np.ndarray:
  """numerator / denominator * scale, NaN where the denominator is 0."""
  numerator = np.asarray(numerator, np.float64)
  denominator = np.asarray(denominator, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (
        np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)
        * scale
    )
