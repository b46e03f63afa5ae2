"""tfds builders `wsol_cub`, `wsol_ilsvrc`, `wsol_openimages`: wsolevaluation's three WSOL sets.

Nothing is downloaded: the images come from the datasets' own sites and the metadata from
github.com/clovaai/wsolevaluation. `manual_dir` is a wsolevaluation checkout after its
`dataset/prepare_*.sh` scripts ran (or any folder laid out the same way):

    <manual_dir>/metadata/<CUB|ILSVRC|OpenImages>/<train|val|test>/
        image_ids.txt      <image_id>                        (one per line)
        class_labels.txt   <image_id>,<class index>
        image_sizes.txt    <image_id>,<width>,<height>       (optional; OpenImages' is empty)
        localization.txt   <image_id>,<x0>,<y0>,<x1>,<y1>    (CUB, ILSVRC; one line per box)
                           <image_id>,<mask>,<ignore mask>   (OpenImages; one line per mask)
    <manual_dir>/dataset/<CUB|ILSVRC|OpenImages>/<image_id>  the images
    <manual_dir>/dataset/OpenImages/<mask>, .../<ignore mask>  the OpenImages masks

(wsolevaluation's `--data_root=dataset/ --metadata_root=metadata/ --mask_root=dataset/`;
symlinks are fine.) The metadata is parsed by `wsol_folders.Metadata`, the reader this
builder shares with the plain folder pipeline. Splits as in wsolevaluation: train
(train-weaksup), val (train-fullsup: CUBV2 / ImageNetV2 / OpenImages val), test. A val or
test image without a box (mask) in localization.txt is an error.

Features (all builders): image (uint8 RGB; an RGB JPEG file is stored byte for byte, any
other file is decoded as `images.read_image` does and stored as PNG, so pixels are exact),
label (ClassLabel: 200 / 1000 / 100 classes), image_id (the path in image_ids.txt).
wsol_cub, wsol_ilsvrc: bboxes int32 [N, 4] (x0, y0, x1, y1) in pixels of the original image,
exactly as localization.txt stores them (not tfds.features.BBoxFeature: the protocol scales
pixel boxes with int() truncation, `wsol_folders.resize_box`, which normalized floats would
not reproduce), image_size int32 [2] (width, height) from image_sizes.txt (the file's own size
when not listed), the size wsolevaluation scales boxes from. N = 0 where a train image has none.
wsol_openimages: masks uint8 [M, H, W, 1] and ignore_mask uint8 [0 or 1, H, W, 1], the files'
grayscale values as `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` gives them (wsolevaluation
`get_mask` resizes each to the eval size, nearest, and thresholds at 0.5); M = 0 on train.
(tf.data gives them stacked; `as_data_source` gives lists of M uint8 [H, W, 1] arrays.)
Masks of one image are stored at the first instance mask's size (a file of another size is
nearest-resized to it; the released masks of one image share a size). wsolevaluation gives
no CUB masks, so CUB has boxes only.

    builder = wsol_tfds.WsolCub(data_dir=..., file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))

`create` (config.data.name = "wsol_tfds") trains and evaluates from the prepared
array_record files with the same protocol preprocessing as `wsol_folders` (module doc
there). config.data keys (defaults): dataset (required: CUB | ILSVRC | OpenImages),
data_dir (required: the tfds data_dir the builder was prepared in), train_split (train),
eval_split (test), resize_size (256), crop_size (224), eval_batch_size (the training batch
size), max_boxes (64), worker_count (0), read_threads (8).
"""

from __future__ import annotations

import io
import os
from typing import Any, Iterator

import cv2
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from jaxmilab.data import images
from jaxmilab.data import transforms
from jaxmilab.data import wsol_folders
from jaxmilab.data.base import DataError
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
SPLITS = ("train", "val", "test")  # wsolevaluation data_loaders._SPLITS
METADATA_FILES = ("image_ids.txt", "class_labels.txt", "localization.txt")
# Class counts: wsolevaluation README (CUB 200, ImageNet 1000, OpenImages30k 100 classes).
NUM_CLASSES = {"CUB": 200, "ILSVRC": 1000, "OpenImages": 100}
# The config.data keys of `create` besides the required `dataset`, with their defaults.
CONFIG_DEFAULTS = dict(
    data_dir="",
    train_split="train",
    eval_split="test",
    resize_size=256,
    crop_size=224,
    eval_batch_size=0,
    max_boxes=64,
    worker_count=0,
    read_threads=8,
)


def check_manual_dir(manual_dir: str, dataset: str) -> tuple[str, str]:
  """(image folder, metadata folder) of `dataset` in manual_dir; DataError naming what is
  missing."""
  layout = (
      f"<manual_dir>/metadata/{dataset}/<train|val|test>/{{{','.join(METADATA_FILES)}}} and "
      f"<manual_dir>/dataset/{dataset}/<image_id> (see jaxmilab/data/wsol_tfds.py)"
  )
  if not manual_dir or not os.path.isdir(manual_dir):
    raise DataError(
        f"{dataset} manual_dir {manual_dir!r} does not exist. Pass a wsolevaluation "
        f"checkout (after dataset/prepare_*.sh) as manual_dir; expected layout {layout}."
    )
  image_dir = os.path.join(manual_dir, "dataset", dataset)
  meta_dir = os.path.join(manual_dir, "metadata", dataset)
  for folder in (meta_dir, image_dir) + tuple(os.path.join(meta_dir, s) for s in SPLITS):
    if not os.path.isdir(folder):
      raise DataError(
          f"{dataset} manual_dir: folder {folder!r} is missing. Expected layout {layout}."
      )
  for split in SPLITS:
    for name in METADATA_FILES:
      path = os.path.join(meta_dir, split, name)
      if not os.path.isfile(path):
        raise DataError(
            f"{dataset} manual_dir: metadata file {path!r} is missing. Copy wsolevaluation's "
            f"metadata/{dataset}/{split}/ there. Expected layout {layout}."
        )
  return image_dir, meta_dir


def _image_bytes(path: str) -> bytes:
  """The file itself if it is an RGB JPEG, else its `images.read_image` pixels as PNG."""
  if not os.path.isfile(path):
    raise DataError(
        f"Image {path!r} (listed in image_ids.txt) is missing under manual_dir/dataset/. "
        f"Extract the images there (wsolevaluation dataset/prepare_*.sh) or fix the metadata."
    )
  try:
    with Image.open(path) as im:
      keep = im.format == "JPEG" and im.mode == "RGB"
  except (OSError, ValueError, SyntaxError) as e:
    raise DataError(f"Cannot decode image {path!r} ({e}): re-extract it.") from e
  if keep:
    with open(path, "rb") as f:
      return f.read()
  buf = io.BytesIO()
  Image.fromarray(images.read_image(path)).save(buf, format="PNG")
  return buf.getvalue()


def _read_gray(path: str) -> np.ndarray:
  """wsolevaluation get_mask's read: cv2 grayscale uint8 [H, W]."""
  mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE) if os.path.isfile(path) else None
  if mask is None:
    raise DataError(
        f"Mask file {path!r} (listed in localization.txt) is missing or unreadable. Extract "
        f"wsolevaluation's OpenImages masks into manual_dir/dataset/OpenImages/."
    )
  return mask


def _png(mask: np.ndarray) -> bytes:
  """Lossless PNG of a uint8 [H, W] mask (encoded here: tfds' own encoder builds a TF graph)."""
  ok, data = cv2.imencode(".png", mask)
  if not ok:
    raise DataError(f"cv2 could not PNG-encode a mask of shape {mask.shape}.")
  return data.tobytes()


class _WsolBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared parts: manual_dir layout check, splits, image/label features."""

  DATASET = ""  # CUB | ILSVRC | OpenImages
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "wsolevaluation metadata layout (see module docstring)."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS  # the module docstring
  # Nothing is downloaded, so no URL checksums (also keeps tfds from looking for a checksums
  # file next to the code, which needs the optional `importlib_resources`); as in uir2p5m.py.
  url_infos = None

  def _extra_features(self) -> dict[str, Any]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES[self.DATASET]),
                "image_id": tfds.features.Text(),
                **self._extra_features(),
            }
        ),
        supervised_keys=("image", "label"),
        homepage="https://github.com/clovaai/wsolevaluation",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as e:  # tfds: manual_dir missing or empty
      raise DataError(f"{self.DATASET} manual_dir does not exist or is empty ({e}).") from e
    image_dir, meta_dir = check_manual_dir(manual_dir, self.DATASET)
    metas = {s: wsol_folders.Metadata(os.path.join(meta_dir, s)) for s in SPLITS}
    return {s: self._generate_examples(image_dir, metas[s], s != "train") for s in SPLITS}

  def _localization(
      self, image_dir: str, meta: wsol_folders.Metadata, image_id: str, required: bool
  ) -> dict[str, Any]:
    raise NotImplementedError

  def _generate_examples(
      self, image_dir: str, meta: wsol_folders.Metadata, required: bool
  ) -> Iterator[tuple[str, dict[str, Any]]]:
    num_classes = NUM_CLASSES[self.DATASET]
    for image_id in meta.image_ids:
      path = os.path.join(image_dir, image_id)
      if not 0 <= meta.labels[image_id] < num_classes:
        raise DataError(
            f"{meta.folder}/class_labels.txt: {image_id!r} has class {meta.labels[image_id]}; "
            f"{self.DATASET} has classes 0..{num_classes - 1}. Fix the metadata."
        )
      yield image_id, {
          "image": _image_bytes(path),
          "label": meta.labels[image_id],
          "image_id": image_id,
          **self._localization(image_dir, meta, image_id, required),
      }


class _BoxBuilder(_WsolBuilder, skip_registration=True):
  """CUB / ILSVRC: pixel boxes and the size they refer to."""

  def _extra_features(self) -> dict[str, Any]:
    return {
        "bboxes": tfds.features.Tensor(shape=(None, 4), dtype=np.int32),
        "image_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
    }

  def _localization(self, image_dir, meta, image_id, required):
    where = os.path.join(meta.folder, "localization.txt")
    boxes = meta.boxes.get(image_id, [])
    if required and not boxes:
      raise DataError(f"{where} lists no box for {image_id!r}: every val/test image needs one.")
    if any(v != int(v) for b in boxes for v in b):
      raise DataError(f"{where}: boxes of {image_id!r} are not integer pixels: {boxes}.")
    size = meta.sizes.get(image_id)
    if size is None:
      height, width = images.image_size(os.path.join(image_dir, image_id))
      size = (width, height)
    return {
        "bboxes": np.asarray(boxes, np.int32).reshape(-1, 4),
        "image_size": np.asarray(size, np.int32),
    }


class WsolCub(_BoxBuilder):
  """CUB-200-2011 (train) + CUBV2 (val) with wsolevaluation's metadata: 200 classes, boxes."""

  DATASET = "CUB"


class WsolIlsvrc(_BoxBuilder):
  """ILSVRC 2012 train / ImageNetV2 (val) / ILSVRC val (test), wsolevaluation metadata, boxes."""

  DATASET = "ILSVRC"


class WsolOpenimages(_WsolBuilder):
  """OpenImages30k (wsolevaluation): 100 classes, instance masks and ignore masks."""

  DATASET = "OpenImages"

  def _extra_features(self) -> dict[str, Any]:
    mask = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
    return {"masks": tfds.features.Sequence(mask), "ignore_mask": tfds.features.Sequence(mask)}

  def _localization(self, image_dir, meta, image_id, required):
    paths = meta.masks.get(image_id, [])
    if required and not paths:
      raise DataError(
          f"{os.path.join(meta.folder, 'localization.txt')} lists no mask for {image_id!r}: "
          f"every val/test image needs one."
      )
    masks = [_read_gray(os.path.join(image_dir, p)) for p in paths]
    ignore = (
        [_read_gray(os.path.join(image_dir, meta.ignore[image_id]))]
        if image_id in meta.ignore
        else []
    )
    if masks:
      height, width = masks[0].shape
      same = (
          lambda m: m
          if m.shape == (height, width)
          else cv2.resize(m, (width, height), interpolation=cv2.INTER_NEAREST)
      )
      masks, ignore = [same(m) for m in masks], [same(m) for m in ignore]
    return {"masks": [_png(m) for m in masks], "ignore_mask": [_png(m) for m in ignore]}


# One builder per name of wsol_folders.DATASETS.
BUILDERS = {"CUB": WsolCub, "ILSVRC": WsolIlsvrc, "OpenImages": WsolOpenimages}


# ------------------------------------------------------------------------- training pipeline


def _decode(data: bytes) -> np.ndarray:
  """Stored image bytes -> uint8 RGB [H, W, 3], with Pillow as `wsol_folders` decodes files."""
  with Image.open(io.BytesIO(data)) as im:
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), np.uint8))


class TfdsSource:
  """Random access to {"image": uint8 [H, W, 3], "label"} of a prepared split (grain source)."""

  def __init__(self, source: Any):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"TfdsSource({self.source!r})"

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.source[int(index)]
    return {"image": _decode(record["image"]), "label": np.int32(record["label"])}


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """wsolevaluation get_mask: nearest resize of the grayscale values, then > 0.5."""
  return cv2.resize(np.float32(mask[..., 0]), (size, size), interpolation=cv2.INTER_NEAREST) > 0.5


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches from a prepared wsol_* tfds dataset (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "wsol_tfds",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
      required=("dataset",),
  )
  dataset = wsol_folders.check_dataset(opts.dataset)
  data_dir = opts.data_dir
  builder = BUILDERS[dataset](data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    raise DataError(
        f"{builder.name} is not prepared in config.data.data_dir={data_dir!r}. Run "
        f"wsol_tfds.{type(builder).__name__}(data_dir=..., file_format='array_record')"
        f".download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))."
    )
  skip = {"image": tfds.decode.SkipDecoding()}
  train_split, eval_split = opts.train_split, opts.eval_split
  train_source = builder.as_data_source(train_split, decoders=skip)
  eval_source = builder.as_data_source(eval_split, decoders=skip)
  resize, crop = int(opts.resize_size), int(opts.crop_size)
  max_boxes = int(opts.max_boxes)
  train = layout.train(
      TfdsSource(train_source),
      [wsol_folders.TrainAugment(resize, crop)],
      worker_count=int(opts.worker_count),
      read_threads=int(opts.read_threads),
  )
  has_masks = dataset == "OpenImages"

  def make_example(i: int) -> dict[str, np.ndarray]:
    record = eval_source[i]
    image = wsol_folders.resize_image(_decode(record["image"]), crop)
    out = {"image": image, "label": np.int32(record["label"])}
    if has_masks:
      ignore = record["ignore_mask"]
      out.update(
          wsol_folders.eval_mask(
              [_resize_mask(m, crop) for m in record["masks"]],
              _resize_mask(ignore[0], crop) if len(ignore) else None,
          )
      )
    else:
      boxes = record["bboxes"]
      if len(boxes) > max_boxes:
        image_id = record["image_id"].decode()
        raise DataError(
            f"{builder.name}/{eval_split}: image {image_id!r} has {len(boxes)} boxes; "
            f"raise config.data.max_boxes={max_boxes}."
        )
      out.update(wsol_folders.eval_boxes(boxes, tuple(record["image_size"]), crop, max_boxes))
    return out

  info = DataInfo(
      num_classes=NUM_CLASSES[dataset],
      image_channels=3,
      extra={
          "dataset": dataset,
          "num_eval": len(eval_source),
          "has_masks": has_masks,
          "image_size": crop,
      },
  )
  return Datasets(train=train, eval_batches=layout.eval(len(eval_source), make_example), info=info)
