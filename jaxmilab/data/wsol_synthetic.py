"""Synthetic WSOL set: one textured object per image on a real-photo background, with box and mask.

The default data of the WSOL smoke / quickstart configs (no network, deterministic). Each
example is drawn from `numpy.random.default_rng([tag, seed, index])`:

* background: a random `image_size` crop of one of the scikit-image photos
  (`jaxmilab.data.embedded`, downscaled so its shorter side is 2 x image_size); training uses
  the training photos, evaluation the held-out eval photos (chelsea, rocket). With
  `background="noise"` the background is smoothed colour noise instead.
* object: a class-specific shape (ellipse, rectangle, triangle, cross, ring, diamond, ...)
  filled with a class-specific colour and stripe orientation; random size (30-70% of the
  side per axis) and position, fully inside the image.
* box: the inclusive (x0, y0, x1, y1) bounding box of the object mask; mask: bool [S, S].

`layout` changes what is discriminative (experiments of jaxmilab.benchmarks.wsol_effects):

* "shapes" (default): as above; every object pixel carries the class (shape, colour, stripes).
* "part": a class-agnostic body (grey ellipse with a fixed texture, the same for all classes)
  with one class-coded patch (class colour and stripes) covering `part_fraction` (5-10 %) of
  the body at a random position inside it; box and mask cover the whole body. Only the patch
  tells the class, so a classifier's CAM tends to light the patch alone (CAM's failure mode).
* "context": the "shapes" object plus, with probability `context_prob`, a class-specific
  background band (a class-coloured bar beside the object); mask and box on the object only.
  Eval batches add "context" bool [B, S, S] (the band's pixels) for activation-on-context.

Batches: train {"image": uint8 [B, S, S, 3], "label": int32 [B]}; eval adds "boxes" int32
[B, max_boxes, 4] (zero-padded), "num_boxes" int32 [B] (= 1), "mask" bool [B, S, S] and
"valid". config.data keys (defaults): image_size (64), num_classes (4, at most 8),
num_train (2048 distinct training images, repeated with new shuffles), num_eval (128),
eval_batch_size (the training batch size), max_boxes (4), background ("photos" | "noise"),
eval_seed (0), worker_count (0), read_threads (2), layout ("shapes"), part_fraction
((0.05, 0.10)), context_prob (0.8).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from jaxmilab.data import embedded
from jaxmilab.data import transforms
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

_KEYS = ("image_size", "num_classes", "num_train", "num_eval", "eval_batch_size", "max_boxes",
         "background", "eval_seed", "worker_count", "read_threads", "layout", "part_fraction",
         "context_prob")
LAYOUTS = ("shapes", "part", "context")
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring", "diamond", "half_disc", "hexagon")
_COLORS = np.array([[230, 60, 50], [40, 170, 70], [50, 90, 230], [240, 200, 40], [200, 60, 220],
                    [40, 210, 220], [250, 140, 30], [240, 240, 240]], np.float32)
_TRAIN_TAG, _EVAL_TAG = 1, 2


def shape_mask(kind: str, height: int, width: int) -> np.ndarray:
  """bool [height, width] mask of `kind` inscribed in its box."""
  y, x = np.mgrid[0:height, 0:width].astype(np.float32)
  u = (x + 0.5) / width * 2 - 1  # [-1, 1]
  v = (y + 0.5) / height * 2 - 1
  if kind == "ellipse":
    m = u * u + v * v <= 1.0
  elif kind == "rectangle":
    m = np.ones((height, width), bool)
  elif kind == "triangle":
    m = np.abs(u) <= (v + 1) / 2
  elif kind == "cross":
    m = (np.abs(u) <= 0.35) | (np.abs(v) <= 0.35)
  elif kind == "ring":
    r = u * u + v * v
    m = (r <= 1.0) & (r >= 0.3)
  elif kind == "diamond":
    m = np.abs(u) + np.abs(v) <= 1.0
  elif kind == "half_disc":
    m = (u * u + (v + 1) ** 2 / 4 <= 1.0)
  elif kind == "hexagon":
    m = (np.abs(v) <= 1.0) & (np.abs(u) + 0.5 * np.abs(v) <= 1.0)
  else:
    raise ValueError(f"Unknown shape {kind!r}; use one of {SHAPES}.")
  return m


class SyntheticWSOL:
  """Random-access synthetic WSOL examples (key -> dict of numpy arrays)."""

  def __init__(self, backgrounds: tuple[np.ndarray, ...], *, size: int, num_classes: int,
               num_examples: int, seed: int, tag: int, with_boxes: bool, max_boxes: int,
               description: str, layout: str = "shapes", part_fraction=(0.05, 0.10),
               context_prob: float = 0.8):
    self.layout, self.part_fraction, self.context_prob = layout, tuple(part_fraction), float(context_prob)
    self.backgrounds = backgrounds
    self.size, self.num_classes, self.num_examples = size, num_classes, num_examples
    self.seed, self.tag, self.with_boxes, self.max_boxes = seed, tag, with_boxes, max_boxes
    self.description = description

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f"SyntheticWSOL({self.description}, size={self.size}, classes={self.num_classes}, "
            f"n={self.num_examples}, seed={self.seed}, tag={self.tag})")

  def _background(self, rng: np.random.Generator) -> np.ndarray:
    s = self.size
    if not self.backgrounds:
      noise = rng.random((s // 4 + 1, s // 4 + 1, 3)).astype(np.float32)
      return np.clip(cv2.resize(noise, (s, s), interpolation=cv2.INTER_CUBIC) * 255, 0, 255)
    photo = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
    top = int(rng.integers(0, photo.shape[0] - s + 1))
    left = int(rng.integers(0, photo.shape[1] - s + 1))
    return photo[top:top + s, left:left + s].astype(np.float32)

  def __getitem__(self, index: int) -> dict[str, Any]:
    rng = np.random.default_rng([self.tag, self.seed, int(index)])
    s = self.size
    label = int(rng.integers(self.num_classes))
    image = self._background(rng)  # [S, S, 3] float in [0, 255]
    h = int(round(s * rng.uniform(0.3, 0.7)))
    w = int(round(s * rng.uniform(0.3, 0.7)))
    top = int(rng.integers(0, s - h + 1))
    left = int(rng.integers(0, s - w + 1))
    kind = "ellipse" if self.layout == "part" else SHAPES[label % len(SHAPES)]
    local = shape_mask(kind, h, w)
    mask = np.zeros((s, s), bool)
    mask[top:top + h, left:left + w] = local
    # Class texture: stripes at a class-specific angle over the class colour.
    angle = np.pi * label / self.num_classes
    period = max(3.0, s / 10)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    texture = _COLORS[label % len(_COLORS)] * (0.55 + 0.45 * stripes[..., None])
    context = np.zeros((s, s), bool)
    if self.layout == "part":
      # Class-agnostic body texture (checker over grey), then the class patch inside the body.
      body = np.float32(140) + 40 * (((x // 4) + (y // 4)) % 2)[..., None]
      image = np.where(mask[..., None], body, image)
      area = float(rng.uniform(*self.part_fraction)) * mask.sum()
      side = max(2, int(round(np.sqrt(area))))
      ys, xs = np.nonzero(mask)
      for _ in range(100):  # a patch centre whose square lies inside the body
        k = int(rng.integers(len(ys)))
        t0, l0 = ys[k] - side // 2, xs[k] - side // 2
        if t0 >= 0 and l0 >= 0 and mask[t0:t0 + side, l0:l0 + side].all() and t0 + side <= s and l0 + side <= s:
          break
      patch = np.zeros((s, s), bool)
      patch[max(t0, 0):t0 + side, max(l0, 0):l0 + side] = True
      patch &= mask
      image = np.where(patch[..., None], texture, image)
    else:
      if self.layout == "context" and rng.random() < self.context_prob:
        # A class-coloured vertical band beside the object (left or right, whichever fits).
        width_band = max(2, s // 10)
        gap = max(1, s // 32)
        room_right = s - (left + w + gap)
        band_left = left + w + gap if room_right >= width_band else max(0, left - gap - width_band)
        context[top:top + h, band_left:band_left + width_band] = True
        context &= ~mask
        image = np.where(context[..., None], _COLORS[(label + 3) % len(_COLORS)][None, None] * 0.8, image)
      image = np.where(mask[..., None], texture, image)
    out = {"image": np.clip(np.round(image), 0, 255).astype(np.uint8), "label": np.int32(label)}
    if self.with_boxes:
      ys, xs = np.nonzero(mask)
      boxes = np.zeros((self.max_boxes, 4), np.int32)
      boxes[0] = (xs.min(), ys.min(), xs.max(), ys.max())
      out.update(boxes=boxes, num_boxes=np.int32(1), mask=mask)
      if self.layout == "context":
        out["context"] = context
    return out


def _photo_backgrounds(names: tuple[str, ...], size: int) -> tuple[np.ndarray, ...]:
  out = []
  for name in names:
    photo = embedded.read(name)  # [H, W, 3] uint8
    scale = 2 * size / min(photo.shape[:2])
    new = (max(size, int(round(photo.shape[1] * scale))), max(size, int(round(photo.shape[0] * scale))))
    out.append(cv2.resize(photo, new, interpolation=cv2.INTER_AREA))
  return tuple(out)


def create(config: Any, *, batch_size: int, seed: int, process_index: int,
           process_count: int) -> Datasets:
  """Train iterator and eval batches of the synthetic WSOL set (see module doc)."""
  transforms.check_keys(config, _KEYS, "wsol_synthetic")
  transforms.check_layout(seed, process_index, process_count)
  size = int(config.get("image_size", 64))
  num_classes = int(config.get("num_classes", 4))
  if not 2 <= num_classes <= len(SHAPES):
    raise ValueError(f"config.data.num_classes={num_classes}: use 2..{len(SHAPES)}.")
  if size < 16:
    raise ValueError(f"config.data.image_size={size}: use at least 16 pixels.")
  max_boxes = int(config.get("max_boxes", 4))
  if max_boxes < 1:
    raise ValueError(f"config.data.max_boxes={max_boxes} must be >= 1.")
  background = config.get("background", "photos")
  if background not in ("photos", "noise"):
    raise ValueError(f"config.data.background={background!r}: use 'photos' or 'noise'.")
  local_batch = transforms.per_process(batch_size, process_count, "config.batch_size")
  local_eval = transforms.per_process(config.get("eval_batch_size", None) or batch_size,
                                      process_count, "config.data.eval_batch_size")
  if background == "photos":
    train_bg = _photo_backgrounds(embedded.TRAIN_PHOTOS, size)
    eval_bg = _photo_backgrounds(embedded.EVAL_PHOTOS, size)
  else:
    train_bg = eval_bg = ()
  layout = config.get("layout", "shapes")
  if layout not in LAYOUTS:
    raise ValueError(f"config.data.layout={layout!r}: use one of {LAYOUTS}.")
  fraction = tuple(config.get("part_fraction", (0.05, 0.10)))
  if len(fraction) != 2 or not 0 < fraction[0] <= fraction[1] < 1:
    raise ValueError(f"config.data.part_fraction={fraction}: give (low, high) with 0 < low <= high < 1.")
  common = dict(size=size, num_classes=num_classes, max_boxes=max_boxes, layout=layout,
                part_fraction=fraction, context_prob=float(config.get("context_prob", 0.8)))
  train_source = SyntheticWSOL(train_bg, num_examples=int(config.get("num_train", 2048)), seed=seed,
                               tag=_TRAIN_TAG, with_boxes=False, description=f"train,{background}", **common)
  eval_source = SyntheticWSOL(eval_bg, num_examples=int(config.get("num_eval", 128)),
                              seed=int(config.get("eval_seed", 0)), tag=_EVAL_TAG, with_boxes=True,
                              description=f"eval,{background}", **common)
  train = transforms.train_iterator(
      train_source, [], batch_size=local_batch, seed=seed, process_index=process_index,
      process_count=process_count, worker_count=int(config.get("worker_count", 0)),
      read_threads=int(config.get("read_threads", 2)))

  def eval_batches():
    return transforms.eval_batches(len(eval_source), eval_source.__getitem__, batch_size=local_eval,
                                   process_index=process_index, process_count=process_count)

  info = DataInfo(num_classes=num_classes, class_names=SHAPES[:num_classes], image_channels=3,
                  extra={"image_size": size, "num_eval": len(eval_source), "has_masks": True})
  return Datasets(train=train, eval_batches=eval_batches, info=info)
