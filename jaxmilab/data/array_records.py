"""Training on ArrayRecord shards written by `python -m jaxmilab.data.build_uir`.

config.data.path is a build folder (or a list of them, e.g. a synthetic build and a
`--paired_dir` build of real pairs); each must hold the `manifest.json` that build_uir
writes when it finishes. Records (format `uir-record-v1`, see build_uir) hold PNG lq/gt
pairs and their type; the label of a record is the index of its type in config.data.types
(default: the types of the manifests, in order, duplicates dropped).

Training: random access over all shards (`ShardReaders`, at most `max_open_shards` open per
reading process), a global shuffle every epoch,
random `patch_size` crops (same window for lq and gt) and flips, and per-process slices of
one global example stream (`transforms.train_iterator`), so the iterator is checkpointable
and a run is the same for any number of processes. Eval: the central `eval_size` crop of
every record of config.data.eval_path (another build folder), or, without it, of
`eval_records` records held out of the training data (training skips them).

The held-out selection without eval_path (`eval_selection`, `holdout_indices`) is fixed: no
random draw, the same for every process, run and number of hosts. "stratified" (default): the
records are split into strata, each stratum gets an equal share of `eval_records` (the first
strata in manifest order one more while a remainder is left; at most half of a stratum, so a
stratum with one record is not held out) and the picks are spread evenly over the stratum
(positions floor((j + 1/2) * size / share)). Strata per build folder, from its manifest:
packed pairs (`--released_dir`, `--paired_dir`): one stratum per (type, level), i.e. per
degradation type and source dataset of the released layout, single records; synthesized
builds: whole clean images (their `records_per_image` consecutive records: every type and
crop of the image) spread evenly over the images, so no crop of a held-out image is trained
on; builds from before this field: single records spread evenly over the build. "first":
the first `eval_records` records (the released packing is sorted by type folder, so this sees
one type of one source; kept for old runs). Evaluation reports per-type metrics
(`psnr/<type>`, ...) over the held-out set.

config.data keys (defaults): path (required), types (from the manifests), patch_size (64),
eval_path, eval_records (0: 10% of the records, at most 256, at least one per stratum),
eval_selection ("stratified" | "first"), eval_size (128),
eval_batch_size (the training batch size), worker_count (0), read_threads (4),
read_buffer (one per-process batch per read thread), max_open_shards (4096), vertical_flip
(False), type_weights ("records").

Weighted type mix (type_weights other than "records", `WeightedSource`): each type t gets a
share p_t of the training stream. An epoch is then L = ceil(max_t n_t / p_t) keys over the
n_t training records of each type, p_t L of them of type t, spread evenly over its records
(each is read floor or ceil of p_t L / n_t times per epoch, so none is left out); the global
shuffle is the same as without weights. Every record's type is read from the manifests
(packed pairs: "strata"; synthesized builds: "records_per_crop", written since this option
exists; an older synthesized build must be rebuilt or trained with "records").
"""

from __future__ import annotations

import collections
from concurrent import futures
import hashlib
import json
import os
import threading
from typing import Any, Sequence

import numpy as np

from jaxmilab.data import build_uir
from jaxmilab.data import images
from jaxmilab.data import transforms
from jaxmilab.data import uir_degradations
from jaxmilab.data.base import DataError
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

# Every config.data key this dataset reads, with its default (jaxmilab.config_lib adds the
# missing ones to a config that selects this dataset, so each can be set from the command line).
CONFIG_DEFAULTS = dict(
    path="",  # a build_uir output folder (or, in a config file, a list of them)
    types=(),  # label order; () = the types of the manifests, in order
    patch_size=64,
    eval_path="",
    eval_records=0,  # 0 = 10% of the records, at most 256 (without eval_path)
    eval_selection="stratified",  # held-out records without eval_path: stratified | first
    eval_size=128,
    eval_batch_size=0,  # 0 = the training batch size
    worker_count=0,
    read_threads=4,
    read_buffer=None,
    # Open shard readers per reading process (least recently used closed first; 0 = no bound):
    # a global shuffle over a large build touches every shard, and each open reader holds a file.
    # 4096 keeps a whole UIR-2.5M build at build_uir's 1,024 records per shard (~2,400 shards)
    # open; sub-image builds have many more shards.
    max_open_shards=4096,
    vertical_flip=False,
    # Training mix of types: "records" (every training record once per epoch: the build's own
    # mix, which for the released UIR-2.5M packing is its table's), "uniform", "uir_counts" (the
    # UIR-2.5M table's pairs per type, e.g. for a synthetic rebuild that holds every type
    # equally often) or one weight per type of config.data.types.
    type_weights="records",
)


def read_manifest(folder: str, key: str = "config.data.path") -> dict[str, Any]:
  """The manifest of a finished build_uir folder; DataError naming the folder otherwise."""
  folder = os.path.abspath(os.path.expanduser(str(folder)))
  path = os.path.join(folder, "manifest.json")
  if not os.path.isfile(path):
    hint = (
        "the build is unfinished: re-run the same build_uir command to complete it"
        if os.path.isfile(os.path.join(folder, "build_args.json"))
        else "build it with python -m jaxmilab.data.build_uir --clean_dir=... --output=" + folder
    )
    raise DataError(f"{key}={folder!r} has no manifest.json: {hint}.")
  with open(path, encoding="utf-8") as f:
    manifest = json.load(f)
  if manifest.get("format") != build_uir.FORMAT:
    raise DataError(
        f"{path} has format {manifest.get('format')!r}; this reader knows "
        f"{build_uir.FORMAT!r}. Rebuild with this version of build_uir."
    )
  manifest["shard_paths"] = [os.path.join(folder, s["file"]) for s in manifest["shards"]]
  for shard in manifest["shard_paths"]:
    if not os.path.isfile(shard):
      raise DataError(f"{path} lists {shard}, which is missing. Re-run the build_uir command.")
  return manifest


def _open_reader(path: str):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  # As grain's ArrayRecordDataSource opens shards for random access: no read-ahead.
  return array_record_module.ArrayRecordReader(
      path, options="readahead_buffer_size:0", file_reader_buffer_size=32768
  )


class ShardReaders:
  """Random access over the records of ArrayRecord shards, in order, with at most `max_open`
  shard readers open at a time (least recently used dropped first; 0 = no bound).

  A dropped reader closes once no thread still reads from it (the last reference goes), so
  reads need no lock. Records are counted at construction, each shard opened once, in threads.
  """

  def __init__(self, paths: Sequence[str], max_open: int = 0, threads: int = 16):
    self.paths = tuple(paths)
    self.max_open = int(max_open)
    if self.max_open < 0:
      raise ValueError(f"config.data.max_open_shards={max_open} must be >= 0 (0 = no bound).")

    def count(path):
      reader = _open_reader(path)
      n = reader.num_records()
      reader.close()
      return n

    with futures.ThreadPoolExecutor(max(1, min(threads, len(self.paths)))) as pool:
      counts = list(pool.map(count, self.paths))
    self._ends = np.cumsum(np.asarray(counts, np.int64))
    self._open: collections.OrderedDict[int, Any] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.opened = 0  # readers opened so far (re-opens included)

  def __len__(self) -> int:
    return int(self._ends[-1]) if self._ends.size else 0

  def num_open(self) -> int:
    return len(self._open)

  def _reader(self, shard: int):
    with self._lock:
      reader = self._open.get(shard)
      if reader is not None:
        self._open.move_to_end(shard)
        return reader
      reader = _open_reader(self.paths[shard])
      self.opened += 1
      self._open[shard] = reader
      if self.max_open and len(self._open) > self.max_open:
        self._open.popitem(last=False)
      return reader

  def __getitem__(self, key: int) -> bytes:
    key = int(key)
    if not 0 <= key < len(self):
      raise IndexError(f"record {key} is outside the {len(self)} records of the shards.")
    shard = int(np.searchsorted(self._ends, key, side="right"))
    position = key - (int(self._ends[shard - 1]) if shard else 0)
    return self._reader(shard).read([position])[0]


class RecordSource:
  """Random access over records [start, stop) of the shards: key -> {"lq", "gt": uint8 [H, W, 3],
  "label"}.

  `only` (sorted record indices) keeps just those records; `skip` (sorted) leaves them out
  (key k -> the k-th record not in `skip`, found by binary search: no index of the kept ones).
  """

  def __init__(
      self,
      shard_paths: Sequence[str],
      types: Sequence[str],
      start: int = 0,
      stop: int | None = None,
      *,
      only: Sequence[int] | None = None,
      skip: Sequence[int] | None = None,
      max_open_shards: int = CONFIG_DEFAULTS["max_open_shards"],
  ):
    self.shard_paths = tuple(shard_paths)
    self.max_open_shards = int(max_open_shards)
    self.types = tuple(types)
    self.label_of = {t: i for i, t in enumerate(self.types)}
    self._source = None
    total = len(self._records())
    self.start, self.stop = int(start), total if stop is None else int(stop)
    if not 0 <= self.start <= self.stop <= total:
      raise ValueError(f"Record range [{start}, {stop}) is outside the {total} records.")
    self._only = None if only is None else np.asarray(only, np.int64)
    self._skip = None if skip is None else np.asarray(skip, np.int64)
    for name, arr in (("only", self._only), ("skip", self._skip)):
      if (
          arr is not None
          and arr.size
          and (arr.min() < self.start or arr.max() >= self.stop or np.any(np.diff(arr) <= 0))
      ):
        raise ValueError(
            f"RecordSource({name}=...): indices must be sorted, unique and in "
            f"[{self.start}, {self.stop})."
        )
    # skip: key k -> start + k + #(skipped records at or before the result).
    self._skip_shifted = (
        None if self._skip is None else (self._skip - self.start - np.arange(self._skip.size))
    )

  def _index(self, key: int) -> int:
    key = int(key)
    if self._only is not None:
      return int(self._only[key])
    if self._skip is not None:
      return self.start + key + int(np.searchsorted(self._skip_shifted, key, side="right"))
    return self.start + key

  def _records(self) -> ShardReaders:
    if self._source is None:
      self._source = ShardReaders(self.shard_paths, self.max_open_shards)
    return self._source

  def __len__(self) -> int:
    if self._only is not None:
      return int(self._only.size)
    return self.stop - self.start - (0 if self._skip is None else int(self._skip.size))

  def record(self, key: int) -> dict[str, Any]:
    """The raw decoded record (type, level, source, PNG bytes) at `key`."""
    return build_uir.decode_record(self._records()[self._index(key)])

  def __getitem__(self, key: int) -> dict[str, Any]:
    rec = self.record(key)
    label = self.label_of.get(rec["type"])
    if label is None:
      raise DataError(
          f"Record {self._index(key)} ({rec['source']}) has type {rec['type']!r}, "
          f"which is not in config.data.types {self.types}. Add it or rebuild."
      )
    lq, gt = build_uir.decode_png(rec["lq_png"]), build_uir.decode_png(rec["gt_png"])
    return {"lq": lq, "gt": gt, "label": np.int32(label)}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None  # reopened in the worker process
    return state

  def __repr__(self) -> str:
    # Stable across processes and restarts: grain checks it when restoring the iterator.
    chosen = ""
    for name, arr in (("only", self._only), ("skip", self._skip)):
      if arr is not None:
        digest = hashlib.sha256(arr.tobytes()).hexdigest()[:12]
        chosen += f", {name}={arr.size}:{digest}"
    return (
        f"RecordSource(shards={len(self.shard_paths)}, first={self.shard_paths[0]!r}, "
        f"range=[{self.start}, {self.stop}), types={len(self.types)}{chosen})"
    )


def record_labels(
    manifests: Sequence[dict[str, Any]], types: Sequence[str], folders: Sequence[str]
) -> np.ndarray:
  """The label (index in `types`) of every record of the builds, in shard order, from the
  manifests alone (module docstring); int16 [total records]."""
  label_of = {t: i for i, t in enumerate(types)}
  parts = []
  for manifest, folder in zip(manifests, folders):
    n = int(manifest["num_records"])
    labels = np.full(n, -1, np.int16)
    if manifest.get("strata"):
      for t, _, start, count in manifest["strata"]:
        labels[start : start + count] = label_of[t]
    elif manifest.get("records_per_crop"):
      crop = np.concatenate(
          [np.full(k, label_of[t], np.int16) for t, k in manifest["records_per_crop"]]
      )
      if n % crop.size:
        raise DataError(
            f"{folder}/manifest.json: {n} records are not whole crops of {crop.size} "
            f"(records_per_crop). Rebuild the folder with build_uir."
        )
      labels = np.tile(crop, n // crop.size)
    if n and labels.min() < 0:
      raise DataError(
          f"{folder}/manifest.json does not say every record's type (no 'strata' or "
          f"'records_per_crop': built by an older build_uir), which config.data.type_weights "
          f"needs. Rebuild the folder with build_uir, or set config.data.type_weights=records."
      )
    parts.append(labels)
  return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class WeightedSource:
  """Training records with a weighted type mix (module docstring): key -> base[record].

  `records[t]`: the sorted record indices (keys of `base`) of type t; `p[t]`: its share of
  the stream (types with p = 0 are never read; a type with p > 0 needs records).
  """

  def __init__(self, base: RecordSource, records: Sequence[np.ndarray], p: np.ndarray, key: str):
    self.base = base
    p = np.asarray(p, np.float64)
    sizes = np.array([len(r) for r in records], np.int64)
    empty = [base.types[t] for t in range(len(p)) if p[t] > 0 and sizes[t] == 0]
    if empty:
      raise DataError(
          f"{key} gives weight to {empty}, but config.data.path holds no training record "
          f"of {'it' if len(empty) == 1 else 'them'}. Give them weight 0 or add their records."
      )
    used = p > 0
    length = int(np.ceil(np.max(sizes[used] / p[used]) - 1e-9))
    # [types]: keys per epoch of each type, every record at least once.
    self.keys = uir_degradations.allocate(p, length, minimum=sizes)
    self.ends = np.cumsum(self.keys)
    self.records = [np.asarray(r, np.int64) for r in records]
    self._digest = hashlib.sha256(p.tobytes() + sizes.tobytes()).hexdigest()[:12]

  def __len__(self) -> int:
    return int(self.ends[-1])

  def record_index(self, key: int) -> int:
    """The key of `base` that stream key `key` reads."""
    key = int(key)
    t = int(np.searchsorted(self.ends, key, side="right"))
    j = key - (int(self.ends[t - 1]) if t else 0)
    return int(self.records[t][j * len(self.records[t]) // int(self.keys[t])])

  def __getitem__(self, key: int) -> dict[str, Any]:
    return self.base[self.record_index(key)]

  def __repr__(self) -> str:
    return f"WeightedSource({self.base!r}, keys={len(self)}, weights={self._digest})"


def ensure_open_files(num_shards: int, worker_count: int, max_open: int = 0) -> int:
  """Makes room for the shard readers: each reading process (the main one and every grain
  worker) keeps up to min(num_shards, max_open) readers open (max_open 0: every shard it has
  touched), so a host needs that many x (worker_count + 1) file descriptors. Raises the soft
  RLIMIT_NOFILE towards the hard limit when needed; a DataError says what to change when even
  that is too low. Returns the soft limit in force."""
  try:
    import resource  # pylint: disable=g-import-not-at-top
  except ImportError:  # not POSIX
    return -1
  readers = min(num_shards, max_open) if max_open else num_shards
  need = readers * (worker_count + 1) + 256  # + what the rest of the process holds
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if soft != resource.RLIM_INFINITY and soft < need:
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = target
  if soft != resource.RLIM_INFINITY and soft < need:
    raise DataError(
        f"{readers} open shard readers in each of {worker_count + 1} process(es) need about "
        f"{need} open files, above this host's hard limit of {hard} (ulimit -Hn): raise it, "
        f"lower config.data.max_open_shards or config.data.worker_count, or rebuild with a "
        f"larger --shard_size."
    )
  return soft


def _folders(value: Any, key: str) -> tuple[str, ...]:
  if not value:
    raise ValueError(f"{key} is not set: give a build_uir output folder (or a list of them).")
  return (value,) if isinstance(value, str) else tuple(str(v) for v in value)


def _load(
    folders: Sequence[str], key: str, manifests: list | None = None
) -> tuple[list[str], list[str], int]:
  """(shard paths, types in order, smallest crop size) over several build folders; the
  manifests are appended to `manifests` when given."""
  shards, types, sizes = [], [], []
  for folder in folders:
    manifest = read_manifest(folder, key)
    if manifests is not None:
      manifests.append(manifest)
    shards += manifest["shard_paths"]
    types += [t for t in manifest["types"] if t not in types]
    sizes.append(int(manifest.get("patch_size") or 0))
  return shards, types, min(sizes)


def _strata(manifest: dict[str, Any], offset: int) -> list[tuple[str, np.ndarray, int]]:
  """[(name, first record of each unit, unit size)] of one build (module docstring)."""
  n = int(manifest["num_records"])
  if manifest.get("strata"):
    return [
        (f"{t}/{level}", offset + start + np.arange(count), 1)
        for t, level, start, count in manifest["strata"]
    ]
  group = int(manifest.get("records_per_image") or 0)
  if group and n % group == 0:
    return [("images", offset + group * np.arange(n // group), group)]
  return [("records", offset + np.arange(n), 1)]


def holdout_indices(
    manifests: Sequence[dict[str, Any]], n_eval: int, selection: str = "stratified"
) -> np.ndarray:
  """Sorted record indices (over the builds' shards in order) held out for evaluation.

  `n_eval` = 0: 10% of the records, at most 256, at least one unit per stratum. The rule is
  in the module docstring; it reads manifests only.
  """
  total = sum(int(m["num_records"]) for m in manifests)
  if selection == "first":
    n = int(n_eval) or min(256, max(1, total // 10))
    if not 0 < n < total:
      raise ValueError(
          f"config.data.eval_records={n} must be in [1, {total - 1}] (the build has "
          f"{total} records)."
      )
    return np.arange(n, dtype=np.int64)
  if selection != "stratified":
    raise ValueError(f"config.data.eval_selection={selection!r}: use 'stratified' or 'first'.")
  strata, offset = [], 0
  for m in manifests:
    strata += _strata(m, offset)
    offset += int(m["num_records"])
  n = int(n_eval) or max(min(256, max(1, total // 10)), len(strata))
  if not 0 < n < total:
    raise ValueError(
        f"config.data.eval_records={n} must be in [1, {total - 1}] (the build has "
        f"{total} records)."
    )
  # Records wanted per stratum -> units (a synthesized stratum's units are whole images).
  base, extra = divmod(n, len(strata))
  picked = []
  for i, (_, starts, size) in enumerate(strata):
    want = base + (1 if i < extra else 0)
    units = min(-(-want // size), len(starts) // 2)  # at most half of the stratum
    if units <= 0:
      continue
    positions = ((np.arange(units) + 0.5) * len(starts) / units).astype(np.int64)
    chosen = starts[positions]
    picked.append((chosen[:, None] + np.arange(size)[None, :]).reshape(-1))
  if not picked:
    raise ValueError(
        f"No record can be held out for evaluation ({len(strata)} strata, each too "
        f"small to give one of at most half its records): set config.data.eval_path "
        f"to a separate build of held-out images."
    )
  return np.unique(np.concatenate(picked))


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches over build_uir ArrayRecord shards (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "array_records",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  manifests: list[dict[str, Any]] = []
  folders = _folders(opts.path, "config.data.path")
  shards, found_types, stored = _load(folders, "config.data.path", manifests)
  types = opts.types
  types = (
      tuple(found_types) if not types else ((types,) if isinstance(types, str) else tuple(types))
  )
  missing = sorted(set(found_types) - set(types))
  if missing:
    raise ValueError(
        f"config.data.types={types} misses types {missing} that the shards hold. "
        f"List every type of the build (label = index)."
    )
  patch = int(opts.patch_size)
  eval_size = int(opts.eval_size)
  for what, size, k in (
      ("patch", patch, "config.data.patch_size"),
      ("eval", eval_size, "config.data.eval_size"),
  ):
    if stored and size > stored:
      raise DataError(
          f"{k}={size} is larger than the {stored}px crops stored in the build. Lower "
          f"{k} or rebuild with build_uir --patch_size={size} or more."
      )
  max_open = int(opts.max_open_shards)
  ensure_open_files(len(shards), int(opts.worker_count or 0), max_open)
  source = RecordSource(shards, types, max_open_shards=max_open)
  eval_path = opts.eval_path
  if eval_path:
    if opts.eval_records:
      raise ValueError(
          "config.data.eval_records holds records out of config.data.path; it cannot "
          "be combined with config.data.eval_path. Set one or the other."
      )
    eval_shards, eval_types, eval_stored = _load(
        _folders(eval_path, "config.data.eval_path"), "config.data.eval_path"
    )
    unknown = sorted(set(eval_types) - set(types))
    if unknown:
      raise ValueError(
          f"config.data.eval_path holds types {unknown} not in config.data.types {types}."
      )
    if eval_stored and eval_size > eval_stored:
      raise DataError(
          f"config.data.eval_size={eval_size} is larger than the {eval_stored}px "
          f"crops of config.data.eval_path."
      )
    eval_source = RecordSource(eval_shards, types, max_open_shards=max_open)
  else:
    held_out = holdout_indices(manifests, int(opts.eval_records or 0), opts.eval_selection)
    if opts.eval_selection == "first":  # ranges, as before (the iterator state names them)
      eval_source = RecordSource(shards, types, 0, held_out.size, max_open_shards=max_open)
      source = RecordSource(shards, types, held_out.size, max_open_shards=max_open)
    else:
      eval_source = RecordSource(shards, types, only=held_out, max_open_shards=max_open)
      source = RecordSource(shards, types, skip=held_out, max_open_shards=max_open)

  if not (isinstance(opts.type_weights, str) and opts.type_weights == "records"):
    key = "config.data.type_weights"
    p = uir_degradations.type_probabilities(
        types, opts.type_weights, key, choices=("records", "uniform", "uir_counts")
    )
    labels = record_labels(manifests, types, folders)
    keep = np.ones(labels.size, bool)
    if not eval_path:
      keep[held_out] = False
    records = [np.flatnonzero(keep & (labels == t)) for t in range(len(types))]
    source = WeightedSource(RecordSource(shards, types, max_open_shards=max_open), records, p, key)

  train = transforms.restoration_train_iterator(
      source,
      opts,
      patch=patch,
      batch_size=layout.batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )

  def make_example(i: int) -> dict[str, np.ndarray]:
    rec = eval_source[i]
    if min(rec["gt"].shape[:2]) < eval_size:
      raise DataError(
          f"Eval record {i} is {rec['gt'].shape[:2]}, smaller than "
          f"config.data.eval_size={eval_size}. Lower it."
      )
    return {
        "lq": images.to_float(transforms.center_crop(rec["lq"], eval_size)),  # [e, e, 3]
        "gt": images.to_float(transforms.center_crop(rec["gt"], eval_size)),
        "label": rec["label"],
    }

  info = DataInfo(
      num_classes=len(types),
      class_names=types,
      image_channels=3,
      extra={
          "patch_size": patch,
          "eval_size": eval_size,
          "num_eval": len(eval_source),
          "num_train": len(source),  # keys per epoch with type_weights
      },
  )
  return Datasets(train=train, eval_batches=layout.eval(len(eval_source), make_example), info=info)
