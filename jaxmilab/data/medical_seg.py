"""Labelled 2-D slices of medical volumes for segmentation fine-tuning (MACL) and its baselines.

Volumes come from `jaxmilab.data.medical` (phantoms by default; ACDC / CHD / MMWHS / BraTS /
NIfTI folders with labels). The training set is the labelled subset of the training volumes:
`train_volumes` (fixed key lists, e.g. the official data_split_list.txt: ACDC 10% =
[73, 18, 1, 15, 95, 6, 13, 16]) or `labeled_fraction` of them (a fixed seeded subset,
the same in every run); the test set is `test_volumes` (keys) or, for phantoms,
`phantom_test_volumes` separate volumes. Training: every slice of the labelled volumes, a
random `patch_size` pad / crop, mirror and (p 0.67) elastic / rotate / scale
(`augment`, official prepare_supervised). Eval: every slice of the test volumes, centre
pad / crop to `eval_size` (official validation), scored with pooled Dice by the method.

Batches: train {"image": f32 [b, p, p, C], "labels": int32 [b, p, p]}; eval adds "valid".

config.data keys (defaults): source ("phantoms"), root, normalization, channels (1),
phantom_volumes (train pool, 20), phantom_test_volumes (10), phantom_classes (4),
phantom_size (64), phantom_slices (24), phantom_seed_offset (0), num_classes (0 = from the
source / phantom_classes), train_volumes (None = all), labeled_fraction (1.0),
labeled_seed (0), test_volumes (None: phantoms use their own test volumes; else required),
patch_size (64), eval_size (0 = patch_size), augment (True), minmax_slices (False: inputs
z-scored per volume as the official fine-tuning; True = per-slice min-max as the pre-training
views), p_spatial (0.67), eval_batch_size, worker_count (0), read_threads (4), cache_size (64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxmilab import config_options
from jaxmilab.data import medical
from jaxmilab.data import medical_views
from jaxmilab.data import transforms
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

CONFIG_DEFAULTS = dict(
    medical.COMMON_DEFAULTS,
    phantom_test_volumes=10,
    num_classes=0,
    train_volumes=None,
    labeled_fraction=1.0,
    labeled_seed=0,
    test_volumes=None,
    eval_size=0,
    augment=True,
    minmax_slices=False,
    eval_batch_size=0,
)
PHANTOM_TEST_SEED_OFFSET = 100_000  # test phantoms never share a seed with training ones


def split_volumes(config: Any) -> tuple[list[medical.VolumeRef], list[medical.VolumeRef]]:
  """(labelled training volumes, test volumes) from config.data (module doc)."""
  opts = config_options.options(config, CONFIG_DEFAULTS, part="data", component="medical_seg")
  source = opts.source or "phantoms"
  pool = medical.refs_from_config(opts, default_count=20)
  if source == "phantoms":
    test = medical.refs_from_config(
        opts,
        count_key="phantom_test_volumes",
        default_count=10,
        seed_offset=PHANTOM_TEST_SEED_OFFSET,
    )
    test = [medical.VolumeRef(f"test_{r.key}", phantom_seed=r.phantom_seed) for r in test]
    if opts.test_volumes is not None:
      test = medical.select(test, opts.test_volumes, "config.data.test_volumes")
  else:
    if opts.test_volumes is None:
      raise ValueError(
          f"config.data.test_volumes is required for source {source!r}: the fixed "
          f"list of test volume keys (e.g. the official data_split_list.txt)."
      )
    test = medical.select(pool, opts.test_volumes, "config.data.test_volumes")
    pool = [r for r in pool if r not in test]
  train = medical.select(pool, opts.train_volumes, "config.data.train_volumes")
  fraction = float(opts.labeled_fraction or 1.0)
  if fraction < 1.0:
    if opts.train_volumes is not None:
      raise ValueError(
          "config.data.train_volumes and labeled_fraction < 1 are exclusive: give the "
          "labelled volumes explicitly or as a fraction."
      )
    train = medical.fixed_fraction(train, fraction, int(opts.labeled_seed))
  overlap = {r.key for r in train} & {r.key for r in test}
  if overlap:
    raise ValueError(f"config.data: volumes {sorted(overlap)} are both training and test volumes.")
  unlabeled = [r.key for r in train if r.phantom_seed is None and r.label_path is None]
  unlabeled += [r.key for r in test if r.phantom_seed is None and r.label_path is None]
  if unlabeled:
    raise medical.DataError(
        f"config.data.root: volumes {unlabeled[:10]} have no label file; "
        f"segmentation needs labels (see jaxmilab/data/medical.py layouts)."
    )
  return train, test


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator over labelled slices and eval batches of the test slices (module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "medical_seg",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  source_name = opts.source or "phantoms"
  patch = medical.check_patch(opts.patch_size)
  eval_size = medical.check_patch(opts.eval_size or patch, "config.data.eval_size")
  num_classes = int(opts.num_classes) or (
      int(opts.phantom_classes)
      if source_name == "phantoms"
      else medical.NUM_CLASSES.get(source_name, 0)
  )
  if num_classes < 2:
    raise ValueError(f"config.data.num_classes must be set (>= 2) for source {source_name!r}.")
  reader = medical.reader_from_config(opts)
  train_refs, test_refs = split_volumes(opts)
  train_source = medical_views.SliceSource(
      reader, train_refs, f"{source_name}:{','.join(r.key for r in train_refs)}"
  )
  test_source = medical_views.SliceSource(
      reader, test_refs, f"{source_name}:{','.join(r.key for r in test_refs)}"
  )
  minmax_slices = bool(opts.minmax_slices)
  crop = medical_views.SegmentationCrop(
      patch, bool(opts.augment), minmax_slices, float(opts.p_spatial)
  )
  train = layout.train(
      train_source, [crop], worker_count=int(opts.worker_count), read_threads=int(opts.read_threads)
  )

  def make_example(i: int) -> dict[str, np.ndarray]:
    element = test_source[i]
    image, coords = medical.pad_or_crop(element["image"], eval_size, "centre")
    labels, _ = medical.pad_or_crop(element["labels"], eval_size, "fixed", coords=coords)
    if minmax_slices:
      image = medical_views.minmax(image)
    return {
        "image": np.ascontiguousarray(image, np.float32),
        "labels": np.ascontiguousarray(labels, np.int32),
    }

  for v, ref in enumerate(train_refs + test_refs):
    labels = reader(ref)[1]
    if labels is not None and labels.max() >= num_classes:
      raise medical.DataError(
          f"Volume {ref.key!r} has label {int(labels.max())} but "
          f"config.data.num_classes={num_classes}."
      )
  channels = train_source[0]["image"].shape[-1]
  return Datasets(
      train=train,
      eval_batches=layout.eval(len(test_source), make_example),
      info=DataInfo(
          num_classes=num_classes,
          image_channels=int(channels),
          class_names=tuple(str(k) for k in range(num_classes)),
          extra={
              "train_volumes": tuple(r.key for r in train_refs),
              "test_volumes": tuple(r.key for r in test_refs),
              "num_train_slices": len(train_source),
              "num_test_slices": len(test_source),
          },
      ),
  )
