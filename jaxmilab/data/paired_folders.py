"""Real paired restoration sets read from folders; the label is the index of the task.

Layout (`config.data.root`, and `config.data.eval_root` if given, the same way):

    <root>/<task>/lq/<name>   degraded input
    <root>/<task>/gt/<name>   clean target, same file name, same height and width

for every task in `config.data.tasks`, e.g. tasks=("derain", "dehaze", "denoise",
"deblur", "lowlight") with <root>/derain/{lq,gt}/ from Rain100L, <root>/dehaze/{lq,gt}/
from SOTS-outdoor, and so on. Rename files where a dataset uses different names for the
two sides (Rain100L's rain-001.png / norain-001.png both become 001.png). Image files
are png, jpg, jpeg, bmp, tif, tiff, webp or ppm; other files are ignored.

Without `eval_root`, a fixed `eval_fraction` (default 0.1, at least one file) of every
task is held out by a hash of the file name. Training takes random `patch_size` crops
(lq and gt at the same position) with random flips; eval takes the central `eval_size`
crop of every held-out pair. Every image must be at least as large as its crop.

config.data keys (defaults): root, tasks (required), patch_size (64), eval_root,
eval_fraction (0.1), eval_size (128), eval_batch_size (the training batch size),
worker_count (0 grain worker processes), read_threads (4), read_buffer (one per-process
batch per read thread), vertical_flip (False), cache_size (0 decoded images kept per process),
denoise_sigma (0: off; > 0: the eval inputs of the task named "denoise" are made from its gt as
the released DCPT test code makes them, float noise of that sigma from np.random.seed(0), not
clipped: basic_degradations.gaussian_noise_released; its lq/ folder is then unused at eval).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxmilab.data import basic_degradations
from jaxmilab.data import images
from jaxmilab.data import transforms
from jaxmilab.data.base import DataError
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

# Every config.data key this dataset reads, with its default (module docstring); `root` and
# `tasks` must be set.
CONFIG_DEFAULTS = dict(
    root="",
    tasks=(),
    patch_size=64,
    eval_root="",
    eval_fraction=0.1,
    eval_size=128,
    eval_batch_size=0,
    worker_count=0,
    read_threads=4,
    read_buffer=None,
    vertical_flip=False,
    cache_size=0,
    denoise_sigma=0.0,
)


def scan_task(root: str, task: str) -> list[str]:
  """Sorted file names common to <root>/<task>/lq and gt; DataError on a bad layout."""
  task_dir = os.path.join(root, task)
  if not os.path.isdir(task_dir):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise DataError(
        f"Task folder {task_dir!r} does not exist (folders in {root!r}: {present}). "
        f"Create it with lq/ and gt/ inside, or fix config.data.tasks."
    )
  for side in ("lq", "gt"):
    if not os.path.isdir(os.path.join(task_dir, side)):
      raise DataError(
          f"Task folder {task_dir!r} has no {side}/ subfolder. Expected "
          f"{task_dir}/lq/<name> (degraded) and {task_dir}/gt/<name> (clean)."
      )
  lq = images.list_images(os.path.join(task_dir, "lq"), what="lq folder")
  gt = images.list_images(os.path.join(task_dir, "gt"), what="gt folder")
  if lq != gt:
    only_lq, only_gt = sorted(set(lq) - set(gt)), sorted(set(gt) - set(lq))
    raise DataError(
        f"{task_dir}/lq and {task_dir}/gt must hold the same file names. Only in lq: "
        f"{only_lq[:5]}{' ...' if len(only_lq) > 5 else ''}; only in gt: {only_gt[:5]}"
        f"{' ...' if len(only_gt) > 5 else ''}. "
        f"Rename or remove files so that they pair up."
    )
  return lq


def check_pairs(root: str, task: str, names: list[str], min_size: int, key: str) -> None:
  """lq and gt of every pair have the same size, at least `min_size` (headers only)."""
  for name in names:
    lq_path, gt_path = (os.path.join(root, task, side, name) for side in ("lq", "gt"))
    lq_size, gt_size = images.image_size(lq_path), images.image_size(gt_path)
    if lq_size != gt_size:
      raise DataError(
          f"{lq_path!r} is {lq_size[0]}x{lq_size[1]} but {gt_path!r} is "
          f"{gt_size[0]}x{gt_size[1]}: a pair must have the same size. "
          f"Resize or remove it."
      )
    images.check_min_size(gt_path, gt_size, min_size, key)


class PairedSource:
  """Random-access records: key -> {"lq", "gt": uint8 [H, W, 3], "label": int32 task index}."""

  def __init__(
      self,
      root: str,
      tasks: tuple[str, ...],
      entries: tuple[tuple[int, str], ...],
      cache_size: int = 0,
  ):
    self.root = root
    self.tasks = tasks
    self.entries = entries  # (task index, file name)
    self.reader = images.CachedReader(cache_size)

  def __len__(self) -> int:
    return len(self.entries)

  def pair(self, key: int) -> tuple[np.ndarray, np.ndarray, int]:
    label, name = self.entries[key]
    task_dir = os.path.join(self.root, self.tasks[label])
    lq = self.reader(os.path.join(task_dir, "lq", name))
    gt = self.reader(os.path.join(task_dir, "gt", name))
    if lq.shape != gt.shape:
      raise DataError(
          f"{task_dir}/lq/{name} is {lq.shape[:2]} but gt/{name} is {gt.shape[:2]}: "
          f"a pair must have the same size. Resize or remove it."
      )
    return lq, gt, label

  def __getitem__(self, key: int) -> dict[str, Any]:
    lq, gt, label = self.pair(int(key))
    return {"lq": lq, "gt": gt, "label": np.int32(label)}

  def __repr__(self) -> str:
    # Stable across processes and restarts: grain checks it when restoring the iterator.
    return f"PairedSource(root={self.root!r}, tasks={self.tasks}, pairs={len(self.entries)})"


def _root(path: Any, key: str) -> str:
  if not path:
    raise ValueError(f"{key} is not set: give the folder that holds <task>/lq and <task>/gt.")
  path = os.path.abspath(os.path.expanduser(str(path)))
  if not os.path.isdir(path):
    raise DataError(
        f"{key}={path!r} does not exist or is not a folder. Create it (layout "
        f"<root>/<task>/{{lq,gt}}/<name>) or fix the path."
    )
  return path


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches over paired lq/gt folders (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "paired_folders",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  root = _root(opts.root, "config.data.root")
  tasks = opts.tasks
  if not tasks:
    raise ValueError(
        "config.data.tasks is not set: list the task folders under config.data.root "
        "in label order, e.g. ('derain', 'dehaze')."
    )
  tasks = (tasks,) if isinstance(tasks, str) else tuple(str(t) for t in tasks)
  if len(set(tasks)) != len(tasks):
    raise ValueError(f"config.data.tasks={tasks} repeats a task (label = index; each once).")
  patch = int(opts.patch_size)
  eval_size = int(opts.eval_size)
  eval_root = opts.eval_root
  eval_root = _root(eval_root, "config.data.eval_root") if eval_root else None
  fraction = float(opts.eval_fraction)

  train_entries, eval_entries = [], []
  for label, task in enumerate(tasks):
    names = scan_task(root, task)
    if eval_root:
      train_names, eval_names = names, scan_task(eval_root, task)
    else:
      train_names, eval_names = images.split_held_out(names, fraction, where=f"{root}/{task}")
    check_pairs(root, task, train_names, patch, "config.data.patch_size")
    check_pairs(eval_root or root, task, eval_names, eval_size, "config.data.eval_size")
    train_entries += [(label, n) for n in train_names]
    eval_entries += [(label, n) for n in eval_names]

  cache_size = int(opts.cache_size)
  source = PairedSource(root, tasks, tuple(train_entries), cache_size)
  eval_source = PairedSource(eval_root or root, tasks, tuple(eval_entries), cache_size)
  train = transforms.restoration_train_iterator(
      source,
      opts,
      patch=patch,
      batch_size=layout.batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )

  denoise_sigma = float(opts.denoise_sigma)
  if denoise_sigma and "denoise" not in tasks:
    raise ValueError(
        f"config.data.denoise_sigma={denoise_sigma} needs a task named 'denoise' in "
        f"config.data.tasks={tasks}."
    )

  def make_example(i: int) -> dict[str, np.ndarray]:
    lq, gt, label = eval_source.pair(i)
    gt = images.to_float(transforms.center_crop(gt, eval_size))  # [e, e, 3]
    if denoise_sigma and tasks[label] == "denoise":
      lq = basic_degradations.gaussian_noise_released(gt, denoise_sigma)  # float, unclipped
    else:
      lq = images.to_float(transforms.center_crop(lq, eval_size))
    return {"lq": lq, "gt": gt, "label": np.int32(label)}

  info = DataInfo(
      num_classes=len(tasks),
      class_names=tasks,
      image_channels=3,
      extra={
          "patch_size": patch,
          "eval_size": eval_size,
          "num_eval": len(eval_entries),
          "num_train": len(train_entries),
      },
  )
  return Datasets(train=train, eval_batches=layout.eval(len(eval_entries), make_example), info=info)
