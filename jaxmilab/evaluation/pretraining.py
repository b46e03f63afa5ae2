"""Monitors of self-supervised pre-training, streamed over the eval set.

* `MACLEvaluator` — MACL's (jaxmilab/methods/macl.py): means over the valid eval examples of
  the named per-example outputs (the batch losses, which every example of a batch carries, so
  batches weigh by their valid size) and of "retrieval_accuracy".
"""

from __future__ import annotations

import numpy as np

from jaxmilab.evaluation.base import Evaluator, ratio


class MACLEvaluator(Evaluator):
  """Means over valid eval examples of the batch losses (every example of a batch carries its
  batch's value, so batches weigh by their valid size) and of the retrieval accuracy."""

  def __init__(self, names):
    super().__init__()
    self.names = tuple(names) + ("retrieval_accuracy",)
    for name in self.names:
      self.add(name, 0.0)
    self.add("count", 0.0)

  def update(self, batch, outputs):
    valid = np.asarray(batch["valid"], bool)
    for name in self.names:
      self.add(name, np.asarray(outputs[name], np.float64)[valid].sum())
    self.add("count", valid.sum())

  def compute(self):
    count = self.sums["count"]
    return {name: float(ratio(self.sums[name], count)) for name in self.names}
