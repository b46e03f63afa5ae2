"""The contract between datasets and the trainer.

`jaxmilab/data/<name>.py` exposes

  create(config, *, batch_size, seed, process_index, process_count) -> Datasets

where `config` is the experiment's `config.data` and `batch_size` is the *global*
batch size; each process gets `batch_size // process_count` examples per step.

* `train` is a checkpointable grain iterator (`get_state()` / `set_state()`,
  saved with the train state by the trainer) that yields dicts of numpy arrays
  with a leading per-process batch axis; it is deterministic given `seed` and the
  process index, and runs forever (epochs are repeated with new shuffles).
* `eval_batches()` returns a fresh, finite, deterministic iterable of per-process
  batches of the same kind; every batch has a bool "valid" array (False marks
  padding added to complete the last batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

Batch = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """Static facts methods need (e.g. the classifier's number of classes)."""

  num_classes: int = 0
  class_names: tuple[str, ...] = ()
  image_channels: int = 3
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Datasets:
  train: Iterator[Batch]  # grain DatasetIterator / DataLoader iterator (checkpointable)
  eval_batches: Callable[[], Iterable[Batch]]
  info: DataInfo


class DataError(ValueError):
  """Bad input data: the message names the file or folder and what to do."""
