"""grain transforms and pipeline pieces shared by the restoration datasets.

Training: a random-access source yields {"gt" (, "lq"): uint8 [H, W, 3], "label"}; then
`RandomCropFlip` (same crop and flip for every image key), `ToFloat`, optionally
`SynthesizeDegradation`, and a batch (`train_iterator`). The per-example rng is keyed by
(seed, global example index), so the global stream depends only on the seed, not on the
number of processes or workers, and the iterator is checkpointable (get_state/set_state).
Eval: deterministic, finite, padded per-process batches (`eval_batches`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import grain
import numpy as np

from jaxmilab import config_options
from jaxmilab.data import degradations
from jaxmilab.data.base import Batch

IMAGE_KEYS = ("lq", "gt")


class RandomCropFlip(grain.transforms.RandomMap):
  """Random `size` x `size` crop and horizontal flip (p = 0.5), identical for all image keys."""

  def __init__(self, size: int, vertical_flip: bool = False):
    self.size = int(size)
    self.vertical_flip = bool(vertical_flip)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    keys = [k for k in IMAGE_KEYS if k in element]
    height, width = element[keys[0]].shape[:2]
    top = int(rng.integers(0, height - self.size + 1))
    left = int(rng.integers(0, width - self.size + 1))
    flip_w = bool(rng.random() < 0.5)
    flip_h = bool(rng.random() < 0.5) if self.vertical_flip else False
    out = dict(element)
    for k in keys:
      patch = element[k][top : top + self.size, left : left + self.size]  # [p, p, C]
      if flip_w:
        patch = patch[:, ::-1]
      if flip_h:
        patch = patch[::-1]
      out[k] = np.ascontiguousarray(patch)
    return out


class ToFloat(grain.transforms.Map):
  """uint8 image keys -> float32 in [0, 1]; label -> int32."""

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    out = dict(element)
    for k in IMAGE_KEYS:
      if k in out and out[k].dtype == np.uint8:
        out[k] = out[k].astype(np.float32) / np.float32(255.0)
    out["label"] = np.int32(out["label"])
    return out


class SynthesizeDegradation(grain.transforms.RandomMap):
  """lq = degradations[names[label]](gt, rng): the label picks the degradation type."""

  def __init__(self, names: Sequence[str], levels: Sequence[Any] | None = None):
    self.names = tuple(names)  # Names, not functions: cheap and stable to pickle into workers.
    # One fixed level per type (None = drawn at random per example), e.g. sigma 25 for noise.
    self.levels = tuple(levels) if levels else (None,) * len(self.names)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    label = int(element["label"])
    lq = degradations.apply(self.names[label], element["gt"], rng, self.levels[label])
    return {"lq": lq, "gt": element["gt"], "label": np.int32(label)}


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central `size` x `size` window of [H, W, C] (top-left biased when odd)."""
  height, width = image.shape[:2]
  top, left = (height - size) // 2, (width - size) // 2
  return image[top : top + size, left : left + size]


# ----------------------------------------------------------------------- config helpers


def per_process(global_size: int, process_count: int, key: str) -> int:
  """global batch size -> per-process size; ValueError if not divisible."""
  global_size = int(global_size)
  if global_size <= 0 or global_size % process_count:
    raise ValueError(
        f"{key}={global_size} must be a positive multiple of the process count "
        f"({process_count})."
    )
  return global_size // process_count


def check_layout(seed: int, process_index: int, process_count: int) -> None:
  if not 0 <= int(seed) < 2**32:
    raise ValueError(f"config.seed={seed}: grain needs a seed in [0, 2**32).")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count}).")


@dataclasses.dataclass(frozen=True)
class Layout:
  """This process's share of a dataset: `create`'s seed and process arguments, checked, and the
  per-process training and eval batch sizes; builds the two pipelines from them."""

  seed: int
  process_index: int
  process_count: int
  batch_size: int  # per process
  eval_batch_size: int  # per process

  @classmethod
  def of(
      cls,
      *,
      batch_size: int,
      eval_batch_size: int,
      seed: int,
      process_index: int,
      process_count: int,
  ) -> "Layout":
    """Checks `create`'s arguments; `batch_size` and `eval_batch_size` (config.data's; 0 = the
    batch size) are global sizes, split over the processes."""
    check_layout(seed, process_index, process_count)
    return cls(
        seed,
        process_index,
        process_count,
        per_process(batch_size, process_count, "config.batch_size"),
        per_process(eval_batch_size or batch_size, process_count, "config.data.eval_batch_size"),
    )

  def train(
      self,
      source: Any,
      operations: Sequence[Any],
      *,
      worker_count: int = 0,
      read_threads: int = 4,
      read_buffer: int | None = None,
  ):
    """`train_iterator` over `source` for this process (see there)."""
    return train_iterator(
        source,
        operations,
        batch_size=self.batch_size,
        seed=self.seed,
        process_index=self.process_index,
        process_count=self.process_count,
        worker_count=worker_count,
        read_threads=read_threads,
        read_buffer=read_buffer,
    )

  def eval(
      self, num_examples: int, make_example: Callable[[int], dict[str, np.ndarray]]
  ) -> Callable[[], Iterator[Batch]]:
    """`Datasets.eval_batches`: each call starts a fresh pass of `eval_batches` (see there)."""
    return functools.partial(
        eval_batches,
        num_examples,
        make_example,
        batch_size=self.eval_batch_size,
        process_index=self.process_index,
        process_count=self.process_count,
    )


def configure(
    config: Any,
    defaults: Mapping[str, Any],
    dataset: str,
    *,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    required: Sequence[str] = (),
) -> tuple[config_options.Options, Layout]:
  """The start of a dataset's `create`: (its options view of config.data, its Layout).

  Args:
    config: config.data as `create` receives it.
    defaults: the dataset's CONFIG_DEFAULTS (they declare `eval_batch_size`).
    dataset: its registry name, for messages.
    batch_size, seed, process_index, process_count: `create`'s arguments.
    required: keys without a default that the config must set.

  Raises:
    ConfigError: naming a key of `config` the dataset does not declare, or a missing required
      key (config_options.options); ValueError for a bad process layout or batch size.
  """
  opts = config_options.options(config, defaults, part="data", component=dataset, required=required)
  layout = Layout.of(
      batch_size=batch_size,
      eval_batch_size=opts.eval_batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  return opts, layout


# ---------------------------------------------------------------------------- pipelines


def train_iterator(
    source: Any,
    operations: Sequence[Any],
    *,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    worker_count: int = 0,
    read_threads: int = 4,
    read_buffer: int | None = None,
):
  """An endless, shuffled, checkpointable grain iterator of this process's batch slices.

  One global example stream: the records reshuffled every epoch (seed), each example's
  random ops drawn from an rng keyed by (seed, global example index). Global step s uses
  examples [s B, (s + 1) B) with B = batch_size * process_count, and process p takes rows
  [p b, (p + 1) b) of it. So the global batch of every step is the same whatever the number
  of processes (a 2-process run trains on exactly the data of a 1-process run), and the
  processes' slices are disjoint. `worker_count` > 0 adds grain worker processes
  (mp_prefetch), which changes nothing in the stream. `read_threads` threads decode records
  ahead, at most `read_buffer` per-process batches (default: one per thread).
  """
  if len(source) < 1:
    raise ValueError(f"{source!r} has no records. Add data.")
  ds = grain.MapDataset.source(source).shuffle(seed=int(seed)).repeat()
  for op in operations:
    if isinstance(op, grain.transforms.RandomMap):
      ds = ds.random_map(op, seed=int(seed))
    else:
      ds = ds.map(op)
  ds = ds.batch(batch_size, drop_remainder=True)[process_index::process_count]
  read_options = grain.ReadOptions(
      num_threads=int(read_threads), prefetch_buffer_size=int(read_buffer or read_threads)
  )
  it_ds = ds.to_iter_dataset(read_options)
  if int(worker_count) > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count)))
  return iter(it_ds)


def restoration_train_iterator(
    source: Any,
    opts: Any,
    *,
    patch: int,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    extra: Sequence[Any] = (),
):
  """The restoration datasets' training stream: random crop + flip, to float, `extra` ops.

  Reading options come from `opts`, the dataset's `config_options.options` view of config.data,
  which declares vertical_flip, worker_count, read_threads and read_buffer; see
  `train_iterator` for the stream itself.
  """
  operations = [RandomCropFlip(patch, bool(opts.vertical_flip)), ToFloat(), *extra]
  return train_iterator(
      source,
      operations,
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      worker_count=int(opts.worker_count),
      read_threads=int(opts.read_threads),
      read_buffer=opts.read_buffer,
  )


def eval_batches(
    num_examples: int,
    make_example: Callable[[int], dict[str, np.ndarray]],
    *,
    batch_size: int,
    process_index: int,
    process_count: int,
) -> Iterator[Batch]:
  """Deterministic per-process eval batches over examples 0..num_examples-1.

  Global eval batch k holds examples [k B, (k+1) B) with B = batch_size * process_count;
  process p takes rows [p b, (p+1) b). Every process yields the same number of batches
  (needed by the collective eval step); rows past the end are zeros with valid=False.
  """
  global_batch = batch_size * process_count
  num_batches = -(-num_examples // global_batch)
  padding = None  # zeros shaped like an example, built once when first needed
  for k in range(num_batches):
    start = k * global_batch + process_index * batch_size
    indices = range(start, start + batch_size)
    rows = []
    for i in indices:
      if i < num_examples:
        rows.append(make_example(i))
      else:
        if padding is None:
          padding = {key: np.zeros_like(v) for key, v in make_example(0).items()}
        rows.append(padding)
    batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    batch["valid"] = np.array([i < num_examples for i in indices], dtype=bool)
    yield batch
