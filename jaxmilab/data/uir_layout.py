"""The released UIR-2.5M folder layout: type-folder aliases and the pair scanner.

A leaf module (it imports no dataset or builder), shared by the `uir2p5m` dataset and by
`python -m jaxmilab.data.build_uir --released_dir`, so neither imports the other.
"""

from __future__ import annotations

import os

from jaxmilab.data import paired_folders
from jaxmilab.data import uir_degradations
from jaxmilab.data.base import DataError

_SHORT_MIXED = {
    "blur_jpeg": "BJ",
    "blur_rain": "BR",
    "blur_low_light_noise": "BLN",
    "low_light_haze_rain_snow": "CDD",
    "down_noise_blur_jpeg": "DNBJ",
}
# lower-case folder name -> type name.
TYPE_ALIASES: dict[str, str] = {}
for _t in uir_degradations.UIR_TYPES:
  TYPE_ALIASES[_t.name.lower()] = _t.name
  TYPE_ALIASES[(_t.abbrev or _SHORT_MIXED[_t.name]).lower()] = _t.name

LAYOUT = "<released_dir>/<type>/<source>/{lq,gt}/<name> (see jaxmilab/data/uir_layout.py)"


def scan(released_dir: str) -> list[tuple[str, str, str]]:
  """(type, "<type folder>/<source>", file name) of every pair, sorted; DataError on a bad
  layout."""
  if not released_dir or not os.path.isdir(released_dir):
    raise DataError(
        f"UIR-2.5M folder {released_dir!r} does not exist. Download the dataset and "
        f"pass its folder; expected layout {LAYOUT}."
    )
  folders = sorted(
      d for d in os.listdir(released_dir) if os.path.isdir(os.path.join(released_dir, d))
  )
  unknown = [d for d in folders if d.lower() not in TYPE_ALIASES]
  if unknown or not folders:
    raise DataError(
        f"UIR-2.5M folder {released_dir!r}: folders {unknown or folders} are not UIR-2.5M types. "
        f"Expected {LAYOUT} with <type> one of {', '.join(sorted(TYPE_ALIASES))}. "
        "Rename or move them."
    )
  seen: dict[str, str] = {}
  pairs = []
  for folder in folders:
    type_name = TYPE_ALIASES[folder.lower()]
    if type_name in seen:
      raise DataError(
          f"UIR-2.5M folder {released_dir!r}: {seen[type_name]!r} and {folder!r} are "
          f"the same type {type_name!r}. Merge them into one folder."
      )
    seen[type_name] = folder
    type_dir = os.path.join(released_dir, folder)
    sources = sorted(d for d in os.listdir(type_dir) if os.path.isdir(os.path.join(type_dir, d)))
    if {"lq", "gt"} & set(sources):
      raise DataError(
          f"{type_dir!r} holds lq/ or gt/ directly; the layout has one more level: put "
          f"the pairs in {folder}/<source>/lq and {folder}/<source>/gt (e.g. the source "
          f"dataset's name). Expected {LAYOUT}."
      )
    if not sources:
      raise DataError(
          f"{type_dir!r} has no <source> folders. Expected {LAYOUT}; put the pairs in "
          f"{type_dir}/<source>/lq and {type_dir}/<source>/gt."
      )
    for source in sources:
      names = paired_folders.scan_task(type_dir, source)  # DataError naming lq/ gt/ problems
      pairs += [(type_name, f"{folder}/{source}", n) for n in names]
  return pairs
