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

The drawing (shapes, colours, stripes, backgrounds) is `jaxmilab.data.synthetic_shapes`, shared
with `scribble_synthetic`.

`layout` changes what is discriminative (experiments of jaxmilab.benchmarks.wsol_effects):

* "shapes" (default): as above; every object pixel carries the class (shape, colour, stripes).
* "part": a class-agnostic body (grey ellipse with a fixed texture, the same for all classes)
  with one class-coded patch (class colour and stripes) covering `part_fraction` (5-10 %) of
  the body at a random position inside it; box and mask cover the whole body. Only the patch
  tells the class, so a classifier's CAM tends to light the patch alone (CAM's failure mode).
  Eval batches add "part" bool [B, S, S] (the patch's pixels).
* "context": co-occurring context that the classifier needs. Classes come in pairs (2j, 2j+1)
  whose objects look the same (shape SHAPES[j], colour COLORS[j], stripes of pair j); with
  probability `context_prob` a class-specific band (a vertical bar `context_width` px wide, as
  tall as the object's box, in the colour COLORS[4 + label % 4], a colour no object has) stands
  `context_gap` px or more beside the object's box (default 16 px = two cells of the stride-8
  feature map, so object and band never share a feature cell). Only the band tells the two
  classes of a pair apart: without it a classifier is at chance within the pair, so the
  context matters to it. Mask and box on the object only. The band's side and place are drawn
  whether or not it is painted, so `context_prob=0` gives the same images without their bands.
  Eval batches add "context" bool [B, S, S] (the band's pixels). Object box side 30-45 % of S.

Batches: train {"image": uint8 [B, S, S, 3], "label": int32 [B]}; eval adds "boxes" int32
[B, max_boxes, 4] (zero-padded), "num_boxes" int32 [B] (= 1), "mask" bool [B, S, S] and
"valid". config.data keys (defaults): image_size (64), num_classes (4, at most 8),
num_train (2048 distinct training images, repeated with new shuffles), num_eval (128),
eval_batch_size (0 = the training batch size), max_boxes (4), background ("photos" | "noise"),
eval_seed (0), worker_count (0), read_threads (2), layout ("shapes"), part_fraction
((0.05, 0.10)), context_prob (0.8), context_gap (16), context_width (16).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxmilab.data import synthetic_shapes
from jaxmilab.data import transforms
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

# Every config.data key this dataset reads, with its default (module docstring).
CONFIG_DEFAULTS = dict(
    image_size=64,
    num_classes=4,
    num_train=2048,
    num_eval=128,
    eval_batch_size=0,
    max_boxes=4,
    background="photos",
    eval_seed=0,
    worker_count=0,
    read_threads=2,
    layout="shapes",
    part_fraction=(0.05, 0.10),
    context_prob=0.8,
    context_gap=16,
    context_width=16,
)
LAYOUTS = ("shapes", "part", "context")
SHAPES = synthetic_shapes.SHAPES  # class i is SHAPES[i]
COLORS = synthetic_shapes.COLORS
# "context": objects take COLORS[pair] (pairs 0..3), bands COLORS[4 + label % 4], so no band
# has an object's colour.
BAND_COLORS = COLORS[4:8]
_TRAIN_TAG, _EVAL_TAG = 1, 2


class SyntheticWSOL(synthetic_shapes.Source):
  """Random-access synthetic WSOL examples (key -> dict of numpy arrays)."""

  def __init__(
      self,
      backgrounds: tuple[np.ndarray, ...],
      *,
      size: int,
      num_classes: int,
      num_examples: int,
      seed: int,
      tag: int,
      with_boxes: bool,
      max_boxes: int,
      description: str,
      layout: str = "shapes",
      part_fraction=(0.05, 0.10),
      context_prob: float = 0.8,
      context_gap: int = 16,
      context_width: int = 16,
  ):
    super().__init__(backgrounds, size=size, num_examples=num_examples, seed=seed, tag=tag)
    self.layout, self.part_fraction, self.context_prob = (
        layout,
        tuple(part_fraction),
        float(context_prob),
    )
    self.context_gap, self.context_width = int(context_gap), int(context_width)
    self.num_classes, self.with_boxes, self.max_boxes = num_classes, with_boxes, max_boxes
    self.description = description

  def __repr__(self) -> str:
    return (
        f"SyntheticWSOL({self.description}, size={self.size}, classes={self.num_classes}, "
        f"n={self.num_examples}, seed={self.seed}, tag={self.tag})"
    )

  def __getitem__(self, index: int) -> dict[str, Any]:
    rng = self.rng(index)
    s = self.size
    label = int(rng.integers(self.num_classes))
    image = self.background(rng)  # [S, S, 3] float in [0, 255]
    if self.layout == "context":
      image, mask, context = self._context_example(rng, label, image)
      extra = {"context": context}
    else:
      kind = "ellipse" if self.layout == "part" else SHAPES[label % len(SHAPES)]
      mask, _ = synthetic_shapes.place_shape(rng, kind, s, (0.3, 0.7))
      # Class texture: stripes at a class-specific angle over the class colour.
      shade = synthetic_shapes.stripe_shade(s, np.pi * label / self.num_classes)
      texture = COLORS[label % len(COLORS)] * shade
      extra = {}
      if self.layout == "part":
        image, patch = self._part_example(rng, mask, texture, image)
        extra = {"part": patch}
      else:
        image = np.where(mask[..., None], texture, image)
    out = {"image": np.clip(np.round(image), 0, 255).astype(np.uint8), "label": np.int32(label)}
    if self.with_boxes:
      ys, xs = np.nonzero(mask)
      boxes = np.zeros((self.max_boxes, 4), np.int32)
      boxes[0] = (xs.min(), ys.min(), xs.max(), ys.max())
      out.update(boxes=boxes, num_boxes=np.int32(1), mask=mask, **extra)
    return out

  def _part_example(self, rng, mask, texture, image):
    """Class-agnostic body (checker over grey) with the class patch inside; (image, patch)."""
    s = self.size
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    body = np.float32(140) + 40 * (((x // 4) + (y // 4)) % 2)[..., None]
    image = np.where(mask[..., None], body, image)
    area = float(rng.uniform(*self.part_fraction)) * mask.sum()
    side = max(2, int(round(np.sqrt(area))))
    ys, xs = np.nonzero(mask)
    for _ in range(100):  # a patch centre whose square lies inside the body
      k = int(rng.integers(len(ys)))
      t0, l0 = ys[k] - side // 2, xs[k] - side // 2
      if (
          t0 >= 0
          and l0 >= 0
          and mask[t0 : t0 + side, l0 : l0 + side].all()
          and t0 + side <= s
          and l0 + side <= s
      ):
        break
    patch = np.zeros((s, s), bool)
    patch[max(t0, 0) : t0 + side, max(l0, 0) : l0 + side] = True
    patch &= mask
    return np.where(patch[..., None], texture, image), patch

  def _context_example(self, rng, label, image):
    """Pair-shared object and class band `context_gap` px beside it; (image, mask, band)."""
    s, gap, width = self.size, self.context_gap, self.context_width
    pair = label // 2
    kind = SHAPES[pair % len(SHAPES)]
    h = int(round(s * rng.uniform(0.3, 0.45)))
    w = int(round(s * rng.uniform(0.3, 0.45)))
    band_right = bool(rng.random() < 0.5)
    painted = bool(rng.random() < self.context_prob)
    top = int(rng.integers(0, s - h + 1))
    room = s - w - gap - width  # left positions that leave room for the band on its side
    offset = int(rng.integers(0, room + 1))
    left = offset if band_right else gap + width + offset
    band_left = left + w + gap if band_right else left - gap - width
    mask = np.zeros((s, s), bool)
    mask[top : top + h, left : left + w] = synthetic_shapes.shape_mask(kind, h, w)
    context = np.zeros((s, s), bool)
    if painted:
      context[top : top + h, band_left : band_left + width] = True
      image = np.where(context[..., None], BAND_COLORS[label % len(BAND_COLORS)][None, None], image)
    shade = synthetic_shapes.stripe_shade(s, np.pi * pair / max(1, self.num_classes // 2))
    image = np.where(mask[..., None], COLORS[pair % 4] * shade, image)
    return image, mask, context


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches of the synthetic WSOL set (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "wsol_synthetic",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  size = int(opts.image_size)
  num_classes = int(opts.num_classes)
  if not 2 <= num_classes <= len(SHAPES):
    raise ValueError(f"config.data.num_classes={num_classes}: use 2..{len(SHAPES)}.")
  if size < 16:
    raise ValueError(f"config.data.image_size={size}: use at least 16 pixels.")
  max_boxes = int(opts.max_boxes)
  if max_boxes < 1:
    raise ValueError(f"config.data.max_boxes={max_boxes} must be >= 1.")
  background = opts.background
  train_bg, eval_bg = synthetic_shapes.train_eval_backgrounds(background, size)
  kind = opts.layout
  if kind not in LAYOUTS:
    raise ValueError(f"config.data.layout={kind!r}: use one of {LAYOUTS}.")
  fraction = tuple(opts.part_fraction)
  if len(fraction) != 2 or not 0 < fraction[0] <= fraction[1] < 1:
    raise ValueError(
        f"config.data.part_fraction={fraction}: give (low, high) with 0 < low <= high < 1."
    )
  gap, width = int(opts.context_gap), int(opts.context_width)
  if kind == "context":
    if num_classes % 2 or num_classes > 8:
      raise ValueError(
          f"config.data.num_classes={num_classes}: layout 'context' pairs the classes; "
          "use an even number up to 8."
      )
    if gap < 0 or width < 1 or size - int(round(size * 0.45)) - gap - width < 0:
      raise ValueError(
          f"config.data.context_gap={gap} / context_width={width}: object (up to 45 % of "
          f"image_size={size}), gap and band must fit side by side; use a larger image_size."
      )
  common = dict(
      size=size,
      num_classes=num_classes,
      max_boxes=max_boxes,
      layout=kind,
      part_fraction=fraction,
      context_prob=float(opts.context_prob),
      context_gap=gap,
      context_width=width,
  )
  train_source = SyntheticWSOL(
      train_bg,
      num_examples=int(opts.num_train),
      seed=seed,
      tag=_TRAIN_TAG,
      with_boxes=False,
      description=f"train,{background}",
      **common,
  )
  eval_source = SyntheticWSOL(
      eval_bg,
      num_examples=int(opts.num_eval),
      seed=int(opts.eval_seed),
      tag=_EVAL_TAG,
      with_boxes=True,
      description=f"eval,{background}",
      **common,
  )
  train = layout.train(
      train_source, [], worker_count=int(opts.worker_count), read_threads=int(opts.read_threads)
  )
  info = DataInfo(
      num_classes=num_classes,
      class_names=SHAPES[:num_classes],
      image_channels=3,
      extra={"image_size": size, "num_eval": len(eval_source), "has_masks": True},
  )
  return Datasets(
      train=train, eval_batches=layout.eval(len(eval_source), eval_source.__getitem__), info=info
  )
