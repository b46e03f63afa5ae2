"""tfds builder `scribblesup` (ScribbleSup: VOC2012 + SBD train_aug scribbles + pseudo-labels).

Nothing is downloaded. `manual_dir` is the folder that `jaxmilab/data/scribble_folders.py`
reads (the released CDSP dataset/ScribbleSup/VOC2012 layout):

    <manual_dir>/JPEGImages/<id>.jpg
    <manual_dir>/<scribble_dir>/<id>.png     pascal_2012_scribble | scribble_drop | scribble_shrink
    <manual_dir>/<pseudo_dir>/<id>.png       bmp_pseudolabel (or any WSSS pseudo-label folder)
    <manual_dir>/SegmentationClassAug/<id>.png
    <manual_dir>/ImageSets/SegmentationAug/{train,val}.txt

Builder configs: "full" (pascal_2012_scribble + bmp_pseudolabel, the paper's main setting),
"drop" (scribble_drop), "shrink" (scribble_shrink); `ScribbleSupConfig(name=..., scribble_dir=...,
pseudo_dir=...)` makes others (e.g. SEAM / AFA pseudo-labels). Features: image (the JPEG bytes as
they are), scribble, pseudo, gt (uint8 [H, W, 1] PNGs, the label files' class indices exactly);
train examples carry scribble + pseudo and a gt of 255s, val examples gt and scribble / pseudo of
255s (one feature set for both splits). The files are read (and checked) by
`scribble_folders.ScribbleFolder`, the reader the folder pipeline uses.

    builder = scribble_tfds.Scribblesup(config="full", data_dir=..., file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))

`create` (config.data.name = "scribble_tfds") trains and evaluates from the prepared files with
the pipeline of `scribble_folders` (distance maps, the paper's transforms, eval padding).
config.data keys: data_dir (required), builder_config ("full"), num_classes (21),
eval_pad_size (512), eval_batch_size, worker_count, read_threads, and
scribble_common.TRAIN_DEFAULTS.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import cv2
import numpy as np
import tensorflow_datasets as tfds

from jaxmilab.data import scribble_common
from jaxmilab.data import scribble_folders
from jaxmilab.data import transforms
from jaxmilab.data.base import DataError
from jaxmilab.data.base import Datasets

MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
CONFIG_DEFAULTS = dict(
    data_dir="",
    builder_config="full",
    num_classes=21,
    eval_pad_size=512,
    eval_batch_size=0,
    worker_count=0,
    read_threads=4,
    **scribble_common.TRAIN_DEFAULTS,
)
LABEL_KEYS = ("scribble", "pseudo", "gt")


@dataclasses.dataclass
class ScribbleSupConfig(tfds.core.BuilderConfig):
  scribble_dir: str = "pascal_2012_scribble"
  pseudo_dir: str = "bmp_pseudolabel"


def _png(label: np.ndarray) -> bytes:
  """Lossless PNG of uint8 [H, W] (encoded here: tfds' own encoder builds a TF graph)."""
  ok, data = cv2.imencode(".png", label)
  if not ok:
    raise DataError(f"cv2 could not PNG-encode a label of shape {label.shape}.")
  return data.tobytes()


def _decode(data: bytes, flags: int) -> np.ndarray:
  out = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  if out is None:
    raise DataError("scribblesup: a stored image could not be decoded; rebuild the dataset.")
  return out


class Scribblesup(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ScribbleSup train (scribbles + pseudo-labels) and val (full masks)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "ScribbleSup folders of the released CDSP code (module docstring)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      ScribbleSupConfig(name="full", description="pascal_2012_scribble + bmp_pseudolabel"),
      ScribbleSupConfig(
          name="drop", scribble_dir="scribble_drop", description="scribble_drop + bmp_pseudolabel"
      ),
      ScribbleSupConfig(
          name="shrink",
          scribble_dir="scribble_shrink",
          description="scribble_shrink + bmp_pseudolabel",
      ),
  ]
  url_infos = None  # nothing is downloaded (no checksums file), as in wsol_tfds / uir2p5m

  def _info(self) -> tfds.core.DatasetInfo:
    label = lambda: tfds.features.Image(shape=(None, None, 1), encoding_format="png")
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "scribble": label(),
                "pseudo": label(),
                "gt": label(),
                "id": tfds.features.Text(),
            }
        ),
        homepage="https://github.com/Zxl19990529/Class-driven-Scribble-Promotion-Network",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    try:
      root = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # tfds: manual_dir missing or empty
      raise DataError(f"scribblesup manual_dir does not exist or is empty ({e}).") from e
    lists = os.path.join(root, "ImageSets", "SegmentationAug")
    cfg = self.builder_config
    train = scribble_folders.ScribbleFolder(
        root,
        scribble_folders.read_ids(os.path.join(lists, "train.txt")),
        image_dir="JPEGImages",
        label_dirs={"scribble": cfg.scribble_dir, "pseudo": cfg.pseudo_dir},
    )
    val = scribble_folders.ScribbleFolder(
        root,
        scribble_folders.read_ids(os.path.join(lists, "val.txt")),
        image_dir="JPEGImages",
        label_dirs={"gt": "SegmentationClassAug"},
    )
    return {"train": self._generate_examples(train), "val": self._generate_examples(val)}

  def _generate_examples(
      self, folder: scribble_folders.ScribbleFolder
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    # The folder reader decodes and checks sizes / modes; the JPEG is stored byte for byte.
    for index, image_id in enumerate(folder.ids):
      example = folder[index]
      with open(os.path.join(folder.root, folder.image_dir, f"{image_id}.jpg"), "rb") as f:
        jpeg = f.read()
      blank = np.full(example["image"].shape[:2], scribble_common.IGNORE, np.uint8)
      labels = {k: _png(example.get(k, blank)[..., None]) for k in LABEL_KEYS}
      yield image_id, {"image": jpeg, "id": image_id, **labels}


class TfdsSource:
  """Random access to decoded records: train {"image", "scribble", "pseudo"}, eval padded
  {"image", "gt"}."""

  def __init__(self, source: Any, train: bool, eval_pad_size: int = 512):
    self.source, self.train, self.eval_pad_size = source, train, eval_pad_size

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"TfdsSource({self.source!r}, train={self.train})"

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self.source[int(index)]
    image = np.ascontiguousarray(_decode(record["image"], cv2.IMREAD_COLOR)[..., ::-1])
    if self.train:
      return {
          "image": image,
          "scribble": _decode(record["scribble"], cv2.IMREAD_UNCHANGED),
          "pseudo": _decode(record["pseudo"], cv2.IMREAD_UNCHANGED),
      }
    return scribble_common.pad_eval_example(
        image, _decode(record["gt"], cv2.IMREAD_UNCHANGED), self.eval_pad_size
    )


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches from a prepared `scribblesup` dataset (module docstring)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "scribble_tfds",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  data_dir = opts.data_dir
  builder = Scribblesup(config=opts.builder_config, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    raise DataError(
        f"scribblesup/{builder.builder_config.name} is not prepared in config.data.data_dir="
        f"{data_dir!r}. Run scribble_tfds.Scribblesup(config=..., data_dir=..., file_format="
        f"'array_record').download_and_prepare(download_config=tfds.download.DownloadConfig("
        f"manual_dir=<ScribbleSup VOC2012 folder>))."
    )
  skip = {k: tfds.decode.SkipDecoding() for k in ("image",) + LABEL_KEYS}
  train_source = TfdsSource(builder.as_data_source("train", decoders=skip), True)
  eval_source = TfdsSource(
      builder.as_data_source("val", decoders=skip), False, int(opts.eval_pad_size)
  )
  return scribble_folders.scribblesup_datasets(opts, layout, train_source, eval_source)
