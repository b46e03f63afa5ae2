"""Training on ArrayRecord shards written by `python -m jaxmilab.data.build_uir`.

config.data.path is a build folder (or a list of them, e.g. a synthetic build and a
`--paired_dir` build of real pairs); each must hold the `manifest.json` that build_uir
writes when it finishes. Records (format `uir-record-v1`, see build_uir) hold PNG lq/gt
pairs and their type; the label of a record is the index of its type in config.data.types
(default: the types of the manifests, in order, duplicates dropped).

Training: grain `ArrayRecordDataSource` over all shards, a global shuffle every epoch,
random `patch_size` crops (same window for lq and gt) and flips, and per-process slices of
one global example stream (`transforms.train_iterator`), so the iterator is checkpointable
and a run is the same for any number of processes. Eval: the central `eval_size` crop of
every record of config.data.eval_path (another build folder), or, without it, of the first
`eval_records` records of the training data, which training then skips (records are
stored image by image, so crops of one image may still sit on both sides of the cut:
prefer a separate eval build from held-out images).

config.data keys (defaults): path (required), types (from the manifests), patch_size (64),
eval_path, eval_records (0: 10% of the records, at most 256), eval_size (128),
eval_batch_size (the training batch size), worker_count (0), read_threads (4),
read_buffer (one per-process batch per read thread), vertical_flip (False).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import grain
import numpy as np

from jaxmilab.data import build_uir
from jaxmilab.data import images
from jaxmilab.data import transforms
from jaxmilab.data.base import DataError
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

# Every config.data key this dataset reads, with its default (jaxmilab.config_lib adds the
# missing ones to a config that selects this dataset, so each can be set from the command line).
CONFIG_DEFAULTS = dict(
    path="",                # a build_uir output folder (or, in a config file, a list of them)
    types=(),               # label order; () = the types of the manifests, in order
    patch_size=64, eval_path="",
    eval_records=0,         # 0 = 10% of the records, at most 256 (without eval_path)
    eval_size=128,
    eval_batch_size=0,      # 0 = the training batch size
    worker_count=0, read_threads=4, read_buffer=None, vertical_flip=False)


def read_manifest(folder: str, key: str = "config.data.path") -> dict[str, Any]:
  """The manifest of a finished build_uir folder; DataError naming the folder otherwise."""
  folder = os.path.abspath(os.path.expanduser(str(folder)))
  path = os.path.join(folder, "manifest.json")
  if not os.path.isfile(path):
    hint = ("the build is unfinished: re-run the same build_uir command to complete it"
            if os.path.isfile(os.path.join(folder, "build_args.json")) else
            "build it with python -m jaxmilab.data.build_uir --clean_dir=... --output=" + folder)
    raise DataError(f"{key}={folder!r} has no manifest.json: {hint}.")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  if manifest.get("format") != build_uir.FORMAT:
    raise DataError(f"{path} has format {manifest.get('format')!r}; this reader knows "
                    f"{build_uir.FORMAT!r}. Rebuild with this version of build_uir.")
  manifest["shard_paths"] = [os.path.join(folder, s["file"]) for s in manifest["shards"]]
  for shard in manifest["shard_paths"]:
    if not os.path.isfile(shard):
      raise DataError(f"{path} lists {shard}, which is missing. Re-run the build_uir command.")
  return manifest


class RecordSource:
  """Random access over records [start, stop) of the shards: key -> {"lq", "gt": uint8 [H, W, 3], "label"}."""

  def __init__(self, shard_paths: Sequence[str], types: Sequence[str], start: int = 0,
               stop: int | None = None):
    self.shard_paths = tuple(shard_paths)
    self.types = tuple(types)
    self.label_of = {t: i for i, t in enumerate(self.types)}
    self._source = None
    total = len(self._records())
    self.start, self.stop = int(start), total if stop is None else int(stop)
    if not 0 <= self.start <= self.stop <= total:
      raise ValueError(f"Record range [{start}, {stop}) is outside the {total} records.")

  def _records(self) -> grain.sources.ArrayRecordDataSource:
    if self._source is None:
      self._source = grain.sources.ArrayRecordDataSource(list(self.shard_paths))
    return self._source

  def __len__(self) -> int:
    return self.stop - self.start

  def record(self, key: int) -> dict[str, Any]:
    """The raw decoded record (type, level, source, PNG bytes) at `key`."""
    return build_uir.decode_record(self._records()[self.start + int(key)])

  def __getitem__(self, key: int) -> dict[str, Any]:
    rec = self.record(key)
    label = self.label_of.get(rec["type"])
    if label is None:
      raise DataError(f"Record {self.start + int(key)} ({rec['source']}) has type {rec['type']!r}, "
                      f"which is not in config.data.types {self.types}. Add it or rebuild.")
    lq, gt = build_uir.decode_png(rec["lq_png"]), build_uir.decode_png(rec["gt_png"])
    return {"lq": lq, "gt": gt, "label": np.int32(label)}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None  # reopened in the worker process
    return state

  def __repr__(self) -> str:
    # Stable across processes and restarts: grain checks it when restoring the iterator.
    return (f"RecordSource(shards={len(self.shard_paths)}, first={self.shard_paths[0]!r}, "
            f"range=[{self.start}, {self.stop}), types={len(self.types)})")


def _folders(value: Any, key: str) -> tuple[str, ...]:
  if not value:
    raise ValueError(f"{key} is not set: give a build_uir output folder (or a list of them).")
  return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _load(folders: Sequence[str], key: str) -> tuple[list[str], list[str], int]:
  """(shard paths, types in order, smallest crop size) over several build folders."""
  shards, types, sizes = [], [], []
  for folder in folders:
    manifest = read_manifest(folder, key)
    shards += manifest["shard_paths"]
    types += [t for t in manifest["types"] if t not in types]
    sizes.append(int(manifest.get("patch_size") or 0))
  return shards, types, min(sizes)


def create(config: Any, *, batch_size: int, seed: int, process_index: int,
           process_count: int) -> Datasets:
  """Train iterator and eval batches over build_uir ArrayRecord shards (see module doc)."""
  opts, layout = transforms.configure(
      config, CONFIG_DEFAULTS, "array_records", batch_size=batch_size, seed=seed,
      process_index=process_index, process_count=process_count)
  shards, found_types, stored = _load(_folders(opts.path, "config.data.path"),
                                      "config.data.path")
  types = opts.types
  types = tuple(found_types) if not types else ((types,) if isinstance(types, str) else tuple(types))
  missing = sorted(set(found_types) - set(types))
  if missing:
    raise ValueError(f"config.data.types={types} misses types {missing} that the shards hold. "
                     f"List every type of the build (label = index).")
  patch = int(opts.patch_size)
  eval_size = int(opts.eval_size)
  for what, size, k in (("patch", patch, "config.data.patch_size"),
                        ("eval", eval_size, "config.data.eval_size")):
    if stored and size > stored:
      raise DataError(f"{k}={size} is larger than the {stored}px crops stored in the build. Lower "
                      f"{k} or rebuild with build_uir --patch_size={size} or more.")
  source = RecordSource(shards, types)
  eval_path = opts.eval_path
  if eval_path:
    if opts.eval_records:
      raise ValueError("config.data.eval_records holds records out of config.data.path; it cannot "
                       "be combined with config.data.eval_path. Set one or the other.")
    eval_shards, eval_types, eval_stored = _load(_folders(eval_path, "config.data.eval_path"),
                                                 "config.data.eval_path")
    unknown = sorted(set(eval_types) - set(types))
    if unknown:
      raise ValueError(f"config.data.eval_path holds types {unknown} not in config.data.types {types}.")
    if eval_stored and eval_size > eval_stored:
      raise DataError(f"config.data.eval_size={eval_size} is larger than the {eval_stored}px "
                      f"crops of config.data.eval_path.")
    eval_source = RecordSource(eval_shards, types)
  else:
    n_eval = opts.eval_records
    n_eval = int(n_eval) if n_eval else min(256, max(1, len(source) // 10))
    if not 0 < n_eval < len(source):
      raise ValueError(f"config.data.eval_records={n_eval} must be in [1, {len(source) - 1}] "
                       f"(the build has {len(source)} records).")
    eval_source = RecordSource(shards, types, 0, n_eval)
    source = RecordSource(shards, types, n_eval)

  train = transforms.restoration_train_iterator(
      source, opts, patch=patch, batch_size=layout.batch_size, seed=seed,
      process_index=process_index, process_count=process_count)

  def make_example(i: int) -> dict[str, np.ndarray]:
    rec = eval_source[i]
    if min(rec["gt"].shape[:2]) < eval_size:
      raise DataError(f"Eval record {i} is {rec['gt'].shape[:2]}, smaller than "
                      f"config.data.eval_size={eval_size}. Lower it.")
    return {"lq": images.to_float(transforms.center_crop(rec["lq"], eval_size)),  # [e, e, 3]
            "gt": images.to_float(transforms.center_crop(rec["gt"], eval_size)),
            "label": rec["label"]}

  info = DataInfo(num_classes=len(types), class_names=types, image_channels=3,
                  extra={"patch_size": patch, "eval_size": eval_size, "num_eval": len(eval_source),
                         "num_train": len(source)})
  return Datasets(train=train, eval_batches=layout.eval(len(eval_source), make_example), info=info)
