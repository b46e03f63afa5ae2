"""tfds builder `uir2p5m`: the released UIR-2.5M dataset (MaskDCPT), read from `manual_dir`.

The MaskDCPT README (github.com/MILab-PKU/MaskDCPT, "UIR-2.5M Dataset": "It will be uploaded
on huggingface. Stay tuned.") does not publish a layout yet; its dataset table lists, per
degradation type, the source datasets each pair comes from. This builder expects that
structure, one folder per type, one per source dataset (or level), paired lq/gt inside:

    <manual_dir>/<type>/<source>/lq/<name>    degraded image
    <manual_dir>/<type>/<source>/gt/<name>    clean image (same name, same size)

e.g. GN/LSDIR/{lq,gt}/0001.png, RN/SIDD/{lq,gt}/..., RS/RealRain-1k/{lq,gt}/...
<type> is a UIR-2.5M type: its jaxmilab name or the table's abbreviation, any case
(`TYPE_ALIASES`: noise|GN, real_noise|RN, motion_blur|MB, defocus_blur|DB,
gaussian_sinc_blur|GB, jpeg|J, haze|H, rain_streak|RS, raindrop|RD, rain_streak_raindrop|RSD,
snow|S, mosaic|MS, low_light|LL, moire|MR, blur_jpeg|BJ, blur_rain|BR,
blur_low_light_noise|BLN, low_light_haze_rain_snow|CDD, down_noise_blur_jpeg|DNBJ; the
mixed rows have no abbreviation in the table, so the short forms are ours). <source> is free
text and is kept in the `source` feature. Image files: png, jpg, jpeg, bmp, tif, tiff, webp,
ppm. If the release uses another layout, move folders (or add symlinks) to match this one.

Features: lq, gt (uint8 RGB PNG), type (ClassLabel over the 19 types in table order,
`uir_degradations.UIR_TYPE_NAMES`), source, name. One split, "train".

    builder = tfds.builder("uir2p5m", data_dir=..., file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from jaxmilab.data import images
from jaxmilab.data import paired_folders
from jaxmilab.data import uir_degradations
from jaxmilab.data.base import DataError

_SHORT_MIXED = {"blur_jpeg": "BJ", "blur_rain": "BR", "blur_low_light_noise": "BLN",
                "low_light_haze_rain_snow": "CDD", "down_noise_blur_jpeg": "DNBJ"}
# lower-case folder name -> type name.
TYPE_ALIASES: dict[str, str] = {}
for _t in uir_degradations.UIR_TYPES:
  TYPE_ALIASES[_t.name.lower()] = _t.name
  TYPE_ALIASES[(_t.abbrev or _SHORT_MIXED[_t.name]).lower()] = _t.name


def scan(manual_dir: str) -> list[tuple[str, str, str]]:
  """(type, folder path of <type>/<source>, file name) of every pair; DataError on a bad layout."""
  layout = "<manual_dir>/<type>/<source>/{lq,gt}/<name> (see jaxmilab/data/uir2p5m.py)"
  if not manual_dir or not os.path.isdir(manual_dir):
    raise DataError(f"UIR-2.5M manual_dir {manual_dir!r} does not exist. Download the dataset and "
                    f"pass its folder as manual_dir; expected layout {layout}.")
  folders = sorted(d for d in os.listdir(manual_dir) if os.path.isdir(os.path.join(manual_dir, d)))
  unknown = [d for d in folders if d.lower() not in TYPE_ALIASES]
  if unknown or not folders:
    raise DataError(
        f"UIR-2.5M manual_dir {manual_dir!r}: folders {unknown or folders} are not UIR-2.5M types. "
        f"Expected {layout} with <type> one of {', '.join(sorted(TYPE_ALIASES))}. Rename or move them.")
  seen: dict[str, str] = {}
  pairs = []
  for folder in folders:
    type_name = TYPE_ALIASES[folder.lower()]
    if type_name in seen:
      raise DataError(f"UIR-2.5M manual_dir {manual_dir!r}: {seen[type_name]!r} and {folder!r} are the "
                      f"same type {type_name!r}. Merge them into one folder.")
    seen[type_name] = folder
    type_dir = os.path.join(manual_dir, folder)
    sources = sorted(d for d in os.listdir(type_dir) if os.path.isdir(os.path.join(type_dir, d)))
    if {"lq", "gt"} & set(sources):
      raise DataError(f"{type_dir!r} holds lq/ or gt/ directly; the layout has one more level: put "
                      f"the pairs in {folder}/<source>/lq and {folder}/<source>/gt (e.g. the source "
                      f"dataset's name). Expected {layout}.")
    if not sources:
      raise DataError(f"{type_dir!r} has no <source> folders. Expected {layout}; put the pairs in "
                      f"{type_dir}/<source>/lq and {type_dir}/<source>/gt.")
    for source in sources:
      names = paired_folders.scan_task(type_dir, source)  # DataError naming lq/ gt/ problems
      pairs += [(type_name, os.path.join(type_dir, source), n) for n in names]
  return pairs


class Uir2p5m(tfds.core.GeneratorBasedBuilder):
  """UIR-2.5M (MaskDCPT, arXiv 2510.13282): 19 degradation types of paired restoration data."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Layout <type>/<source>/{lq,gt}/<name> (see module docstring)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  # Nothing is downloaded, so there are no URL checksums. Setting this also avoids tfds looking
  # for a checksums file next to the code, which needs the optional `importlib_resources`.
  url_infos = None

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "lq": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "gt": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "type": tfds.features.ClassLabel(names=list(uir_degradations.UIR_TYPE_NAMES)),
            "source": tfds.features.Text(),
            "name": tfds.features.Text(),
        }),
        supervised_keys=("lq", "gt"),
        homepage="https://github.com/MILab-PKU/MaskDCPT",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    pairs = scan(os.fspath(dl_manager.manual_dir))
    return {"train": self._generate_examples(pairs)}

  def _generate_examples(self, pairs) -> Iterator[tuple[str, dict[str, Any]]]:
    for type_name, folder, name in pairs:
      lq = images.read_image(os.path.join(folder, "lq", name))  # [H, W, 3] uint8
      gt = images.read_image(os.path.join(folder, "gt", name))
      if lq.shape != gt.shape:
        raise DataError(f"{folder}/lq/{name} is {lq.shape[:2]} but gt/{name} is {gt.shape[:2]}: "
                        f"a pair must have the same size.")
      source = os.path.basename(folder)
      yield f"{type_name}/{source}/{name}", {"lq": lq, "gt": gt, "type": type_name,
                                             "source": source, "name": name}
