"""CUB-200-2011, ILSVRC and OpenImages30k from local folders with wsolevaluation's metadata.

A plain folder reader (grain pipelines), not a tfds builder: the wsolevaluation metadata
already lists every file, so there is nothing to download or prepare. Layout (exactly the
one clovaai/wsolevaluation's README and `dataset/prepare_*.sh` produce):

    <metadata_root>/<CUB|ILSVRC|OpenImages>/<train|val|test>/
        image_ids.txt      <image_id>                        (one per line)
        class_labels.txt   <image_id>,<class index>
        image_sizes.txt    <image_id>,<width>,<height>
        localization.txt   <image_id>,<x0>,<y0>,<x1>,<y1>    (CUB, ILSVRC; one line per box)
                           <image_id>,<mask>,<ignore mask>   (OpenImages; one line per mask)
    <data_root>/<CUB|ILSVRC|OpenImages>/<image_id>           the images
    <mask_root>/<OpenImages>/<mask path>                     the masks (default: data_root)
    <metadata_root>/CUBMask/<split>/localization.txt         optional CUB masks for PxAP:
                           <CUBMask image id>,<mask>,<ignore mask>, masks under
                           <mask_root>/CUBMask/<mask path> (BagCAMs / DA-WSOL `metadata/CUBMask`;
                           ids match CUB's by their last two components, class/file.jpg)

Protocol preprocessing (wsolevaluation data_loaders.py): train = resize to
resize_size x resize_size (aspect not kept), random crop_size crop, horizontal flip;
eval = resize to crop_size x crop_size; boxes scaled with int() truncation (`resize_bbox`);
masks resized with nearest neighbour, foreground = union of the instance masks > 0.5,
ignore = ignore mask minus foreground (evaluation.py `get_mask`).

config.data keys (defaults): dataset (required: CUB | ILSVRC | OpenImages), data_root,
metadata_root (required), mask_root (data_root), train_split (train), eval_split (test),
resize_size (256), crop_size (224), eval_batch_size (0 = the training batch size),
max_boxes (64), worker_count (0), read_threads (8).
"""

from __future__ import annotations

import collections
import os
from typing import Any

import cv2
import grain
import numpy as np
from PIL import Image

from jaxmilab.data import images
from jaxmilab.data import transforms
from jaxmilab.data.base import DataError
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

# The config.data keys besides the required `dataset`, with their defaults (module docstring).
CONFIG_DEFAULTS = dict(
    data_root="",
    metadata_root="",
    mask_root="",
    train_split="train",
    eval_split="test",
    resize_size=256,
    crop_size=224,
    eval_batch_size=0,
    max_boxes=64,
    worker_count=0,
    read_threads=8,
)
DATASETS = ("CUB", "ILSVRC", "OpenImages")


def _read_lines(path: str) -> list[list[str]]:
  if not os.path.isfile(path):
    raise DataError(
        f"wsolevaluation metadata file {path!r} is missing. Set config.data.metadata_root "
        f"to wsolevaluation's metadata/ folder (see jaxmilab/data/wsol_folders.py)."
    )
  with open(path, encoding="utf-8") as f:
    return [line.rstrip("\n").split(",") for line in f if line.strip()]


class Metadata:
  """One split's metadata: ids, labels, sizes, and boxes or mask paths."""

  def __init__(self, folder: str):
    self.folder = folder
    self.image_ids = [r[0] for r in _read_lines(os.path.join(folder, "image_ids.txt"))]
    self.labels = {r[0]: int(r[1]) for r in _read_lines(os.path.join(folder, "class_labels.txt"))}
    self.sizes: dict[str, tuple[int, int]] = {}
    self.boxes: dict[str, list[tuple[float, ...]]] = collections.defaultdict(list)
    self.masks: dict[str, list[str]] = collections.defaultdict(list)
    self.ignore: dict[str, str] = {}
    missing = [i for i in self.image_ids[:] if i not in self.labels]
    if missing:
      raise DataError(
          f"{folder}/class_labels.txt has no label for {missing[:3]} (and {len(missing)} in all)."
      )
    if os.path.isfile(os.path.join(folder, "image_sizes.txt")):
      self.sizes = {
          r[0]: (int(r[1]), int(r[2])) for r in _read_lines(os.path.join(folder, "image_sizes.txt"))
      }
    loc = os.path.join(folder, "localization.txt")
    if os.path.isfile(loc):
      for row in _read_lines(loc):
        if len(row) == 5:
          self.boxes[row[0]].append(tuple(float(v) for v in row[1:]))
        elif len(row) == 3:
          self.masks[row[0]].append(row[1])
          if row[2]:
            self.ignore[row[0]] = row[2]
        else:
          raise DataError(
              f"{loc}: line {row!r} is neither <id>,x0,y0,x1,y1 nor <id>,<mask>,<ignore>."
          )


def check_dataset(dataset: str) -> str:
  """`config.data.dataset`, one of DATASETS (ValueError naming the allowed ones otherwise)."""
  if dataset not in DATASETS:
    raise ValueError(f"config.data.dataset={dataset!r}: use one of {DATASETS}.")
  return dataset


def cub_key(image_id: str) -> str:
  """class/file of a CUB or CUBMask image id (CUBMask ids carry an extra leading folder)."""
  return "/".join(image_id.replace("\\", "/").split("/")[-2:])


def read_cub_masks(metadata_root: str, split: str) -> tuple[dict[str, list[str]], dict[str, str]]:
  """CUBMask metadata ({class/file: mask paths}, {class/file: ignore path}); empty when absent."""
  loc = os.path.join(metadata_root, "CUBMask", split, "localization.txt")
  masks: dict[str, list[str]] = collections.defaultdict(list)
  ignore: dict[str, str] = {}
  if not os.path.isfile(loc):
    return {}, {}
  for row in _read_lines(loc):
    if len(row) != 3:
      raise DataError(f"{loc}: line {row!r} is not <image id>,<mask>,<ignore mask>.")
    masks[cub_key(row[0])].append(row[1])
    if row[2]:
      ignore[cub_key(row[0])] = row[2]
  return dict(masks), ignore


def resize_box(box, image_size: tuple[int, int], size: int) -> list[int]:
  """wsolevaluation `resize_bbox`: scale (x0, y0, x1, y1) from (w, h) to size x size, int()."""
  w, h = image_size
  x0, y0, x1, y1 = box
  return [int(x0 * size / w), int(y0 * size / h), int(x1 * size / w), int(y1 * size / h)]


def eval_boxes(
    boxes, image_size: tuple[int, int], size: int, max_boxes: int
) -> dict[str, np.ndarray]:
  """{"boxes": int32 [max_boxes, 4] (`boxes` of a (w, h) image resized to size x size by
  `resize_box`, zero-padded), "num_boxes": int32}; the caller checks len(boxes) <= max_boxes."""
  padded = np.zeros((max_boxes, 4), np.int32)
  padded[: len(boxes)] = [resize_box(b, image_size, size) for b in boxes]
  return {"boxes": padded, "num_boxes": np.int32(len(boxes))}


def eval_mask(masks, ignore: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """{"mask": union of the bool instance `masks`, "ignore": `ignore` minus the mask, or zeros}
  (wsolevaluation evaluation.py `get_mask`)."""
  mask = np.any(masks, axis=0)
  return {"mask": mask, "ignore": np.zeros_like(mask) if ignore is None else ignore & ~mask}


def _load_mask(path: str, size: int) -> np.ndarray:
  mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
  if mask is None:
    raise DataError(f"Mask file {path!r} is missing or unreadable (config.data.mask_root).")
  return cv2.resize(np.float32(mask), (size, size), interpolation=cv2.INTER_NEAREST) > 0.5


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision Resize((size, size)) on a PIL image: bilinear."""
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


class FolderSource:
  """Random access to (decoded uint8 image, label) records of one split."""

  def __init__(self, image_dir: str, meta: Metadata):
    self.image_dir, self.meta = image_dir, meta

  def __len__(self) -> int:
    return len(self.meta.image_ids)

  def __repr__(self) -> str:
    return f"FolderSource({self.image_dir!r}, {self.meta.folder!r}, n={len(self)})"

  def __getitem__(self, index: int) -> dict[str, Any]:
    image_id = self.meta.image_ids[int(index)]
    image = images.read_image(os.path.join(self.image_dir, image_id))
    return {"image": image, "label": np.int32(self.meta.labels[image_id])}


class TrainAugment(grain.transforms.RandomMap):
  """Resize to resize x resize, random crop x crop, horizontal flip (p = 0.5)."""

  def __init__(self, resize: int, crop: int):
    self.resize, self.crop = resize, crop

  def random_map(self, element, rng: np.random.Generator):
    image = resize_image(element["image"], self.resize)
    top = int(rng.integers(0, self.resize - self.crop + 1))
    left = int(rng.integers(0, self.resize - self.crop + 1))
    image = image[top : top + self.crop, left : left + self.crop]
    if rng.random() < 0.5:
      image = image[:, ::-1]
    return {"image": np.ascontiguousarray(image), "label": element["label"]}


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches of a wsolevaluation dataset (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "wsol_folders",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      required=("dataset",),
  )
  dataset = check_dataset(opts.dataset)
  data_root, metadata_root = opts.data_root, opts.metadata_root
  for key, path in (("data_root", data_root), ("metadata_root", metadata_root)):
    if not os.path.isdir(os.path.join(path, dataset)):
      raise DataError(
          f"config.data.{key}={path!r} has no {dataset}/ folder. Point it at "
          f"wsolevaluation's dataset/ (images) or metadata/ folder."
      )
  mask_root = opts.mask_root or data_root
  resize, crop = int(opts.resize_size), int(opts.crop_size)
  max_boxes = int(opts.max_boxes)
  image_dir = os.path.join(data_root, dataset)
  train_meta = Metadata(os.path.join(metadata_root, dataset, opts.train_split))
  eval_meta = Metadata(os.path.join(metadata_root, dataset, opts.eval_split))
  if not eval_meta.boxes and not eval_meta.masks:
    raise DataError(
        f"{eval_meta.folder}/localization.txt lists no box and no mask: nothing to evaluate."
    )
  cub_masks, cub_ignore = {}, {}
  if dataset == "CUB":
    cub_masks, cub_ignore = read_cub_masks(metadata_root, opts.eval_split)
  train = layout.train(
      FolderSource(image_dir, train_meta),
      [TrainAugment(resize, crop)],
      worker_count=int(opts.worker_count),
      read_threads=int(opts.read_threads),
  )

  def make_example(i: int) -> dict[str, np.ndarray]:
    image_id = eval_meta.image_ids[i]
    image = images.read_image(os.path.join(image_dir, image_id))
    out = {"image": resize_image(image, crop), "label": np.int32(eval_meta.labels[image_id])}
    if eval_meta.boxes:
      boxes = eval_meta.boxes.get(image_id, [])
      if not boxes or len(boxes) > max_boxes:
        raise DataError(
            f"{eval_meta.folder}/localization.txt: image {image_id!r} has {len(boxes)} boxes; "
            f"need 1..config.data.max_boxes={max_boxes} (raise it for images with more boxes)."
        )
      size = eval_meta.sizes.get(image_id, (image.shape[1], image.shape[0]))
      out.update(eval_boxes(boxes, size, crop, max_boxes))
    masks = ignore = None
    if eval_meta.masks:
      masks = [os.path.join(mask_root, dataset, p) for p in eval_meta.masks.get(image_id, [])]
      if not masks:
        raise DataError(f"{eval_meta.folder}/localization.txt lists no mask for {image_id!r}.")
      if image_id in eval_meta.ignore:
        ignore = os.path.join(mask_root, dataset, eval_meta.ignore[image_id])
    if cub_masks:
      key = cub_key(image_id)
      if key not in cub_masks:
        raise DataError(
            f"{metadata_root}/CUBMask: localization.txt lists no mask for CUB image {image_id!r}."
        )
      masks = [os.path.join(mask_root, "CUBMask", p) for p in cub_masks[key]]
      ignore = os.path.join(mask_root, "CUBMask", cub_ignore[key]) if cub_ignore.get(key) else None
    if masks:
      out.update(
          eval_mask(
              [_load_mask(p, crop) for p in masks],
              None if ignore is None else _load_mask(ignore, crop),
          )
      )
    return out

  num_classes = max(max(train_meta.labels.values()), max(eval_meta.labels.values())) + 1
  info = DataInfo(
      num_classes=num_classes,
      image_channels=3,
      extra={
          "dataset": dataset,
          "num_eval": len(eval_meta.image_ids),
          "has_masks": bool(eval_meta.masks or cub_masks),
          "image_size": crop,
      },
  )
  return Datasets(
      train=train, eval_batches=layout.eval(len(eval_meta.image_ids), make_example), info=info
  )
