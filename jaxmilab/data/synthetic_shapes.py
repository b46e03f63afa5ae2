"""Drawing shared by the synthetic sets (`wsol_synthetic`, `scribble_synthetic`).

Class shapes inscribed in a box, class colours, striped class textures, and backgrounds: random
crops of the scikit-image photos (`jaxmilab.data.embedded`) or smoothed colour noise. Every
draw takes the caller's `numpy.random.Generator`, so an example is a function of its rng alone.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from jaxmilab.data import embedded

SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring", "diamond", "half_disc", "hexagon")
COLORS = np.array(
    [
        [230, 60, 50],
        [40, 170, 70],
        [50, 90, 230],
        [240, 200, 40],
        [200, 60, 220],
        [40, 210, 220],
        [250, 140, 30],
        [240, 240, 240],
    ],
    np.float32,
)
BACKGROUNDS = ("photos", "noise")


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
    m = u * u + (v + 1) ** 2 / 4 <= 1.0
  elif kind == "hexagon":
    m = (np.abs(v) <= 1.0) & (np.abs(u) + 0.5 * np.abs(v) <= 1.0)
  else:
    raise ValueError(f"Unknown shape {kind!r}; use one of {SHAPES}.")
  return m


def place_shape(
    rng: np.random.Generator, kind: str, size: int, side_range: tuple[float, float]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """`kind` in a random box inside a size x size image.

  Args:
    rng: draws the box height, width (each `side_range` of the side), top and left, in order.
    kind: one of SHAPES.
    size: the image side S.
    side_range: (low, high) box side as a fraction of S.

  Returns:
    (bool [S, S] mask, (top, left, height, width) of the box).
  """
  h = int(round(size * rng.uniform(*side_range)))
  w = int(round(size * rng.uniform(*side_range)))
  top = int(rng.integers(0, size - h + 1))
  left = int(rng.integers(0, size - w + 1))
  mask = np.zeros((size, size), bool)
  mask[top : top + h, left : left + w] = shape_mask(kind, h, w)
  return mask, (top, left, h, w)


def stripe_shade(size: int, angle: float) -> np.ndarray:
  """[S, S, 1] brightness in [0.55, 1] of stripes at `angle` (radians), period max(3, S / 10) px."""
  y, x = np.mgrid[0:size, 0:size].astype(np.float32)
  period = max(3.0, size / 10)
  stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
  return 0.55 + 0.45 * stripes[..., None]


def photo_backgrounds(names: Sequence[str], size: int) -> tuple[np.ndarray, ...]:
  """The embedded photos `names`, resized so that the shorter side is 2 x size (uint8 [H, W, 3])."""
  out = []
  for name in names:
    photo = embedded.read(name)  # [H, W, 3] uint8
    scale = 2 * size / min(photo.shape[:2])
    new = (
        max(size, int(round(photo.shape[1] * scale))),
        max(size, int(round(photo.shape[0] * scale))),
    )
    out.append(cv2.resize(photo, new, interpolation=cv2.INTER_AREA))
  return tuple(out)


def train_eval_backgrounds(
    background: str, size: int
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
  """(training, eval) backgrounds of `config.data.background`: the embedded training / held-out
  photos for "photos", none (smoothed noise) for "noise"."""
  if background not in BACKGROUNDS:
    raise ValueError(f"config.data.background={background!r}: use 'photos' or 'noise'.")
  if background == "noise":
    return (), ()
  return (
      photo_backgrounds(embedded.TRAIN_PHOTOS, size),
      photo_backgrounds(embedded.EVAL_PHOTOS, size),
  )


class Source:
  """Random-access synthetic examples; example i is drawn from default_rng([tag, seed, i]).

  Subclasses define `__getitem__`, starting from `self.rng(index)` and `self.background(rng)`.
  """

  def __init__(
      self, backgrounds: Sequence[np.ndarray], *, size: int, num_examples: int, seed: int, tag: int
  ):
    self.backgrounds = backgrounds
    self.size, self.num_examples, self.seed, self.tag = size, num_examples, seed, tag

  def __len__(self) -> int:
    return self.num_examples

  def rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng([self.tag, self.seed, int(index)])

  def background(self, rng: np.random.Generator) -> np.ndarray:
    """float32 [S, S, 3] in [0, 255]: a random crop of a random background, or smoothed noise."""
    s = self.size
    if not self.backgrounds:
      noise = rng.random((s // 4 + 1, s // 4 + 1, 3)).astype(np.float32)
      return np.clip(cv2.resize(noise, (s, s), interpolation=cv2.INTER_CUBIC) * 255, 0, 255)
    photo = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
    top = int(rng.integers(0, photo.shape[0] - s + 1))
    left = int(rng.integers(0, photo.shape[1] - s + 1))
    return photo[top : top + s, left : left + s].astype(np.float32)
