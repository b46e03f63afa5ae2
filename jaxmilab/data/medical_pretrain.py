"""MACL pre-training data: four views of unlabelled 2-D slices with their position labels.

Volumes come from `jaxmilab.data.medical` (`config.data.source`: synthetic phantoms by
default, or ACDC / CHD / MMWHS / BraTS / NIfTI / DICOM folders); every slice of every
selected volume is one record, its position label (i + 1) / D. Views
(`jaxmilab.data.medical_views.ContrastiveViews`, run in grain workers): a random
`patch_size` crop, I1 / I2 intensity jitter, V1 / V2 = spatial(I1 / I2).

Batches: {"view_i1", "view_i2", "view_v1", "view_v2": f32 [b, p, p, C], "position": f32 [b]};
with views="pcl" the released PCL views instead: {"view_v1", "view_v2", "position"}, two
spatial-only draws of the crop (no intensity jitter).
Eval batches (a monitor of the pre-training losses): the same views of `eval_slices` slices
spread evenly over the volumes, drawn with fixed seeds, plus "valid".

config.data keys (defaults): source ("phantoms"), root, normalization (per source: see
medical.py), channels (1; phantoms only), phantom_volumes (32), phantom_classes (4),
phantom_size (64), phantom_slices (24), phantom_seed_offset (0), volumes (None = all; keys or
case numbers), patch_size (64), p_spatial (0.67), views ("macl" | "pcl"), eval_slices (32),
eval_batch_size, eval_seed (0), worker_count (0), read_threads (4), cache_size (64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxmilab.data import medical
from jaxmilab.data import medical_views
from jaxmilab.data import transforms
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

CONFIG_DEFAULTS = dict(
    medical.COMMON_DEFAULTS,
    volumes=None,
    eval_slices=32,
    eval_batch_size=0,
    eval_seed=0,
    views="macl",
)


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator of MACL views and a fixed eval set of views (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "medical_pretrain",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  patch = medical.check_patch(opts.patch_size)
  reader = medical.reader_from_config(opts)
  refs = medical.select(
      medical.refs_from_config(opts, default_count=32), opts.volumes, "config.data.volumes"
  )
  description = f"{reader.source}:{opts.root}:{','.join(r.key for r in refs)}"
  source = medical_views.SliceSource(reader, refs, description)
  views = medical_views.ContrastiveViews(patch, float(opts.p_spatial), str(opts.views))
  train = layout.train(
      source, [views], worker_count=int(opts.worker_count), read_threads=int(opts.read_threads)
  )

  eval_count = min(int(opts.eval_slices), len(source))
  eval_index = np.linspace(0, len(source) - 1, eval_count).round().astype(int)
  eval_seed = int(opts.eval_seed)

  def make_example(i: int) -> dict[str, np.ndarray]:
    return views.random_map(
        source[int(eval_index[i])], np.random.default_rng([eval_seed, 0xE7A1, i])
    )

  channels = source[0]["image"].shape[-1]
  return Datasets(
      train=train,
      eval_batches=layout.eval(eval_count, make_example),
      info=DataInfo(
          image_channels=int(channels), extra={"num_volumes": len(refs), "num_slices": len(source)}
      ),
  )
