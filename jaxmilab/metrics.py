"""Metric writing: TensorBoard + stdout (clu) and `DIR/metrics.jsonl`.

`metrics.jsonl` holds one JSON object per write, `{"step": int, "split":
"train" | "eval", <name>: float, ...}`, with the same scalars TensorBoard gets
(there under "<split>/<name>"; a name may itself contain "/", e.g. "psnr/haze").
Only the lead process writes. The workdir may be on any filesystem `etils.epath`
knows (`gs://bucket/run` included): files go through epath, never `open`, so no
gcsfuse mount is needed. epath reaches `gs://` through TensorFlow's `tf.io.gfile` by
default, or through fsspec (gcsfs) with `EPATH_USE_TF=false`.

TensorBoard events are written by `tf.summary`, which only knows TensorFlow's own
filesystems. They go to `$JAXMILAB_TENSORBOARD_DIR` when that is set, else to the
workdir; with a remote workdir and `EPATH_USE_TF=false` (the workdir is then written by
gcsfs, which TensorFlow cannot use: e.g. a GCS emulator, which TensorFlow's GCS
filesystem has no endpoint setting for) and no `$JAXMILAB_TENSORBOARD_DIR`, no events are
written and one warning says so; stdout and `metrics.jsonl` carry the same scalars.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from clu import metric_writers
from clu.metric_writers import interface
from etils import epath

JSONL_NAME = "metrics.jsonl"
# Where TensorBoard events go instead of the workdir (a local folder or any tf.io.gfile path).
TENSORBOARD_DIR_ENV = "JAXMILAB_TENSORBOARD_DIR"


def _to_float(v: Any) -> float:
  return float(np.asarray(v))


def _is_local(path: epath.Path) -> bool:
  return "://" not in str(path)


def _epath_uses_tf() -> bool:
  # The values etils/epath/gpath.py `_epath_use_tf` reads as "do not use TensorFlow".
  return os.environ.get("EPATH_USE_TF", "").lower() not in ("false", "no", "f", "0")


def tensorboard_dir(workdir: str | os.PathLike) -> str | None:
  """Where TensorBoard events go: `$JAXMILAB_TENSORBOARD_DIR`, else `workdir`; None = nowhere.

  None when `workdir` is remote and epath writes it through fsspec (`EPATH_USE_TF=false`):
  `tf.summary` could only reach it through TensorFlow's filesystem, which that setting avoids
  (TensorFlow's GCS filesystem, for one, cannot be pointed at an emulator).
  """
  override = os.environ.get(TENSORBOARD_DIR_ENV)
  if override:
    return override
  if _is_local(epath.Path(workdir)) or _epath_uses_tf():
    return str(workdir)
  return None


class JsonlWriter(interface.MetricWriter):
  """clu writer that appends scalars to metrics.jsonl; "split/name" keys set the split.

  Local files are appended and flushed at every write. On object stores the records wait
  in memory until `flush()` (the trainer flushes at every checkpoint, so the records a resume
  keeps are durable when its checkpoint exists), which appends them: on gs:// by uploading
  them as a small object and composing the file with it (`append_remote`: GCS's compose,
  server-side; the file's bytes are not sent again), elsewhere by rewriting the file.
  """

  def __init__(self, path: str | os.PathLike):
    self._path = epath.Path(path)
    self._local = _is_local(self._path)
    if self._local:
      self._file = open(self._path, "a", encoding="utf-8")
    else:
      self._lines: list[str] = []  # written since the last flush

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    by_split: dict[str, dict[str, float]] = {}
    for name, value in scalars.items():
      split, _, key = name.partition("/")
      if not key:  # No split prefix.
        split, key = "train", name
      by_split.setdefault(split, {})[key] = _to_float(value)
    for split, values in by_split.items():
      record = {"step": int(step), "split": split}
      record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
      line = json.dumps(record) + "\n"
      if self._local:
        self._file.write(line)
      else:
        self._lines.append(line)
    # Hand each write to the OS at once: a killed process must not lose records that precede
    # its last checkpoint (resume keeps records up to the checkpoint's step).
    if self._local:
      self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    if self._local:
      self._file.flush()
      os.fsync(self._file.fileno())
    elif self._lines:
      append_remote(self._path, "".join(self._lines))
      self._lines = []

  def close(self):
    if self._local:
      self._file.close()
    else:
      self.flush()


_COMPOSE_FAILED: list[str] = []


def _gcs_compose_append(path: str, text: str) -> None:
  """Appends `text` to the gs:// object `path`: upload a part, compose [object, part], delete it."""
  import uuid  # pylint: disable=g-import-not-at-top
  from google.cloud import storage  # pylint: disable=g-import-not-at-top

  bucket_name, _, name = path[len("gs://") :].partition("/")
  bucket = storage.Client().bucket(bucket_name)
  target = bucket.blob(name)
  data = text.encode("utf-8")
  if not target.exists():
    target.upload_from_string(data, content_type="application/json")
    return
  part = bucket.blob(f"{name}.append-{uuid.uuid4().hex}")
  part.upload_from_string(data)
  try:
    target.content_type = "application/json"
    target.compose([target, part])  # atomic: readers see the old or the new object
  finally:
    part.delete()


def append_remote(path: str | os.PathLike, text: str) -> None:
  """Appends `text` to a file on a remote filesystem (module docstring of JsonlWriter)."""
  path = epath.Path(path)
  if str(path).startswith("gs://") and not _COMPOSE_FAILED:
    try:
      _gcs_compose_append(str(path), text)
      return
    except Exception as e:  # pylint: disable=broad-except  # no client library / credentials
      _COMPOSE_FAILED.append(repr(e))
      logging.warning(
          "Appending to %s with GCS compose failed (%r); rewriting the file at each "
          "flush instead.",
          path,
          e,
      )
  old = path.read_text() if path.exists() else ""
  path.write_text(old + text)


def truncate_jsonl(workdir: str, after_step: int) -> None:
  """Drops records with step > after_step (a resumed run rewrites them identically)."""
  path = epath.Path(workdir) / JSONL_NAME
  if jax.process_index() != 0 or not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= after_step:
        kept.append(line)
    except (ValueError, KeyError):
      continue  # A line cut by a kill mid-write.
  if _is_local(path):
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)
  else:  # Object stores replace an object atomically on write.
    path.write_text("".join(kept))


def read_jsonl(workdir: str) -> list[dict[str, Any]]:
  """All records of DIR/metrics.jsonl, in order."""
  text = (epath.Path(workdir) / JSONL_NAME).read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_split(workdir: str, split: str) -> list[dict[str, Any]]:
  """The records of DIR/metrics.jsonl whose "split" is `split` ("train", "eval", ...), in order."""
  return [r for r in read_jsonl(workdir) if r["split"] == split]


def create_writer(workdir: str, *, console: bool = True) -> metric_writers.MetricWriter:
  """TensorBoard (see `tensorboard_dir`) + stdout + metrics.jsonl on the lead process; logging
  only elsewhere. console=False: no stdout lines (clu's LoggingWriter left out; the trainer prints
  its own compact progress through console.ProgressWriter)."""
  lead = jax.process_index() == 0
  if not console:
    return _writer_without_logging(workdir, lead)
  if not lead:
    return metric_writers.create_default_writer(str(workdir), just_logging=True, asynchronous=False)
  events_dir = tensorboard_dir(workdir)
  if events_dir is None:
    logging.warning(
        "No TensorBoard events: workdir %s is written through fsspec (EPATH_USE_TF=false), which "
        "tf.summary cannot use; set %s=<local dir> to write them there (metrics.jsonl and stdout "
        "have the same scalars).",
        workdir,
        TENSORBOARD_DIR_ENV,
    )
  # clu's TensorBoard writer (tf.summary) writes gs:// paths itself, through TensorFlow.
  writer = metric_writers.create_default_writer(
      events_dir or str(workdir), just_logging=events_dir is None, asynchronous=False
  )
  return metric_writers.MultiWriter([writer, JsonlWriter(epath.Path(workdir) / JSONL_NAME)])


def null_writer() -> metric_writers.MetricWriter:
  """A writer that writes nothing (no file is created)."""
  return metric_writers.MultiWriter([])


def _writer_without_logging(workdir: str, lead: bool) -> metric_writers.MetricWriter:
  """create_writer(console=False): TensorBoard + metrics.jsonl on the lead process, nothing
  elsewhere."""
  if not lead:
    return null_writer()
  events_dir = tensorboard_dir(workdir)
  writers: list[metric_writers.MetricWriter] = []
  if events_dir is None:
    logging.warning(
        "No TensorBoard events: workdir %s is written through fsspec (EPATH_USE_TF=false), which "
        "tf.summary cannot use; set %s=<local dir> to write them there (metrics.jsonl has the "
        "same scalars).",
        workdir,
        TENSORBOARD_DIR_ENV,
    )
  else:
    writers.append(metric_writers.SummaryWriter(events_dir))
  return metric_writers.MultiWriter(writers + [JsonlWriter(epath.Path(workdir) / JSONL_NAME)])


def write_split(
    writer: metric_writers.MetricWriter, step: int, split: str, scalars: Mapping[str, Any]
) -> None:
  writer.write_scalars(step, {f"{split}/{k}": v for k, v in scalars.items()})


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Saves a [H, W, 3] float image in [0, 1] as an 8-bit PNG at `path` (any epath filesystem)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
  path.write_bytes(buffer.getvalue())
