"""Clean photos degraded on the fly; the label is the index of the degradation type.

Data (no network by default):

* default: the real colour photos shipped in the scikit-image wheel
  (`jaxmilab.data.embedded`): astronaut, coffee, hubble_deep_field,
  immunohistochemistry, motorcycle and retina train; chelsea and rocket are the
  fixed held-out eval photos.
* `config.data.root=/path/to/clean`: every image file directly inside that folder
  (png, jpg, jpeg, bmp, tif, tiff, webp, ppm; sub-folders are ignored). Eval images
  come from `config.data.eval_root` (same kind of folder) or, without it, a fixed
  held-out `eval_fraction` of the files chosen by a hash of the file name.

      /path/to/clean/0001.png
      /path/to/clean/0002.jpg
      ...

Training examples are (photo, type) records, shuffled each epoch and sharded over
processes; each gets a random `patch_size` crop, a random flip and a degradation of
its type with a random level, all drawn from the record's rng (grain: seed + record
index). Eval examples are every eval photo x every type on the central `eval_size`
crop (or `eval_crops` crops on a fixed grid), degraded with fixed per-example seeds
(`eval_seed`, not the training seed; a random level per example unless `levels` fixes it).

config.data keys (defaults): degradations ("5syn": a task-set name or names from
`jaxmilab.data.degradations`), patch_size (64), eval_size (128), eval_batch_size (the
training batch size), worker_count (0 grain worker processes), read_threads (4),
read_buffer (one per-process batch per read thread), vertical_flip (False), photos / eval_photos
(embedded names), root / eval_root / eval_fraction (0.1), eval_seed (0),
cache_size (16 decoded folder images kept per process), levels (one fixed level per type,
None = random per example; e.g. degradations=("gaussian_noise",), levels=(25,) for sigma 25).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxmilab.data import degradations
from jaxmilab.data import embedded
from jaxmilab.data import images
from jaxmilab.data import transforms
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

# Every config.data key this dataset reads, with its default (jaxmilab.config_lib adds the
# missing ones to a config that selects this dataset, so each can be set from the command line).
CONFIG_DEFAULTS = dict(
    degradations="5syn",  # a task set of jaxmilab.data.degradations (5syn, uir19_syn, ...)
    patch_size=64,
    eval_size=128,
    eval_batch_size=0,  # 0 = the training batch size
    worker_count=0,
    read_threads=4,
    read_buffer=None,
    vertical_flip=False,
    photos=(),
    eval_photos=(),  # embedded photo names (default: all / the fixed held-out pair)
    root="",  # a folder of your own clean photos instead of the embedded ones
    eval_root="",
    eval_fraction=0.1,
    eval_seed=0,
    cache_size=16,
    eval_crops=1,  # crops per eval photo: 1 = the central crop, n = a fixed grid of n
    type_weights="uniform",  # training mix of types: "uniform", "uir_counts" (UIR-2.5M table),
    # or one weight per type
    levels=(),
)  # fixed per-type levels, e.g. (25,) for denoise sigma 25


class PhotoSource:
  """Random-access records (photo, type): key -> {"gt": uint8 [H, W, 3], "label": int32}."""

  def __init__(
      self,
      description: str,
      num_types: int,
      *,
      arrays: tuple[np.ndarray, ...] = (),
      paths: tuple[str, ...] = (),
      cache_size: int = 16,
      slots: tuple[int, ...] | None = None,
  ):
    self.description = description
    self.num_types = int(num_types)
    # Record (photo, slot) has type slots[slot]: one slot per type = uniform (the record order of
    # earlier runs); more slots for frequent types = a weighted mix (type_slots).
    self.slots = tuple(range(self.num_types)) if slots is None else tuple(int(t) for t in slots)
    self.arrays = tuple(arrays)  # in-memory photos (embedded), or
    self.paths = tuple(paths)  # files decoded on demand
    self.reader = images.CachedReader(cache_size)

  @property
  def num_photos(self) -> int:
    return len(self.arrays) or len(self.paths)

  def __len__(self) -> int:
    return self.num_photos * len(self.slots)

  def __getitem__(self, key: int) -> dict[str, Any]:
    photo, slot = divmod(int(key), len(self.slots))
    label = self.slots[slot]
    image = self.arrays[photo] if self.arrays else self.reader(self.paths[photo])
    return {"gt": image, "label": np.int32(label)}

  def __repr__(self) -> str:
    # Stable across processes and restarts: grain checks it when restoring the iterator.
    weights = "" if self.slots == tuple(range(self.num_types)) else f", slots={len(self.slots)}"
    return (
        f"PhotoSource({self.description}, photos={self.num_photos}, types={self.num_types}"
        f"{weights})"
    )


TYPE_SLOTS = 4096  # slots per photo of a weighted type mix (the rarest UIR type keeps >= 1)


def type_slots(
    types: tuple[str, ...], weights: Any, key: str = "config.data.type_weights"
) -> tuple[int, ...] | None:
  """The type of each record slot for a weighted mix, or None for "uniform".

  weights: "uniform"; "uir_counts" (each type's pairs in the UIR-2.5M table,
  uir_degradations.uir_pair_counts: a Gaussian-noise record is drawn ~460x as often as a
  raindrop + rain-streak one); or one non-negative weight per type. Slots are allocated by
  largest remainder over TYPE_SLOTS, every type with a positive weight keeping at least one."""
  if isinstance(weights, str) and weights == "uniform":
    return None
  from jaxmilab.data import uir_degradations  # pylint: disable=g-import-not-at-top

  w = uir_degradations.type_probabilities(types, weights, key)
  n = uir_degradations.allocate(w, TYPE_SLOTS, minimum=1)
  return tuple(int(t) for t, k in enumerate(n) for _ in range(k))


def grid_crops(image: np.ndarray, size: int, n: int) -> np.ndarray:
  """n fixed size x size crops of image [H, W, C] on an even grid (rows x cols, rows ~ cols x
  H / W, row-major, first n), overlapping where the image is small: [n, size, size, C]."""
  h, w = image.shape[:2]
  rows = max(1, int(np.ceil(np.sqrt(n * h / w))))
  cols = int(np.ceil(n / rows))
  tops = np.round(np.linspace(0, h - size, rows)).astype(int)
  lefts = np.round(np.linspace(0, w - size, cols)).astype(int)
  boxes = [(t, l) for t in tops for l in lefts][:n]
  return np.stack([image[t : t + size, l : l + size] for t, l in boxes])


def _folder_paths(folder: str, names: list[str], min_sizes: dict[str, int]) -> tuple[str, ...]:
  """Full paths, after checking every header against the crop sizes (naming the file)."""
  paths = tuple(os.path.join(folder, n) for n in names)
  for path in paths:
    size = images.image_size(path)
    for key, min_size in min_sizes.items():
      images.check_min_size(path, size, min_size, key)
  return paths


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches of synthetically degraded photos (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "degraded_photos",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  types = degradations.resolve(opts.degradations)
  patch = int(opts.patch_size)
  eval_size = int(opts.eval_size)
  eval_seed = int(opts.eval_seed)
  cache_size = int(opts.cache_size)
  root = opts.root
  slots = type_slots(types, opts.type_weights)
  sizes_train = {"config.data.patch_size": patch}
  sizes_eval = {"config.data.eval_size": eval_size}

  if root:
    if opts.photos or opts.eval_photos:
      raise ValueError(
          "config.data.photos / eval_photos name embedded photos; they cannot be "
          "combined with config.data.root. Set one or the other."
      )
    root = os.path.abspath(os.path.expanduser(root))
    names = images.list_images(root, what="clean image folder (config.data.root)")
    eval_root = opts.eval_root
    if eval_root:
      eval_root = os.path.abspath(os.path.expanduser(eval_root))
      train_names = names
      eval_names = images.list_images(eval_root, what="eval image folder (config.data.eval_root)")
    else:
      eval_root = root
      train_names, eval_names = images.split_held_out(
          names, float(opts.eval_fraction), where=f"config.data.root={root!r}"
      )
    source = PhotoSource(
        f"root={root!r}",
        len(types),
        slots=slots,
        paths=_folder_paths(root, train_names, sizes_train),
        cache_size=cache_size,
    )
    eval_paths = _folder_paths(eval_root, eval_names, sizes_eval)
  else:
    if opts.eval_root:
      raise ValueError("config.data.eval_root needs config.data.root (a folder of clean images).")
    eval_photos = embedded.check_names(
        opts.eval_photos or embedded.EVAL_PHOTOS, "config.data.eval_photos"
    )
    photos = opts.photos or tuple(p for p in embedded.PHOTOS if p not in eval_photos)
    photos = embedded.check_names(photos, "config.data.photos")
    shared = sorted(set(photos) & set(eval_photos))
    if shared:
      raise ValueError(
          f"config.data.photos and eval_photos share {shared}: an eval photo must not "
          f"be trained on. Remove it from one of them."
      )
    arrays = tuple(embedded.read(p, min_size=patch) for p in photos)
    source = PhotoSource(f"embedded={','.join(photos)}", len(types), arrays=arrays, slots=slots)
    eval_paths = tuple(embedded.path(p) for p in eval_photos)
    for path in eval_paths:
      images.check_min_size(path, images.image_size(path), eval_size, "config.data.eval_size")

  levels = tuple(opts.levels)
  if levels and len(levels) != len(types):
    raise ValueError(
        f"config.data.levels has {len(levels)} entries for {len(types)} degradation types "
        f"{types}: give one level per type (None = random), e.g. (25,) for noise at sigma 25."
    )
  levels = levels or (None,) * len(types)
  train = transforms.restoration_train_iterator(
      source,
      opts,
      patch=patch,
      batch_size=layout.batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      extra=[transforms.SynthesizeDegradation(types, levels)],
  )

  n_crops = int(opts.eval_crops)
  if n_crops < 1:
    raise ValueError(f"config.data.eval_crops={n_crops} must be >= 1 (1 = the central crop).")
  crops: dict[int, np.ndarray] = {}  # eval photo index -> its crops, uint8 [n, e, e, 3]

  def make_example(i: int) -> dict[str, np.ndarray]:
    # Example i = (photo, crop, type), type fastest: every crop is seen under every type.
    photo_crop, label = divmod(i, len(types))
    photo, crop = divmod(photo_crop, n_crops)
    if photo not in crops:
      image = images.read_image(eval_paths[photo])  # [H, W, 3] uint8
      crops[photo] = (
          np.ascontiguousarray(transforms.center_crop(image, eval_size))[None]
          if n_crops == 1
          else grid_crops(image, eval_size, n_crops)
      )
    gt = images.to_float(crops[photo][crop])  # [e, e, 3]
    rng = np.random.default_rng([eval_seed, i])  # fixed per example, independent of config.seed
    lq = degradations.apply(types[label], gt, rng, levels[label])
    return {"lq": lq, "gt": gt, "label": np.int32(label)}

  num_eval = len(eval_paths) * n_crops * len(types)
  info = DataInfo(
      num_classes=len(types),
      class_names=types,
      image_channels=3,
      extra={
          "patch_size": patch,
          "eval_size": eval_size,
          "num_eval": num_eval,
          "num_train_photos": source.num_photos,
      },
  )
  return Datasets(train=train, eval_batches=layout.eval(num_eval, make_example), info=info)
