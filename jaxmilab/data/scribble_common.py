"""Pieces shared by the scribble-supervised segmentation datasets (CDSP): distance maps,
augmentation, batching.

Distance maps (CDSP, released distancemp/ scripts; here computed in the data pipeline instead
of stored as PNGs, with the same values):

* `scribble_distance(scribble, lam)` = D_s: foreground scribble pixels are those with a class
  id > 0 (0 = background, 255 = unlabeled); with d(x) the Euclidean distance to the nearest one,
  D_s(x) = (255 - floor(min(255, sqrt(lam) d(x)))) / 255: 1 on the scribbles, 0 from
  255 / sqrt(lam) pixels away (93.8 px for lam = e^2). All zeros when there is no foreground
  scribble. (makedistancemap_multiprocessing.py: exact distance map, clip, uint8, 255 - map.)
* `contour_distance(pseudo, lam)` = D_c: the contours of the pseudo-label foreground (class > 0,
  255 -> 0; cv2.findContours RETR_TREE / CHAIN_APPROX_NONE, drawn 1 px wide), d(x) the distance
  to the nearest contour pixel, D_c(x) = floor(min(255, sqrt(lam) d(x))) / 255: 0 on the
  boundary, rising inside and outside, 1 everywhere when there is no foreground.
  (makedistancemap_fromCAM_multiprocessing.py; its command-line default is lam = e, the paper
  and configs/cdsp.py use lam = e^2 for both maps: `data.contour_lambda` changes it.)
* `quantize=True` keeps the uint8 rounding of the released PNG files.

Augmentation (`augment`, the paper's training transforms, semseg-style as in the released
code): random scale in `scale_range`, random rotation in +-`rotate_degrees` (p = 0.5), Gaussian
blur (5x5, p = `blur_prob`), horizontal flip (p = 0.5), random crop `crop_size` padded with the
ImageNet mean colour (images), 255 (label maps) and 0 (distance maps). Label maps use nearest
neighbours, images and distance maps bilinear interpolation.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import grain
import numpy as np

IGNORE = 255
E2 = math.e ** 2
MEAN_RGB = (124, 116, 104)  # round(255 * ImageNet mean): padding colour of the released code
LABEL_KEYS = ("scribble", "pseudo")
FLOAT_KEYS = ("dist_scribble", "dist_contour")


def _distance_to(points: np.ndarray) -> np.ndarray | None:
  """Exact Euclidean distance of every pixel to the nearest True pixel; None when there is none."""
  if not points.any():
    return None
  return cv2.distanceTransform((~points).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _scaled(d: np.ndarray, lam: float, quantize: bool) -> np.ndarray:
  v = np.minimum(255.0, math.sqrt(lam) * d.astype(np.float64))
  return np.floor(v) if quantize else v


def scribble_distance(scribble: np.ndarray, lam: float = E2, quantize: bool = True) -> np.ndarray:
  """D_s in [0, 1], float32 [H, W] (module docstring)."""
  scribble = np.asarray(scribble)
  d = _distance_to((scribble > 0) & (scribble != IGNORE))
  if d is None:
    return np.zeros(scribble.shape, np.float32)
  return ((255.0 - _scaled(d, lam, quantize)) / 255.0).astype(np.float32)


def contour_pixels(pseudo: np.ndarray) -> np.ndarray:
  """bool [H, W]: the 1-px contours of the pseudo-label foreground (class > 0, not 255)."""
  fg = (((pseudo > 0) & (pseudo != IGNORE)) * 255).astype(np.uint8)
  contours, _ = cv2.findContours(fg, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
  canvas = np.zeros(fg.shape, np.uint8)
  cv2.drawContours(canvas, contours, -1, 255, 1)
  return canvas > 0


def contour_distance(pseudo: np.ndarray, lam: float = E2, quantize: bool = True) -> np.ndarray:
  """D_c in [0, 1], float32 [H, W] (module docstring)."""
  pseudo = np.asarray(pseudo)
  d = _distance_to(contour_pixels(pseudo))
  if d is None:
    return np.ones(pseudo.shape, np.float32)
  return (_scaled(d, lam, quantize) / 255.0).astype(np.float32)


def add_distance_maps(example: dict[str, Any], scribble_lambda: float, contour_lambda: float,
                      quantize: bool = True) -> dict[str, Any]:
  """Adds "dist_scribble" (from "scribble") and "dist_contour" (from "pseudo")."""
  out = dict(example)
  out["dist_scribble"] = scribble_distance(example["scribble"], scribble_lambda, quantize)
  out["dist_contour"] = contour_distance(example["pseudo"], contour_lambda, quantize)
  return out


# ------------------------------------------------------------------------------ augmentation


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
  return cv2.resize(a, (size[1], size[0]), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)


def augment(example: Mapping[str, Any], rng: np.random.Generator, *, crop_size: int,
            scale_range=(0.5, 2.0), rotate_degrees: float = 10.0, blur_prob: float = 0.5,
            flip: bool = True) -> dict[str, Any]:
  """The training transforms (module docstring) applied jointly to every map of `example`."""
  out = dict(example)
  keys = ["image"] + [k for k in LABEL_KEYS + FLOAT_KEYS if k in out]
  h, w = out["image"].shape[:2]
  s = float(rng.uniform(*scale_range))
  if s != 1.0:
    size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    for k in keys:
      out[k] = _resize(out[k], size, nearest=k in LABEL_KEYS)
    h, w = size
  if rotate_degrees > 0 and rng.random() < 0.5:
    angle = float(rng.uniform(-rotate_degrees, rotate_degrees))
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
    for k in keys:
      nearest = k in LABEL_KEYS
      border = MEAN_RGB if k == "image" else (IGNORE if nearest else 0)
      out[k] = cv2.warpAffine(out[k], matrix, (w, h), flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=border)
  if rng.random() < blur_prob:
    out["image"] = cv2.GaussianBlur(out["image"], (5, 5), 0)
  if flip and rng.random() < 0.5:
    for k in keys:
      out[k] = out[k][:, ::-1]
  pad_h, pad_w = max(crop_size - h, 0), max(crop_size - w, 0)
  if pad_h or pad_w:
    for k in keys:
      value = MEAN_RGB if k == "image" else (IGNORE if k in LABEL_KEYS else 0)
      pad = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
      if k == "image":
        out[k] = np.stack([np.pad(out[k][..., c], pad, constant_values=value[c]) for c in range(3)], -1)
      else:
        out[k] = np.pad(out[k], pad, constant_values=value)
    h, w = out["image"].shape[:2]
  top = int(rng.integers(0, h - crop_size + 1))
  left = int(rng.integers(0, w - crop_size + 1))
  for k in keys:
    out[k] = np.ascontiguousarray(out[k][top:top + crop_size, left:left + crop_size])
  out["image"] = out["image"].astype(np.uint8)
  for k in LABEL_KEYS:
    if k in out:
      out[k] = out[k].astype(np.uint8)
  for k in FLOAT_KEYS:
    if k in out:
      out[k] = out[k].astype(np.float32)
  return out


class TrainTransform(grain.transforms.RandomMap):
  """Distance maps, then `augment` (picklable: only numbers are stored)."""

  def __init__(self, *, crop_size: int, scale_range, rotate_degrees: float, blur_prob: float,
               flip: bool, scribble_lambda: float, contour_lambda: float, quantize: bool = True):
    self.kwargs = dict(crop_size=int(crop_size), scale_range=tuple(float(v) for v in scale_range),
                       rotate_degrees=float(rotate_degrees), blur_prob=float(blur_prob), flip=bool(flip))
    self.lambdas = (float(scribble_lambda), float(contour_lambda), bool(quantize))

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    element = add_distance_maps(element, *self.lambdas)
    return augment(element, rng, **self.kwargs)


def pad_eval_example(image: np.ndarray, gt: np.ndarray, size: int) -> dict[str, np.ndarray]:
  """Pads an eval image (mean colour) and its mask (255) at the bottom / right to size x size."""
  h, w = gt.shape
  if h > size or w > size:
    raise ValueError(f"Eval image of {h}x{w} is larger than config.data.eval_pad_size={size}; "
                     f"raise eval_pad_size (VOC images are at most 500x500).")
  img = np.empty((size, size, 3), np.uint8)
  img[:] = np.asarray(MEAN_RGB, np.uint8)
  img[:h, :w] = image
  mask = np.full((size, size), IGNORE, np.uint8)
  mask[:h, :w] = gt
  return {"image": img, "gt": mask}


# The training-transform keys of config.data and their defaults (the paper's; crop_size 0 =
# the dataset's default: the image size for the synthetic set, 465 for ScribbleSup).
TRAIN_DEFAULTS = dict(crop_size=0, scale_range=(0.5, 2.0), rotate_degrees=10.0, blur_prob=0.5, flip=True,
                      scribble_lambda=E2, contour_lambda=E2, quantize_distance=True)


def train_transform(opts: Any, default_crop: int) -> TrainTransform:
  """TrainTransform from a dataset's options view of config.data (which declares the keys of
  TRAIN_DEFAULTS); crop_size 0 = `default_crop`."""
  return TrainTransform(
      crop_size=int(opts.crop_size or default_crop), scale_range=tuple(opts.scale_range),
      rotate_degrees=float(opts.rotate_degrees), blur_prob=float(opts.blur_prob),
      flip=bool(opts.flip), scribble_lambda=float(opts.scribble_lambda),
      contour_lambda=float(opts.contour_lambda), quantize=bool(opts.quantize_distance))
