"""Tiny on-disk datasets shared by the data tests (test code, not part of the package).

uir_release     a UIR-2.5M release folder: <type>/<source>/{lq,gt}/<name> of seeded noise
read_build      a build_uir output folder read back: (manifest, decoded records in shard order)
wsol_metadata   wsolevaluation metadata files, <metadata>/<dataset>/<split>/*.txt
"""

from __future__ import annotations

import json
import pathlib
import zlib
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image


def uir_release(
    root: pathlib.Path,
    layout: Iterable[tuple[str, str, Sequence[str]]],
    *,
    height: int = 8,
    width: int = 10,
) -> pathlib.Path:
  """Writes (type folder, source, file names) of `layout` under `root`; returns `root`.

  Image i of a folder is uint8 noise [height + i, width, 3], seeded by its type, name and side
  (lq differs from gt); ".jpg" names are JPEG files (quality 90), others PNG.
  """
  for type_dir, source, names in layout:
    for side in ("lq", "gt"):
      folder = root / type_dir / source / side
      folder.mkdir(parents=True)
      for i, name in enumerate(names):
        seed = zlib.crc32(f"{type_dir}/{name}/{side}".encode())
        pixels = (np.random.default_rng(seed).random((height + i, width, 3)) * 255).astype(np.uint8)
        options = {"quality": 90} if name.endswith(".jpg") else {}
        Image.fromarray(pixels).save(folder / name, **options)
  return root


def read_build(out: pathlib.Path) -> tuple[dict, list[dict]]:
  """(manifest.json, every record of every shard decoded by build_uir.decode_record)."""
  from array_record.python.array_record_module import ArrayRecordReader  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import build_uir  # pylint: disable=g-import-not-at-top

  manifest = json.loads((out / "manifest.json").read_text())
  records = []
  for shard in manifest["shards"]:
    reader = ArrayRecordReader(str(out / shard["file"]))
    records += [build_uir.decode_record(r) for r in reader.read_all()]
    reader.close()
  return manifest, records


def wsol_metadata(
    metadata_root: pathlib.Path,
    dataset: str,
    *,
    labels: Mapping[str, int],
    localization: Sequence[str],
    sizes: Mapping[str, tuple[int, int]] | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> None:
  """The same wsolevaluation metadata in every split: image_ids.txt, class_labels.txt
  (`labels`: image id -> class), localization.txt (its lines as given) and, with `sizes`
  (image id -> (width, height)), image_sizes.txt."""
  for split in splits:
    folder = metadata_root / dataset / split
    folder.mkdir(parents=True)
    _write_lines(folder / "image_ids.txt", labels)
    _write_lines(folder / "class_labels.txt", [f"{i},{c}" for i, c in labels.items()])
    if sizes is not None:
      _write_lines(folder / "image_sizes.txt", [f"{i},{w},{h}" for i, (w, h) in sizes.items()])
    _write_lines(folder / "localization.txt", localization)


def _write_lines(path: pathlib.Path, lines: Iterable[str]) -> None:
  path.write_text("".join(line + "\n" for line in lines))
