"""Synthetic scribble-supervised segmentation set (the offline default of configs/cdsp.py).

Each example is drawn from `numpy.random.default_rng([tag, seed, index])`:

* image: a random crop of a scikit-image photo (`jaxmilab.data.embedded`: training photos for
  training, the held-out photos for evaluation) or smoothed colour noise; 1..`max_objects`
  objects of classes 1..K-1 (K = num_classes, 0 = background), class c drawn as the shape
  `synthetic_shapes.SHAPES[c - 1]` (25-55% of the side), filled with the class colour
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
scribble_common.TRAIN_DEFAULTS.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from jaxmilab.data import scribble_common
from jaxmilab.data import synthetic_shapes
from jaxmilab.data import transforms
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

CONFIG_DEFAULTS = dict(
    image_size=64,
    num_classes=5,
    max_objects=2,
    num_train=1024,
    num_eval=64,
    eval_batch_size=0,
    background="photos",
    scribble_variant="full",
    drop_rate=0.5,
    shrink_ratio=0.5,
    false_positive_rate=0.3,
    eval_seed=0,
    worker_count=0,
    read_threads=2,
    **scribble_common.TRAIN_DEFAULTS,
)
VARIANTS = ("full", "drop", "shrink")
_TRAIN_TAG, _EVAL_TAG = 11, 12
IGNORE = scribble_common.IGNORE


def _stroke(
    shape: tuple[int, int], allowed: np.ndarray, rng: np.random.Generator, ratio: float
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


class SyntheticScribbles(synthetic_shapes.Source):
  """Random-access synthetic examples (index -> dict of numpy arrays)."""

  def __init__(
      self,
      backgrounds,
      *,
      size: int,
      num_classes: int,
      max_objects: int,
      num_examples: int,
      seed: int,
      tag: int,
      train: bool,
      variant: str = "full",
      drop_rate: float = 0.5,
      shrink_ratio: float = 0.5,
      false_positive_rate: float = 0.3,
  ):
    super().__init__(backgrounds, size=size, num_examples=num_examples, seed=seed, tag=tag)
    self.num_classes, self.max_objects, self.train = num_classes, max_objects, train
    self.variant, self.drop_rate, self.shrink_ratio = variant, drop_rate, shrink_ratio
    self.false_positive_rate = false_positive_rate

  def __repr__(self) -> str:
    return (
        f"SyntheticScribbles(size={self.size}, classes={self.num_classes}, n={self.num_examples}, "
        f"seed={self.seed}, tag={self.tag}, variant={self.variant})"
    )

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    rng = self.rng(index)
    s = self.size
    image = self.background(rng)
    gt = np.zeros((s, s), np.uint8)
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    n = int(rng.integers(1, self.max_objects + 1))
    classes = [int(c) for c in rng.integers(1, self.num_classes, size=n)]
    for c in classes:
      kind = synthetic_shapes.SHAPES[(c - 1) % len(synthetic_shapes.SHAPES)]
      mask, _ = synthetic_shapes.place_shape(rng, kind, s, (0.25, 0.55))
      shade = synthetic_shapes.stripe_shade(s, np.pi * c / self.num_classes)
      colours = synthetic_shapes.COLORS
      texture = (colours[(c - 1) % len(colours)] + rng.uniform(-25, 25, 3)) * shade
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
        p &= (y - ys[i]) ** 2 + (x - xs[i]) ** 2 > radius**2
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


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches of the synthetic scribble set (module docstring)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "scribble_synthetic",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  size = int(opts.image_size)
  num_classes = int(opts.num_classes)
  shapes = synthetic_shapes.SHAPES
  if not 2 <= num_classes <= len(shapes) + 1:
    raise ValueError(
        f"config.data.num_classes={num_classes}: use 2..{len(shapes) + 1} "
        f"(background + up to {len(shapes)} shapes)."
    )
  if size < 24:
    raise ValueError(f"config.data.image_size={size}: use at least 24 pixels.")
  variant = opts.scribble_variant
  if variant not in VARIANTS:
    raise ValueError(f"config.data.scribble_variant={variant!r}: use one of {VARIANTS}.")
  background = opts.background
  train_bg, eval_bg = synthetic_shapes.train_eval_backgrounds(background, size)
  common = dict(size=size, num_classes=num_classes, max_objects=int(opts.max_objects))
  train_source = SyntheticScribbles(
      train_bg,
      num_examples=int(opts.num_train),
      seed=seed,
      tag=_TRAIN_TAG,
      train=True,
      variant=variant,
      drop_rate=float(opts.drop_rate),
      shrink_ratio=float(opts.shrink_ratio),
      false_positive_rate=float(opts.false_positive_rate),
      **common,
  )
  eval_source = SyntheticScribbles(
      eval_bg,
      num_examples=int(opts.num_eval),
      seed=int(opts.eval_seed),
      tag=_EVAL_TAG,
      train=False,
      **common,
  )
  train = layout.train(
      train_source,
      [scribble_common.train_transform(opts, size)],
      worker_count=int(opts.worker_count),
      read_threads=int(opts.read_threads),
  )
  info = DataInfo(
      num_classes=num_classes,
      class_names=("background",) + shapes[: num_classes - 1],
      image_channels=3,
      extra={"image_size": size, "num_eval": len(eval_source), "ignore_index": IGNORE},
  )
  return Datasets(
      train=train, eval_batches=layout.eval(len(eval_source), eval_source.__getitem__), info=info
  )
