"""Metric writing: TensorBoard + stdout (clu) and `DIR/metrics.jsonl`.

`metrics.jsonl` holds one JSON object per write, `{"step": int, "split":
"train" | "eval", <name>: float, ...}`, with the same scalars TensorBoard gets
(there under "<split>/<name>"; a name may itself contain "/", e.g. "psnr/haze").
Only the lead process writes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

JSONL_NAME = "metrics.jsonl"


def _to_float(v: Any) -> float:
  return float(np.asarray(v))


class JsonlWriter(interface.MetricWriter):
  """clu writer that appends scalars to metrics.jsonl; "split/name" keys set the split."""

  def __init__(self, path: str):
    self._path = path
    self._file = open(path, "a", encoding="utf-8")

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
      self._file.write(json.dumps(record) + "\n")
    # Hand each write to the OS at once: a killed process must not lose records that precede
    # its last checkpoint (resume keeps records up to the checkpoint's step).
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
    self._file.flush()
    os.fsync(self._file.fileno())

  def close(self):
    self._file.close()


def truncate_jsonl(workdir: str, after_step: int) -> None:
  """Drops records with step > after_step (a resumed run rewrites them identically)."""
  path = os.path.join(workdir, JSONL_NAME)
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= after_step:
        kept.append(line)
    except (ValueError, KeyError):
      continue  # A line cut by a kill mid-write.
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def read_jsonl(workdir: str) -> list[dict[str, Any]]:
  """All records of DIR/metrics.jsonl, in order."""
  with open(os.path.join(workdir, JSONL_NAME), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard + stdout + metrics.jsonl on the lead process; logging only elsewhere."""
  lead = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not lead, asynchronous=False)
  if not lead:
    return writer
  return metric_writers.MultiWriter([writer, JsonlWriter(os.path.join(workdir, JSONL_NAME))])


def write_split(writer: metric_writers.MetricWriter, step: int, split: str,
                scalars: Mapping[str, Any]) -> None:
  writer.write_scalars(step, {f"{split}/{k}": v for k, v in scalars.items()})
