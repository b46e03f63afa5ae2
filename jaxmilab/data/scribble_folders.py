"""ScribbleSup from folders: VOC2012 images, SBD train_aug scribble PNGs, pseudo-label PNGs.

Layout under `config.data.root` (the released CDSP dataset/ScribbleSup/VOC2012 folder; every
name is a config key):

  <root>/JPEGImages/<id>.jpg                      image_dir
  <root>/pascal_2012_scribble/<id>.png            scribble_dir (train): class id per pixel,
                                                  0 background, 255 unlabeled; the robustness
                                                  sets are other folders (scribble_drop,
                                                  scribble_shrink) of the same kind
  <root>/bmp_pseudolabel/<id>.png                 pseudo_dir (train): pseudo-label of an image-
                                                  level WSSS method (BMP, SEAM, AFA, ToCo, ...),
                                                  class ids, 255 ignored
  <root>/SegmentationClassAug/<id>.png            gt_dir (val): full masks, 255 ignored
  <root>/ImageSets/SegmentationAug/train.txt      train_list / val_list: one example per line,
  <root>/ImageSets/SegmentationAug/val.txt        "<id>" or "<image path> <label path>" (the
                                                  id is the first token's file stem)

Label PNGs hold class indices (8-bit grey or palette PNGs, as VOC's); colour-coded RGB labels
are refused with a message. The distance maps D_s and D_c are computed in the pipeline
(jaxmilab/data/scribble_common.py), so no distance-map folders are needed.

Train batches: the paper's transforms to `crop_size`; eval batches: the image and mask padded
at the bottom / right to `eval_pad_size` (mean colour, 255), "valid". Missing folders, list
files or images stop the run before compiling, naming the path.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from jaxmilab import config_options
from jaxmilab.data import scribble_common
from jaxmilab.data import transforms
from jaxmilab.data.base import DataError
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

CONFIG_DEFAULTS = dict(
    root="",
    image_dir="JPEGImages",
    scribble_dir="pascal_2012_scribble",
    pseudo_dir="bmp_pseudolabel",
    gt_dir="SegmentationClassAug",
    train_list="ImageSets/SegmentationAug/train.txt",
    val_list="ImageSets/SegmentationAug/val.txt",
    num_classes=21,
    eval_pad_size=512,
    eval_batch_size=0,
    worker_count=0,
    read_threads=4,
    **scribble_common.TRAIN_DEFAULTS,
)
VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def read_ids(path: str) -> list[str]:
  """Example ids of a list file (module docstring)."""
  if not os.path.isfile(path):
    raise DataError(
        f"List file {path} not found; set config.data.train_list / val_list "
        f"(relative to config.data.root) to the SegmentationAug lists."
    )
  ids = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      token = line.strip().split()
      if token:
        ids.append(os.path.splitext(os.path.basename(token[0]))[0])
  if not ids:
    raise DataError(f"List file {path} lists no example.")
  return ids


def read_label(path: str) -> np.ndarray:
  """uint8 [H, W] class indices of a label PNG."""
  try:
    with Image.open(path) as im:
      if im.mode not in ("L", "P", "I", "I;16"):
        raise DataError(
            f"{path}: label PNGs must hold class indices (grey or palette), got mode "
            f"{im.mode!r}; convert colour-coded labels to indices first."
        )
      return np.asarray(im).astype(np.uint8)
  except (OSError, SyntaxError) as e:
    raise DataError(f"Cannot read label {path}: {e}") from e


def read_image(path: str) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except (OSError, SyntaxError) as e:
    raise DataError(f"Cannot read image {path}: {e}") from e


class ScribbleFolder:
  """Random-access examples: train {"image", "scribble", "pseudo"}, eval {"image", "gt"}
  (padded)."""

  def __init__(
      self,
      root: str,
      ids: list[str],
      *,
      image_dir: str,
      label_dirs: dict[str, str],
      eval_pad_size: int = 0,
  ):
    self.root, self.ids, self.image_dir, self.label_dirs = root, ids, image_dir, label_dirs
    self.eval_pad_size = eval_pad_size
    for folder in [image_dir, *label_dirs.values()]:
      if not os.path.isdir(os.path.join(root, folder)):
        raise DataError(
            f"Folder {os.path.join(root, folder)} not found (layout: "
            f"jaxmilab/data/scribble_folders.py)."
        )
    for i in ids:
      for path in self._paths(i).values():
        if not os.path.isfile(path):
          raise DataError(f"{path} is missing (listed example {i!r}).")

  def _paths(self, i: str) -> dict[str, str]:
    paths = {"image": os.path.join(self.root, self.image_dir, f"{i}.jpg")}
    paths.update({k: os.path.join(self.root, d, f"{i}.png") for k, d in self.label_dirs.items()})
    return paths

  def __len__(self) -> int:
    return len(self.ids)

  def __repr__(self) -> str:
    return f"ScribbleFolder({self.root}, n={len(self.ids)}, labels={self.label_dirs})"

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    paths = self._paths(self.ids[int(index)])
    out = {"image": read_image(paths["image"])}
    for key in self.label_dirs:
      out[key] = read_label(paths[key])
      if out[key].shape != out["image"].shape[:2]:
        raise DataError(
            f"{paths[key]} is {out[key].shape}, its image {paths['image']} is "
            f"{out['image'].shape[:2]}; label and image sizes must match."
        )
    if self.eval_pad_size:
      return scribble_common.pad_eval_example(out["image"], out["gt"], self.eval_pad_size)
    return out


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches of ScribbleSup folders (module docstring)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "scribble_folders",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  root = os.path.expanduser(str(opts.root))
  if not os.path.isdir(root):
    raise DataError(
        f"config.data.root={root!r} is not a folder; pass the ScribbleSup VOC2012 folder "
        f"(layout: jaxmilab/data/scribble_folders.py)."
    )
  image_dir = opts.image_dir
  train_source = ScribbleFolder(
      root,
      read_ids(os.path.join(root, opts.train_list)),
      image_dir=image_dir,
      label_dirs={"scribble": opts.scribble_dir, "pseudo": opts.pseudo_dir},
  )
  eval_source = ScribbleFolder(
      root,
      read_ids(os.path.join(root, opts.val_list)),
      image_dir=image_dir,
      label_dirs={"gt": opts.gt_dir},
      eval_pad_size=int(opts.eval_pad_size),
  )
  return scribblesup_datasets(opts, layout, train_source, eval_source)


def scribblesup_datasets(
    opts: config_options.Options, layout: transforms.Layout, train_source: Any, eval_source: Any
) -> Datasets:
  """The ScribbleSup pipelines over random-access train and (padded) eval examples, read from the
  folders or from the tfds records (`scribble_tfds`): the paper's training transforms
  (scribble_common, crop 465 unless config.data.crop_size), VOC class names for 21 classes;
  `opts`: the reader's options view of config.data."""
  train = layout.train(
      train_source,
      [scribble_common.train_transform(opts, 465)],
      worker_count=int(opts.worker_count),
      read_threads=int(opts.read_threads),
  )
  num_classes = int(opts.num_classes)
  names = (
      VOC_CLASSES if num_classes == len(VOC_CLASSES) else tuple(str(i) for i in range(num_classes))
  )
  info = DataInfo(
      num_classes=num_classes,
      class_names=names,
      image_channels=3,
      extra={"num_eval": len(eval_source), "ignore_index": scribble_common.IGNORE},
  )
  return Datasets(
      train=train, eval_batches=layout.eval(len(eval_source), eval_source.__getitem__), info=info
  )
