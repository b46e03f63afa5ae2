r"""UIR-2.5M as ArrayRecord shards: rebuilds of its synthetic part, and the released pairs packed.

  python -m jaxmilab.data.build_uir --clean_dir=/data/LSDIR/HR --output=/data/uir_syn \
      [--types=uir19_syn] [--levels=noise:gaussian_noise/25,poisson_noise/16 --levels=jpeg:10,20] \
      [--levels_per_type=1] [--patches_per_image=4] [--patch_size=256] [--workers=8] \
      [--shard_size=1024] [--seed=0]
  python -m jaxmilab.data.build_uir --released_dir=/data/UIR-2.5M --output=/data/uir2p5m_build
  python -m jaxmilab.data.build_uir --paired_dir=/data/real_pairs --output=/data/real_build

This is the one record format of UIR-2.5M in this repository: the released dataset (layout in
`jaxmilab/data/uir_layout.py`), other real paired sets and synthetic rebuilds all become
`uir-record-v1` shards with a manifest, read by the `uir2p5m` / `array_records` datasets.

Every clean image (sorted file names directly in --clean_dir) gives `patches_per_image`
random `patch_size` crops (0 = the whole image); every crop gives, for every type, one record
per level: `levels_per_type` levels drawn per crop and type (0 = every selected level). Types
are task-set names or names from `jaxmilab.data.degradations` (`uir19_syn`: the 18 UIR-2.5M
types that can be synthesized). `--levels TYPE:KEY[,KEY...]` restricts a type to some of its
levels (keys as `degradations.level_key` writes them: `25`, `gaussian_noise/25`, `0.005/21`).
All randomness comes from rngs keyed by (seed, image index, crop, type name, level): the records
do not depend on --workers, on the order in which shards finish, or on the order of --types.

Output folder:
  build_args.json                 the exact arguments (a re-run must use the same ones)
  shard-00000-of-00012.array_record ...   records (ArrayRecord, group_size 1: random access)
  shard-00000-of-00012.json       per-shard done marker with its counts (written last)
  manifest.json                   written when every shard is done: format, args, types (label
                                  order), counts per type and level, shard list, record count,
                                  and for held-out selections: "strata" (packed pairs: runs of
                                  [type, level, first record, count]) or "records_per_image"
                                  (synthesized: the consecutive records of one clean image;
                                  "records_per_crop": [type, records] of one crop in order)

Resuming: a shard is written to a temporary name, renamed when complete, and its .json marker
is written after that; a re-run of the same command skips the shards that have a marker and
rebuilds the others from scratch (their records are deterministic), so a killed build finishes
with no duplicate and no missing record.

Record format (`uir-record-v1`, little-endian, no pickle):
  magic b"UIR1" | u16 len(type) | u16 len(level) | u16 len(source) | u32 len(lq) | u32 len(gt)
  | type utf-8 | level key utf-8 | source utf-8 | lq image file | gt image file
Synthesized records: 8-bit RGB PNGs (the degraded float image rounded to uint8), source
"<image file>#<crop index>". Packed pairs: the two files' own bytes, never decoded and
re-encoded (PNG, JPEG, ... as released; the same size, checked from the headers). `decode_record`
reads a record and `decode_png` any of these images; `jaxmilab.data.array_records` and
`jaxmilab.data.uir2p5m` train on the shards.

Packing pairs (UIR-2.5M's real part, SIDD, real rain, LOL, ...: not synthesized):
  --released_dir=<dir>  the released UIR-2.5M layout <dir>/<type>/<source>/{lq,gt}/<name>
                        (`jaxmilab/data/uir_layout.py`): one record per pair, its type from the
                        folder (name or table abbreviation), level = <source>, source =
                        "<type folder>/<source>/<name>".
  --paired_dir=<root>   <root>/<type>/{lq,gt}/<name>: level "real", source "<type>/<name>".
Both use --workers processes (each pair is read once, as bytes: the build is I/O bound) and
resume like synthetic builds. `--subimage_size=480 --subimage_step=240` instead cuts every pair
into overlapping sub-images at the same windows of lq and gt (BasicSR's
scripts/data_preparation/extract_subimages.py, its DIV2K setting: a 2040 x 1356 image gives
4 x 8 = 32 sub-images), one PNG record each, source "<source>@<top>,<left>": a training crop
then decodes two 480 px images instead of two whole 2K ones
(`python -m jaxmilab.benchmarks.data_pipeline --source_size=2040x1356` measures both). List several
output folders in `config.data.path` to train on released, real and synthetic records in one stream.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import struct
import sys
import zlib
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from jaxmilab.data import degradations
from jaxmilab.data import images
from jaxmilab.data.base import DataError

FORMAT = "uir-record-v1"
MAGIC = b"UIR1"
_HEADER = struct.Struct("<4sHHHII")
REAL_LEVEL = "real"
# Test hook: "<shard>:<records>" makes the worker writing that shard exit abruptly (as if
# killed) after that many records, before the shard is complete.
CRASH_ENV = "JAXMILAB_BUILD_UIR_CRASH"

# ------------------------------------------------------------------------ record format


def encode_png(image: np.ndarray) -> bytes:
  """uint8 [H, W, 3] -> PNG bytes (lossless; zlib level 1 for speed)."""
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """Image file bytes (PNG, or a packed pair's JPEG, BMP, ...) -> uint8 RGB [H, W, 3]."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def encode_record(type_name: str, level: str, source: str, lq_png: bytes, gt_png: bytes) -> bytes:
  """One record in the documented `uir-record-v1` layout."""
  t, lv, src = (s.encode("utf-8") for s in (type_name, level, source))
  return b"".join(
      [
          _HEADER.pack(MAGIC, len(t), len(lv), len(src), len(lq_png), len(gt_png)),
          t,
          lv,
          src,
          lq_png,
          gt_png,
      ]
  )


def decode_record(data: bytes) -> dict[str, Any]:
  """Record bytes -> {"type", "level", "source": str, "lq_png", "gt_png": bytes}."""
  if len(data) < _HEADER.size or data[:4] != MAGIC:
    raise DataError(
        f"Not a {FORMAT} record (starts with {bytes(data[:8])!r}). Build the shards "
        f"with python -m jaxmilab.data.build_uir."
    )
  _, nt, nl, ns, nq, ng = _HEADER.unpack_from(data)
  offsets = np.cumsum([_HEADER.size, nt, nl, ns, nq, ng])
  if offsets[-1] != len(data):
    raise DataError(
        f"Truncated or corrupt {FORMAT} record: header says {offsets[-1]} bytes, "
        f"got {len(data)}. Rebuild the shard."
    )
  view = memoryview(data)
  part = [bytes(view[offsets[i] : offsets[i + 1]]) for i in range(5)]
  return {
      "type": part[0].decode("utf-8"),
      "level": part[1].decode("utf-8"),
      "source": part[2].decode("utf-8"),
      "lq_png": part[3],
      "gt_png": part[4],
  }


# -------------------------------------------------------------------------------- plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything that decides the records; identical in every worker and on re-runs."""

  clean_dir: str
  image_names: tuple[str, ...]
  types: tuple[str, ...]
  levels: Mapping[str, tuple[str, ...]]  # type -> selected level keys
  patches_per_image: int
  patch_size: int
  levels_per_type: int
  shard_size: int
  seed: int
  paired_dir: str = ""  # --paired_dir or --released_dir (pairs mode)
  pairs: tuple[tuple[str, str, str], ...] = ()  # (type, folder under paired_dir, file name)
  released: bool = False  # --released_dir: level = the <source> folder
  subimage_size: int = 0  # > 0: pairs cut into overlapping sub-images
  subimage_step: int = 0

  @property
  def records_per_job(self) -> int:
    """Records of one job (a pair, or a crop of a clean image); -1 = varies (sub-images)."""
    if self.paired_dir:
      return -1 if self.subimage_size else 1
    k = self.levels_per_type
    return sum(len(self.levels[t]) if k == 0 else min(k, len(self.levels[t])) for t in self.types)

  @property
  def num_jobs(self) -> int:
    return len(self.pairs) if self.paired_dir else len(self.image_names) * self.patches_per_image

  @property
  def jobs_per_shard(self) -> int:
    if self.records_per_job < 0:  # sub-images: about (2048 / 480)^2 ~ 16 per 2K pair, a guess
      return max(1, self.shard_size // 16)
    return max(1, self.shard_size // self.records_per_job)

  @property
  def num_shards(self) -> int:
    return max(1, math.ceil(self.num_jobs / self.jobs_per_shard))

  @property
  def num_records(self) -> int:
    """-1 when it is only known after the build (sub-images)."""
    return -1 if self.records_per_job < 0 else self.num_jobs * self.records_per_job

  def shard_name(self, shard: int) -> str:
    return f"shard-{shard:05d}-of-{self.num_shards:05d}"

  def shard_jobs(self, shard: int) -> range:
    start = shard * self.jobs_per_shard
    return range(start, min(self.num_jobs, start + self.jobs_per_shard))


def _parse_levels(specs: Sequence[str], types: Sequence[str]) -> dict[str, tuple[str, ...]]:
  """--levels TYPE:KEY[,KEY...] -> {type: level keys}; every other type keeps all its levels."""
  chosen: dict[str, tuple[str, ...]] = {}
  for spec in specs:
    name, sep, keys = spec.partition(":")
    if not sep or not keys:
      raise ValueError(
          f"--levels={spec!r}: expected TYPE:KEY[,KEY...], e.g. jpeg:10,20 or "
          f"noise:gaussian_noise/25."
      )
    if name not in types:
      raise ValueError(
          f"--levels={spec!r} names type {name!r}, which is not in --types "
          f"({', '.join(types)})."
      )
    for key in keys.split(","):
      degradations.level_from_key(name, key)  # ValueError listing the valid keys
    chosen[name] = tuple(keys.split(","))
  return {
      t: chosen.get(t, tuple(degradations.level_key(v) for v in degradations.get_levels(t)))
      for t in types
  }


def _resolve_types(names: Sequence[str]) -> tuple[str, ...]:
  """Task-set names and type names -> ordered unique type names (ValueError on unknown ones)."""
  out: list[str] = []
  for name in names:
    name = name.strip()
    if not name:
      continue
    for t in degradations.resolve(name, key="--types"):
      if t not in out:
        out.append(t)
  if not out:
    raise ValueError("--types is empty: give task sets (e.g. uir19_syn) or degradation names.")
  return tuple(out)


def _scan_pairs(paired_dir: str) -> tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]:
  from jaxmilab.data import paired_folders  # pylint: disable=g-import-not-at-top

  if not os.path.isdir(paired_dir):
    raise DataError(f"--paired_dir={paired_dir!r} does not exist or is not a folder.")
  types = tuple(
      sorted(d for d in os.listdir(paired_dir) if os.path.isdir(os.path.join(paired_dir, d)))
  )
  if not types:
    raise DataError(f"--paired_dir={paired_dir!r} holds no <type>/{{lq,gt}} folders.")
  pairs = tuple((t, t, n) for t in types for n in paired_folders.scan_task(paired_dir, t))
  return types, pairs


def _scan_released(released_dir: str) -> tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]:
  from jaxmilab.data import uir_degradations  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import uir_layout  # pylint: disable=g-import-not-at-top

  pairs = tuple(uir_layout.scan(released_dir))
  present = {t for t, _, _ in pairs}
  return tuple(t for t in uir_degradations.UIR_TYPE_NAMES if t in present), pairs


def make_plan(
    clean_dir: str = "",
    *,
    types: Sequence[str] = ("uir19_syn",),
    levels: Sequence[str] = (),
    patches_per_image: int = 4,
    patch_size: int = 256,
    levels_per_type: int = 1,
    shard_size: int = 1024,
    seed: int = 0,
    paired_dir: str = "",
    released_dir: str = "",
    subimage_size: int = 0,
    subimage_step: int = 0,
) -> Plan:
  """Checks the arguments (clear errors) and lists the inputs."""
  if int(subimage_size) < 0 or (int(subimage_size) and not 0 < int(subimage_step)):
    raise ValueError(
        f"--subimage_size={subimage_size} --subimage_step={subimage_step}: the size "
        f"must be >= 0 (0: whole images) and, when set, the step > 0 (BasicSR's DIV2K "
        f"setting: 480 and 240)."
    )
  if int(subimage_size) and not (paired_dir or released_dir):
    raise ValueError(
        "--subimage_size cuts packed pairs (--released_dir / --paired_dir); a "
        "--clean_dir build already stores --patch_size crops."
    )
  if int(patches_per_image) < 1 or int(patch_size) < 0 or int(levels_per_type) < 0:
    raise ValueError(
        "--patches_per_image must be >= 1, --patch_size >= 0 (0: whole images) and "
        "--levels_per_type >= 0 (0: every level)."
    )
  if int(shard_size) < 1:
    raise ValueError(f"--shard_size={shard_size} must be >= 1 record.")
  if not 0 <= int(seed) < 2**32:
    raise ValueError(f"--seed={seed} must be in [0, 2**32).")
  common = dict(
      patches_per_image=int(patches_per_image),
      patch_size=int(patch_size),
      levels_per_type=int(levels_per_type),
      shard_size=int(shard_size),
      seed=int(seed),
  )
  if sum(map(bool, (clean_dir, paired_dir, released_dir))) > 1:
    raise ValueError(
        "Give one of --clean_dir (synthesize), --paired_dir or --released_dir " "(pack pairs)."
    )
  if paired_dir or released_dir:
    root = os.path.abspath(os.path.expanduser(paired_dir or released_dir))
    ptypes, pairs = _scan_released(root) if released_dir else _scan_pairs(root)
    if released_dir:  # level = the <source> folder
      sources: dict[str, set[str]] = {t: set() for t in ptypes}
      for t, folder, _ in pairs:
        sources[t].add(folder.split("/")[-1])
      levels = {t: tuple(sorted(sources[t])) for t in ptypes}
    else:
      levels = {t: (REAL_LEVEL,) for t in ptypes}
    return Plan(
        clean_dir="",
        image_names=(),
        types=ptypes,
        levels=levels,
        paired_dir=root,
        pairs=pairs,
        released=bool(released_dir),
        subimage_size=int(subimage_size),
        subimage_step=int(subimage_step),
        **common,
    )
  if not clean_dir:
    raise ValueError(
        "--clean_dir is not set: give a folder of clean images (or --released_dir / "
        "--paired_dir to pack pairs)."
    )
  clean_dir = os.path.abspath(os.path.expanduser(clean_dir))
  names = tuple(images.list_images(clean_dir, what="clean image folder (--clean_dir)"))
  type_names = _resolve_types(types)
  return Plan(
      clean_dir=clean_dir,
      image_names=names,
      types=type_names,
      levels=_parse_levels(levels, type_names),
      **common,
  )


# ------------------------------------------------------------------------------ workers


def pair_record(plan: Plan, job: int) -> tuple[str, str, str, bytes, bytes]:
  """(type, level, source, lq file bytes, gt file bytes) of one pair: no decode, no re-encode."""
  type_name, folder, name = plan.pairs[job]
  paths = [os.path.join(plan.paired_dir, folder, side, name) for side in ("lq", "gt")]
  sizes = [images.image_size(p) for p in paths]  # headers only; DataError if unreadable
  if sizes[0] != sizes[1]:
    raise DataError(
        f"{paths[0]} is {sizes[0][0]}x{sizes[0][1]} but {paths[1]} is "
        f"{sizes[1][0]}x{sizes[1][1]}: a pair must have the same size. Resize or "
        f"remove the pair."
    )
  data = []
  for path in paths:
    with open(path, "rb") as f:
      data.append(f.read())
  if plan.released:
    return type_name, folder.split("/")[-1], f"{folder}/{name}", data[0], data[1]
  return type_name, REAL_LEVEL, f"{type_name}/{name}", data[0], data[1]


def subimage_positions(size: int, crop: int, step: int) -> list[int]:
  """Top (or left) offsets of BasicSR's sub-images along one side: 0, step, 2 step, ... and a
  last one flush with the border when the grid leaves pixels out (BasicSR
  scripts/data_preparation/extract_subimages.py `worker`, thresh_size 0 as its DIV2K setting);
  one crop of the whole side when it is shorter than `crop`."""
  if size <= crop:
    return [0]
  space = list(range(0, size - crop + 1, step))
  if size - (space[-1] + crop) > 0:
    space.append(size - crop)
  return space


def pair_subimages(plan: Plan, job: int):
  """Yields (type, level, source, lq PNG, gt PNG) for the sub-images of one pair: both images
  decoded once and cut at the same windows, each window encoded as PNG (lossless w.r.t. the
  decoded pixels; a JPEG pair's bytes are not kept)."""
  type_name, level, source, lq_bytes, gt_bytes = pair_record(plan, job)
  lq, gt = decode_png(lq_bytes), decode_png(gt_bytes)
  c, step = plan.subimage_size, plan.subimage_step
  for top in subimage_positions(gt.shape[0], c, step):
    for left in subimage_positions(gt.shape[1], c, step):
      window = (slice(top, top + c), slice(left, left + c))
      yield (
          type_name,
          level,
          f"{source}@{top},{left}",
          encode_png(lq[window]),
          encode_png(gt[window]),
      )


def job_records(plan: Plan, job: int):
  """Yields (type, level key, source, lq uint8, gt uint8) for one synthesized crop."""
  if plan.paired_dir:
    raise ValueError("job_records synthesizes crops; packed pairs are read by pair_record.")
  image_index, crop = divmod(job, plan.patches_per_image)
  name = plan.image_names[image_index]
  p = plan.patch_size
  image = images.read_image(
      os.path.join(plan.clean_dir, name), min_size=p or None, key="--patch_size"
  )
  if p:
    rng = np.random.default_rng([plan.seed, image_index, crop, 0])
    top = int(rng.integers(0, image.shape[0] - p + 1))
    left = int(rng.integers(0, image.shape[1] - p + 1))
    image = image[top : top + p, left : left + p]
  gt = np.ascontiguousarray(image)  # [p, p, 3] uint8
  clean = images.to_float(gt)
  for type_name in plan.types:
    type_id = zlib.crc32(type_name.encode("utf-8"))  # rngs do not depend on the order of --types
    all_keys = [degradations.level_key(v) for v in degradations.get_levels(type_name)]
    keys = plan.levels[type_name]
    if plan.levels_per_type and plan.levels_per_type < len(keys):
      pick = np.random.default_rng([plan.seed, image_index, crop, type_id, 1])
      keys = [keys[i] for i in sorted(pick.choice(len(keys), plan.levels_per_type, replace=False))]
    for key in keys:
      level = degradations.level_from_key(type_name, key)
      rng = np.random.default_rng([plan.seed, image_index, crop, type_id, 2, all_keys.index(key)])
      lq = degradations.apply(type_name, clean, rng, level)
      yield type_name, key, f"{name}#{crop}", degradations.to_uint8(lq), gt


def _crash_point(shard: int) -> int | None:
  spec = os.environ.get(CRASH_ENV, "")
  if not spec:
    return None
  s, _, n = spec.partition(":")
  return int(n or 0) if int(s) == shard else None


def build_shard(plan: Plan, out: str, shard: int) -> dict[str, Any]:
  """Writes one shard atomically (temp name -> rename), then its .json done marker."""
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top

  name = plan.shard_name(shard)
  final = os.path.join(out, name + ".array_record")
  tmp = f"{final}.tmp-{os.getpid()}"
  crash_after = _crash_point(shard)
  counts: dict[str, dict[str, int]] = {}
  runs: list[list[Any]] = []  # [type, level, count] in record order (packed pairs)
  writer = ArrayRecordWriter(tmp, "group_size:1")
  n = 0
  try:
    for job in plan.shard_jobs(shard):
      if plan.paired_dir:
        records = pair_subimages(plan, job) if plan.subimage_size else [pair_record(plan, job)]
        for type_name, key, source, lq_bytes, gt_bytes in records:
          if crash_after is not None and n >= crash_after:
            os._exit(
                17
            )  # simulated kill in the middle of a shard  pylint: disable=protected-access
          writer.write(encode_record(type_name, key, source, lq_bytes, gt_bytes))
          counts.setdefault(type_name, {}).setdefault(key, 0)
          counts[type_name][key] += 1
          if runs and runs[-1][:2] == [type_name, key]:
            runs[-1][2] += 1
          else:
            runs.append([type_name, key, 1])
          n += 1
        continue
      gt_png = None  # every record of a crop shares its gt: encode it once
      for type_name, key, source, lq, gt in job_records(plan, job):
        if crash_after is not None and n >= crash_after:
          os._exit(17)  # simulated kill in the middle of a shard  pylint: disable=protected-access
        gt_png = gt_png or encode_png(gt)
        writer.write(encode_record(type_name, key, source, encode_png(lq), gt_png))
        counts.setdefault(type_name, {}).setdefault(key, 0)
        counts[type_name][key] += 1
        n += 1
  finally:
    writer.close()
  os.replace(tmp, final)
  meta = {"file": os.path.basename(final), "records": n, "counts": counts}
  if plan.paired_dir:
    meta["runs"] = runs
  _write_json(os.path.join(out, name + ".json"), meta)
  return meta


_WORKER_PLAN: Plan | None = None


def _set_worker_plan(plan: Plan) -> None:
  global _WORKER_PLAN
  _WORKER_PLAN = plan


def _build_shard_in_worker(out: str, shard: int) -> dict[str, Any]:
  return build_shard(_WORKER_PLAN, out, shard)


def _write_json(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=False)
  os.replace(tmp, path)


def _shard_done(plan: Plan, out: str, shard: int) -> dict[str, Any] | None:
  name = plan.shard_name(shard)
  marker = os.path.join(out, name + ".json")
  if not (os.path.isfile(marker) and os.path.isfile(os.path.join(out, name + ".array_record"))):
    return None
  with open(marker, encoding="utf-8") as f:
    return json.load(f)


# ------------------------------------------------------------------------------- driver


def build(
    plan: Plan,
    out: str,
    *,
    workers: int = 0,
    args: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
  """Builds (or finishes) every shard of `plan` in `out` and writes manifest.json; returns it."""
  out = os.path.abspath(os.path.expanduser(out))
  os.makedirs(out, exist_ok=True)
  args = dict(args or {})
  identity = {"format": FORMAT, "plan": _plan_identity(plan)}
  args_path = os.path.join(out, "build_args.json")
  if os.path.isfile(args_path):
    with open(args_path, encoding="utf-8") as f:
      previous = json.load(f)
    if previous.get("identity") != json.loads(json.dumps(identity)):
      raise ValueError(
          f"{out!r} holds a build with different arguments or inputs ({args_path}). "
          f"Re-run with the same arguments to resume, or use a new --output folder."
      )
  else:
    _write_json(args_path, {"identity": identity, "args": args})
  for entry in os.listdir(out):  # leftovers of killed workers
    if ".tmp-" in entry:
      os.remove(os.path.join(out, entry))

  metas: dict[int, dict[str, Any]] = {}
  pending = []
  for shard in range(plan.num_shards):
    meta = _shard_done(plan, out, shard)
    if meta is None:
      pending.append(shard)
    else:
      metas[shard] = meta
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm(
        total=plan.num_records if plan.num_records >= 0 else None,
        initial=sum(m["records"] for m in metas.values()),
        unit="rec",
        desc="build_uir",
        disable=not progress,
        file=sys.stderr,
    )
  except ImportError:  # pragma: no cover
    bar = None
  try:
    if workers <= 0:
      for shard in pending:
        metas[shard] = build_shard(plan, out, shard)
        if bar is not None:
          bar.update(metas[shard]["records"])
    else:
      ctx = multiprocessing.get_context("spawn")
      # The plan (every input name) goes to each worker process once, not with every shard.
      with concurrent.futures.ProcessPoolExecutor(
          max_workers=workers, mp_context=ctx, initializer=_set_worker_plan, initargs=(plan,)
      ) as pool:
        futures = {pool.submit(_build_shard_in_worker, out, s): s for s in pending}
        try:
          for fut in concurrent.futures.as_completed(futures):
            metas[futures[fut]] = fut.result()
            if bar is not None:
              bar.update(metas[futures[fut]]["records"])
        except BaseException:
          pool.shutdown(
              wait=True, cancel_futures=True
          )  # report the first error without building on
          raise
  finally:
    if bar is not None:
      bar.close()

  counts: dict[str, dict[str, int]] = {t: {} for t in plan.types}
  for shard in sorted(metas):
    for t, per_level in metas[shard]["counts"].items():
      for key, n in per_level.items():
        counts[t][key] = counts[t].get(key, 0) + n
  manifest = {
      "format": FORMAT,
      "args": args,
      "types": list(plan.types),
      "levels": {t: list(plan.levels[t]) for t in plan.types},
      "num_records": sum(metas[s]["records"] for s in metas),
      "num_inputs": len(plan.pairs) if plan.paired_dir else len(plan.image_names),
      # 0: whole images (sub-images: the smallest side may be shorter at an image's edge only
      # when the image itself is smaller than the sub-image size)
      "patch_size": plan.subimage_size if plan.paired_dir else plan.patch_size,
      "counts": counts,
      "shards": [{"file": metas[s]["file"], "records": metas[s]["records"]} for s in sorted(metas)],
  }
  # What a held-out selection needs without reading records (array_records.holdout_indices):
  # packed pairs: runs of consecutive records of one (type, level) over the shards in order;
  # synthesized: the records of one clean image are consecutive, this many.
  if plan.paired_dir:
    if all("runs" in m for m in metas.values()):  # shards of an older build have none
      manifest["strata"] = strata_runs(metas)
  else:
    manifest["records_per_image"] = plan.records_per_job * plan.patches_per_image
    # [[type, records], ...] of one crop, in record order (job_records): every record's type
    # follows from it (array_records' type_weights).
    k = plan.levels_per_type
    manifest["records_per_crop"] = [
        [t, min(k, len(plan.levels[t])) if k else len(plan.levels[t])] for t in plan.types
    ]
  if plan.num_records >= 0 and manifest["num_records"] != plan.num_records:
    raise RuntimeError(f"Built {manifest['num_records']} records, expected {plan.num_records}.")
  _write_json(os.path.join(out, "manifest.json"), manifest)
  return manifest


def strata_runs(metas: Mapping[int, Mapping[str, Any]]) -> list[list[Any]]:
  """[[type, level, first record, count], ...] over the shards in order, from their markers' runs
  (record order; consecutive runs of one (type, level) across shards merged)."""
  runs: list[list[Any]] = []
  first = 0
  for shard in sorted(metas):
    for type_name, level, count in metas[shard]["runs"]:
      if runs and runs[-1][0] == type_name and runs[-1][1] == level:
        runs[-1][3] += count
      else:
        runs.append([type_name, level, first, count])
      first += count
  return runs


def _plan_identity(plan: Plan) -> dict[str, Any]:
  """The plan as JSON, its input lists replaced by count + SHA-256 (2.5M pairs stay small)."""
  d = dataclasses.asdict(plan)
  for key in ("subimage_size", "subimage_step"):  # absent when unused: older builds resume
    if not d[key]:
      del d[key]
  d["levels"] = {k: list(v) for k, v in plan.levels.items()}
  for key in ("image_names", "pairs"):
    items = json.dumps(d.pop(key)).encode("utf-8")
    d[key] = {"count": len(getattr(plan, key)), "sha256": hashlib.sha256(items).hexdigest()}
  return json.loads(json.dumps(d))


# --------------------------------------------------------------------------------- CLI

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The CLI flags (defined only when run as a program, so importing this module adds none)."""
  flags.DEFINE_string("clean_dir", "", "Folder of clean images (files directly inside).")
  flags.DEFINE_string(
      "paired_dir", "", "Instead of --clean_dir: pack real pairs <dir>/<type>/{lq,gt}."
  )
  flags.DEFINE_string(
      "released_dir",
      "",
      "Instead of --clean_dir: pack the released UIR-2.5M "
      "<dir>/<type>/<source>/{lq,gt} (jaxmilab/data/uir_layout.py).",
  )
  flags.DEFINE_string("output", "", "Output folder (created; re-run the same command to resume).")
  flags.DEFINE_list("types", ["uir19_syn"], "Task-set names and/or degradation names.")
  flags.DEFINE_multi_string("levels", [], "TYPE:KEY[,KEY...] restricts a type to these levels.")
  flags.DEFINE_integer("levels_per_type", 1, "Levels drawn per crop and type (0: every level).")
  flags.DEFINE_integer("patches_per_image", 4, "Random crops per clean image.")
  flags.DEFINE_integer("patch_size", 256, "Crop size in pixels (0: whole images).")
  flags.DEFINE_integer(
      "workers", max(1, (os.cpu_count() or 1)), "Worker processes (0: in-process)."
  )
  flags.DEFINE_integer("shard_size", 1024, "Records per shard (rounded down to whole crops).")
  flags.DEFINE_integer("seed", 0, "Seed of every crop and degradation draw.")
  flags.DEFINE_integer(
      "subimage_size",
      0,
      "Packed pairs: cut each pair into overlapping "
      "sub-images of this size, one record each (BasicSR extract_subimages; 0: "
      "whole images). Training then decodes a sub-image, not a whole image, per crop.",
  )
  flags.DEFINE_integer("subimage_step", 240, "Stride of the sub-images (with --subimage_size).")
  flags.DEFINE_bool("progress", True, "Show a tqdm progress bar.")


_ARG_NAMES = (
    "clean_dir",
    "paired_dir",
    "released_dir",
    "output",
    "types",
    "levels",
    "levels_per_type",
    "patches_per_image",
    "patch_size",
    "workers",
    "shard_size",
    "seed",
    "subimage_size",
    "subimage_step",
)


def _fail(message: str) -> None:
  """A user error: one line on stderr, exit code 2 (as every jaxmilab CLI)."""
  print(message.replace("\n", "; "), file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.output:
    _fail("build_uir: error: --output is not set: give the output folder.")
  args = {k: FLAGS[k].value for k in _ARG_NAMES}
  try:
    plan = make_plan(
        FLAGS.clean_dir,
        types=FLAGS.types,
        levels=FLAGS.levels,
        patches_per_image=FLAGS.patches_per_image,
        patch_size=FLAGS.patch_size,
        levels_per_type=FLAGS.levels_per_type,
        shard_size=FLAGS.shard_size,
        seed=FLAGS.seed,
        paired_dir=FLAGS.paired_dir,
        released_dir=FLAGS.released_dir,
        subimage_size=FLAGS.subimage_size,
        subimage_step=FLAGS.subimage_step if FLAGS.subimage_size else 0,
    )
    manifest = build(plan, FLAGS.output, workers=FLAGS.workers, args=args, progress=FLAGS.progress)
  except (DataError, ValueError) as e:
    _fail(f"build_uir: error: {e}")
  except concurrent.futures.process.BrokenProcessPool:
    _fail(
        "build_uir: error: a worker process died (killed, or out of memory). Finished "
        "shards are kept: re-run the same command to resume."
    )
  print(
      f"build_uir: {manifest['num_records']} records in {len(manifest['shards'])} shards, "
      f"{len(manifest['types'])} types -> "
      f"{os.path.join(os.path.abspath(FLAGS.output), 'manifest.json')}"
  )


def run():
  """Console-script entry point (jaxmilab-build-uir)."""
  from jaxmilab import console  # pylint: disable=g-import-not-at-top

  define_flags()
  console.run_app(main)  # flag mistakes one line (exit 2), --help exits 0


if __name__ == "__main__":
  run()
