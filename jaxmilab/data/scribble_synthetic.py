"""Synthetic scribble-supervised segmentation set (the offline default of configs/cdsp.py).

Each example is drawn from `numpy.random.default_rng([tag, seed, index])`:

* image: a random crop of a scikit-image photo (`jaxmilab.data.embedded`: training photos for
  training, the held-out photos for evaluation) or smoothed colour noise; 1..`max_objects`
  objects of classes 1..K-1 (K = num_classes, 0 = background), class c drawn as the shape
  `wsol_synthetic.SHAPES[c - 1]` (25-55% of the side), filled with the class colour
  (+-25 jitter per channel) and stripes at a class angle; later objects occlude earlier ones.
* gt: the full class map (uint8; evaluation uses it, training never sees it).
* scribble: one straight stroke (1-2 px) per object through a random interior point at a
  random angle, clipped to the object eroded by ~S/16; two strokes on the background, clipped
  to the background eroded likewise; 255 elsewhere. Variants (`scribble_variant`): "full",
  "drop" (each object's stroke removed with probability `drop_rate`), "shrink" (strokes
  shortened to `shrink_ratio` of their length around their middle), mimicking ScribbleSup's
  scribble_drop / scribble_shrink robustness sets.
* pseudo: an imperfect full label in the manner of image-level WSSS pseudo-labels: each object
  eroded or dilated by 1..S/10 px, with probability 0.5 a missing disc (30-50% of the object's
  size), with probability `false_positive_rate` a false-positive blob of the class on the
  background.

Batches: train {"image" uint8 [B, S, S, 3], "scribble" uint8 [B, S, S], "pseudo" uint8,
"dist_scribble" float32, "dist_contour" float32} after the training transforms of
`jaxmilab.data.scribble_common` (crop `crop_size`, default S); eval {"image", "gt", "valid"}.
config.data keys (defaults): image_size (64), num_classes (5, at most 9), max_objects (2),
num_train (1024), num_eval (64), eval_batch_size (0 = the batch size), background ("photos" |
"noise"), scribble_variant ("full"), drop_rate (0.5), shrink_ratio (0.5),
false_positive_rate (0.3), eval_seed (0), worker_count (0), read_threads (2), and
scribble_common.TRAIN_CONFIG_KEYS.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from jaxmilab.data import embedded
from jaxmilab.data import scribble_common
from jaxmilab.data import transforms
from jaxmilab.data import wsol_synthetic
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

CONFIG_DEFAULTS = dict(image_size=64, num_classes=5, max_objects=2, num_train=1024, num_eval=64,
                       eval_batch_size=0, background="photos", scribble_variant="full", drop_rate=0.5,
                       shrink_ratio=0.5, false_positive_rate=0.3, eval_seed=0, worker_count=0, read_threads=2,
                       **scribble_common.TRAIN_DEFAULTS)
_KEYS = tuple(CONFIG_DEFAULTS)
VARIANTS = ("full", "drop", "shrink")
_TRAIN_TAG, _EVAL_TAG = 11, 12
IGNORE = scribble_common.IGNORE


def _stroke(shape: tuple[int, int], allowed: np.ndarray, rng: np.random.Generator, ratio: float
            ) -> np.ndarray:
  """bool mask: a straight stroke through a random allowed pixel, clipped to `allowed`."""
  ys, xs = np.nonzero(allowed)
  if ys.size == 0:
    return np.zeros(shape, bool)
  i = int(rng.integers(ys.size))
  cy, cx = float(ys[i]), float(xs[i])
  angle = float(rng.uniform(0, np.pi))
  half = max(shape) * ratio
  p0 = (int(round(cx - half * np.cos(angle))), int(round(cy - half * np.sin(angle))))
  p1 = (int(round(cx + half * np.cos(angle))), int(round(cy + half * np.sin(angle))))
  canvas = np.zeros(shape, np.uint8)
  cv2.line(canvas, p0, p1, 1, int(rng.integers(1, 3)))
  stroke = (canvas > 0) & allowed
  if ratio < 1.0:  # shrink: keep the stroke's middle part (its pixels nearest the centre)
    sy, sx = np.nonzero(stroke)
    if sy.size:
      t = (sx - cx) * np.cos(angle) + (sy - cy) * np.sin(angle)
      mid = 0.5 * (t.min() + t.max())
      keep = np.abs(t - mid) <= ratio * 0.5 * (t.max() - t.min()) + 0.5
      stroke = np.zeros(shape, bool)
      stroke[sy[keep], sx[keep]] = True
  return stroke


class SyntheticScribbles:
  """Random-access synthetic examples (index -> dict of numpy arrays)."""

  def __init__(self, backgrounds, *, size: int, num_classes: int, max_objects: int, num_examples: int,
               seed: int, tag: int, train: bool, variant: str = "full", drop_rate: float = 0.5,
               shrink_ratio: float = 0.5, false_positive_rate: float = 0.3):
    self.backgrounds = backgrounds
    self.size, self.num_classes, self.max_objects = size, num_classes, max_objects
    self.num_examples, self.seed, self.tag, self.train = num_examples, seed, tag, train
    self.variant, self.drop_rate, self.shrink_ratio = variant, drop_rate, shrink_ratio
    self.false_positive_rate = false_positive_rate

  def __len__(self) -> int:
    return self.num_examples

  def __repr__(self) -> str:
    return (f"SyntheticScribbles(size={self.size}, classes={self.num_classes}, n={self.num_examples}, "
            f"seed={self.seed}, tag={self.tag}, variant={self.variant})")

  def _background(self, rng):
    s = self.size
    if not self.backgrounds:
      noise = rng.random((s // 4 + 1, s // 4 + 1, 3)).astype(np.float32)
      return np.clip(cv2.resize(noise, (s, s), interpolation=cv2.INTER_CUBIC) * 255, 0, 255)
    photo = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
    top = int(rng.integers(0, photo.shape[0] - s + 1))
    left = int(rng.integers(0, photo.shape[1] - s + 1))
    return photo[top:top + s, left:left + s].astype(np.float32)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.tag, self.seed, int(index)])
    s = self.size
    image = self._background(rng)
    gt = np.zeros((s, s), np.uint8)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    n = int(rng.integers(1, self.max_objects + 1))
    classes = [int(c) for c in rng.integers(1, self.num_classes, size=n)]
    for c in classes:
      h = int(round(s * rng.uniform(0.25, 0.55)))
      w = int(round(s * rng.uniform(0.25, 0.55)))
      top, left = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
      mask = np.zeros((s, s), bool)
      mask[top:top + h, left:left + w] = wsol_synthetic.shape_mask(
          wsol_synthetic.SHAPES[(c - 1) % len(wsol_synthetic.SHAPES)], h, w)
      angle = np.pi * c / self.num_classes
      stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / max(3.0, s / 10))
      colour = wsol_synthetic._COLORS[(c - 1) % len(wsol_synthetic._COLORS)] + rng.uniform(-25, 25, 3)  # pylint: disable=protected-access
      texture = colour * (0.55 + 0.45 * stripes[..., None])
      image = np.where(mask[..., None], texture, image)
      gt[mask] = c
    out = {"image": np.clip(np.round(image), 0, 255).astype(np.uint8)}
    if not self.train:
      out["gt"] = gt
      return out
    k = max(1, s // 16)
    kernel = np.ones((2 * k + 1, 2 * k + 1), np.uint8)
    ratio = self.shrink_ratio if self.variant == "shrink" else 1.0
    scribble = np.full((s, s), IGNORE, np.uint8)
    pseudo = np.zeros((s, s), np.uint8)
    for c in sorted(set(classes)):
      obj = gt == c
      if not obj.any():  # fully occluded by a later object: the class is absent from the image
        continue
      inner = cv2.erode(obj.astype(np.uint8), kernel) > 0
      if not inner.any():
        inner = obj
      stroke = _stroke((s, s), inner, rng, ratio)
      if not (self.variant == "drop" and rng.random() < self.drop_rate):
        scribble[stroke] = c
      # Pseudo-label: eroded or dilated, maybe with a hole, maybe a false positive.
      r = int(rng.integers(1, max(2, s // 10) + 1))
      ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
      op = cv2.erode if rng.random() < 0.5 else cv2.dilate
      p = op(obj.astype(np.uint8), ker) > 0
      if rng.random() < 0.5:
        ys, xs = np.nonzero(obj)
        i = int(rng.integers(ys.size))
        radius = rng.uniform(0.3, 0.5) * np.sqrt(ys.size)
        p &= (y - ys[i]) ** 2 + (x - xs[i]) ** 2 > radius ** 2
      if rng.random() < self.false_positive_rate:
        cy, cx = rng.uniform(0, s, 2)
        ry, rx = rng.uniform(0.05, 0.15, 2) * s
        p |= ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
      pseudo[p] = c
    background = cv2.erode((gt == 0).astype(np.uint8), kernel) > 0
    for _ in range(2):
      scribble[_stroke((s, s), background, rng, ratio)] = 0
    out.update(scribble=scribble, pseudo=pseudo)
    return out


def create(config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int) -> Datasets:
  """Train iterator and eval batches of the synthetic scribble set (module docstring)."""
  transforms.check_keys(config, _KEYS, "scribble_synthetic")
  transforms.check_layout(seed, process_index, process_count)
  size = int(config.get("image_size", 64))
  num_classes = int(config.get("num_classes", 5))
  if not 2 <= num_classes <= len(wsol_synthetic.SHAPES) + 1:
    raise ValueError(f"config.data.num_classes={num_classes}: use 2..{len(wsol_synthetic.SHAPES) + 1} "
                     f"(background + up to {len(wsol_synthetic.SHAPES)} shapes).")
  if size < 24:
    raise ValueError(f"config.data.image_size={size}: use at least 24 pixels.")
  variant = config.get("scribble_variant", "full")
  if variant not in VARIANTS:
    raise ValueError(f"config.data.scribble_variant={variant!r}: use one of {VARIANTS}.")
  background = config.get("background", "photos")
  if background not in ("photos", "noise"):
    raise ValueError(f"config.data.background={background!r}: use 'photos' or 'noise'.")
  local_batch = transforms.per_process(batch_size, process_count, "config.batch_size")
  local_eval = transforms.per_process(config.get("eval_batch_size", None) or batch_size, process_count,
                                      "config.data.eval_batch_size")
  if background == "photos":
    train_bg = wsol_synthetic._photo_backgrounds(embedded.TRAIN_PHOTOS, size)  # pylint: disable=protected-access
    eval_bg = wsol_synthetic._photo_backgrounds(embedded.EVAL_PHOTOS, size)  # pylint: disable=protected-access
  else:
    train_bg = eval_bg = ()
  common = dict(size=size, num_classes=num_classes, max_objects=int(config.get("max_objects", 2)))
  train_source = SyntheticScribbles(
      train_bg, num_examples=int(config.get("num_train", 1024)), seed=seed, tag=_TRAIN_TAG, train=True,
      variant=variant, drop_rate=float(config.get("drop_rate", 0.5)),
      shrink_ratio=float(config.get("shrink_ratio", 0.5)),
      false_positive_rate=float(config.get("false_positive_rate", 0.3)), **common)
  eval_source = SyntheticScribbles(eval_bg, num_examples=int(config.get("num_eval", 64)),
                                   seed=int(config.get("eval_seed", 0)), tag=_EVAL_TAG, train=False, **common)
  train = transforms.train_iterator(
      train_source, [scribble_common.train_transform(config, size)], batch_size=local_batch, seed=seed,
      process_index=process_index, process_count=process_count,
      worker_count=int(config.get("worker_count", 0)), read_threads=int(config.get("read_threads", 2)))

  def eval_batches():
    return transforms.eval_batches(len(eval_source), eval_source.__getitem__, batch_size=local_eval,
                                   process_index=process_index, process_count=process_count)

  names = ("background",) + wsol_synthetic.SHAPES[:num_classes - 1]
  info = DataInfo(num_classes=num_classes, class_names=names, image_channels=3,
                  extra={"image_size": size, "num_eval": len(eval_source), "ignore_index": IGNORE})
  return Datasets(train=train, eval_batches=eval_batches, info=info)
