r"""UIR-2.5M (MaskDCPT, arXiv 2510.13282) as training data: the released layout and its dataset.

One record format serves the released dataset and our rebuilds of its synthetic part: the
`uir-record-v1` ArrayRecord shards + manifest.json that `jaxmilab.data.build_uir` writes
(documented there). The released set is packed once, without decoding or re-encoding an image
(each record holds the two image files' own bytes), by worker processes, resumably:

    python -m jaxmilab.data.build_uir --released_dir=/data/UIR-2.5M --output=/data/uir2p5m_build \
        --workers=32

and `config.data.name = "uir2p5m"` trains on one or more such folders (`config.data.path`;
e.g. the released build plus a `--clean_dir` rebuild), with labels fixed to the 19 UIR-2.5M
types in the paper's table order (`uir_degradations.UIR_TYPE_NAMES`) whatever subset a build
holds, so classifier heads agree between builds. Reading is `jaxmilab.data.array_records`:
a grain ArrayRecord source over every shard, a global shuffle each epoch, per-host slices of
one global example stream and a checkpointable iterator. config.data keys are those of
`array_records` (path, patch_size, eval_path, eval_records, eval_selection, eval_size,
eval_batch_size, worker_count, read_threads, read_buffer, vertical_flip); `types` defaults to
the 19 types. Without eval_path the held-out records are stratified over (type, source) (see
`array_records`), so every type of the build is evaluated.

Released layout. The MaskDCPT README (github.com/MILab-PKU/MaskDCPT, "UIR-2.5M Dataset": "It
will be uploaded on huggingface. Stay tuned.") does not publish a layout yet; its dataset table
lists, per degradation type, the source datasets each pair comes from. We expect that
structure, one folder per type, one per source dataset (or level), paired lq/gt inside:

    <released_dir>/<type>/<source>/lq/<name>    degraded image
    <released_dir>/<type>/<source>/gt/<name>    clean image (same name, same size)

e.g. GN/LSDIR/{lq,gt}/0001.png, RN/SIDD/{lq,gt}/..., RS/RealRain-1k/{lq,gt}/...
<type> is a UIR-2.5M type: its jaxmilab name or the table's abbreviation, any case
(`TYPE_ALIASES`: noise|GN, real_noise|RN, motion_blur|MB, defocus_blur|DB,
gaussian_sinc_blur|GB, jpeg|J, haze|H, rain_streak|RS, raindrop|RD, rain_streak_raindrop|RSD,
snow|S, mosaic|MS, low_light|LL, moire|MR, blur_jpeg|BJ, blur_rain|BR,
blur_low_light_noise|BLN, low_light_haze_rain_snow|CDD, down_noise_blur_jpeg|DNBJ; the
mixed rows have no abbreviation in the table, so the short forms are ours). <source> is free
text; a record's level is its <source> and its source "<type folder>/<source>/<name>". Image
files: png, jpg, jpeg, bmp, tif, tiff, webp, ppm. If the release uses another layout, move
folders (or add symlinks) to match this one.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxmilab import config_options
from jaxmilab.data import array_records
from jaxmilab.data import uir_degradations

# The released layout and its scanner (shared with build_uir) are re-exported from the leaf module.
from jaxmilab.data.uir_layout import LAYOUT, TYPE_ALIASES, scan  # noqa: F401
from jaxmilab.data.base import Datasets

# The keys of array_records; `types` () = the 19 UIR-2.5M types in table order.
CONFIG_DEFAULTS = dict(array_records.CONFIG_DEFAULTS)


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Training on UIR-2.5M builds (released and/or rebuilt), labels over the 19 types in table
  order."""
  opts = config_options.options(config, CONFIG_DEFAULTS, part="data", component="uir2p5m")
  types = opts.types or uir_degradations.UIR_TYPE_NAMES
  types = (types,) if isinstance(types, str) else tuple(types)
  unknown = sorted(set(types) - set(uir_degradations.UIR_TYPE_NAMES))
  if unknown:
    raise ValueError(
        f"config.data.types lists {unknown}, which are not UIR-2.5M types "
        f"({', '.join(uir_degradations.UIR_TYPE_NAMES)})."
    )
  config = ml_collections.ConfigDict(dict(config.items(), types=types))  # the caller's stays as is
  return array_records.create(
      config,
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
