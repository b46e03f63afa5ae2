"""Pieces shared by the scribble-supervised segmentation datasets (CDSP): distance maps,
augmentation, batching.

Distance maps (CDSP, released distancemp/ scripts; here computed in the data pipeline instead
of stored as PNGs, with the same values). The released distance_map.py `euclidean_distance`
computes sqrt(lambda * (dx^2 + dy^2)) = sqrt(lambda) d, so lambda scales the distance: the
weights fall or rise *linearly* with d and saturate at 255 / sqrt(lambda) pixels; there is no
exp(-d / lambda).

* `scribble_distance(scribble, lam)` = D_s: foreground scribble pixels are those with a class
  id > 0 (0 = background, 255 = unlabeled); with d(x) the Euclidean distance to the nearest one,
  D_s(x) = (255 - floor(min(255, sqrt(lam) d(x)))) / 255: 1 on the scribbles, 0 from
  255 / sqrt(lam) pixels away (154.7 px for the released lam = e). All zeros when there is no
  foreground scribble. (makedistancemap_multiprocessing.py: exact distance map, clip, uint8,
  255 - map.)
* `contour_distance(pseudo, lam)` = D_c: the contours of the pseudo-label foreground (class > 0,
  255 -> 0; cv2.findContours RETR_TREE / CHAIN_APPROX_NONE, drawn 1 px wide), d(x) the distance
  to the nearest contour pixel, D_c(x) = floor(min(255, sqrt(lam) d(x))) / 255: 0 on the
  boundary, rising inside and outside, 1 from 255 / sqrt(lam) px away (12.7 px for the released
  lam = e^6), 1 everywhere when there is no foreground.
  (makedistancemap_fromCAM_multiprocessing.py.)
* `quantize=True` keeps the uint8 rounding of the released PNG files.

Which lambda (`data.scribble_lambda`, `data.contour_lambda`): the released train.py reads the
folders `--distancemap_s distancemap/scribble/dsmp_lambd_e` and `--distancemap_c
distancemap/cam/dsmp_lambd_e6`, and the sample maps shipped in the released repository
(dataset/ScribbleSup/VOC2012/distance_map/2007_000032.png and distance_pseudo/2007_000032.png)
are reproduced pixel for pixel by these functions with lam = e (D_s) and lam = e^6 (D_c) from
the shipped pascal_2012_scribble/ and bmp_pseudolabel/ PNGs (tests/test_cdsp.py). The release
contradicts itself: distancemp/Readme.md and the scribble script's default use 7.389 = e^2 for
both maps (the paper's text also says e^2), the CAM script's default is e. We follow the maps
the released training read: E (D_s) and E6 (D_c) are the defaults; E2 = the paper's value.

Augmentation (`augment`, the paper's training transforms, as the released transform_exten.py):
random scale in `scale_range`, random rotation in +-`rotate_degrees` (p = 0.5), Gaussian blur
(5x5, p = `blur_prob`; released RandomGaussianBlur(radius=5), p 0.5), horizontal flip (p = 0.5),
random crop `crop_size` padded with the ImageNet mean colour (images) and 255 (label maps).
Label maps use nearest neighbours, images bilinear interpolation. Distance maps, as released
(transform_exten.py RandScale / RandRotate / Crop treat them like label maps): nearest
neighbours, and rotation borders / crop padding of 255, i.e. weight `distance_pad` = 1.0 after
the loss's division by 255 (so the distance entropy is fully on in the padding).
`distance_interpolation="linear"` and `distance_pad=0.0` give this repository's earlier
behaviour (bilinear, padding weight 0).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import cv2
import grain
import numpy as np

IGNORE = 255
E = math.e  # released D_s lambda (train.py default folder dsmp_lambd_e)
E2 = math.e**2  # the paper's text and distancemp/Readme.md
E6 = math.e**6  # released D_c lambda (train.py default folder dsmp_lambd_e6)
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


def scribble_distance(scribble: np.ndarray, lam: float = E, quantize: bool = True) -> np.ndarray:
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


def contour_distance(pseudo: np.ndarray, lam: float = E6, quantize: bool = True) -> np.ndarray:
  """D_c in [0, 1], float32 [H, W] (module docstring)."""
  pseudo = np.asarray(pseudo)
  d = _distance_to(contour_pixels(pseudo))
  if d is None:
    return np.ones(pseudo.shape, np.float32)
  return (_scaled(d, lam, quantize) / 255.0).astype(np.float32)


def add_distance_maps(
    example: dict[str, Any], scribble_lambda: float, contour_lambda: float, quantize: bool = True
) -> dict[str, Any]:
  """Adds "dist_scribble" (from "scribble") and "dist_contour" (from "pseudo")."""
  out = dict(example)
  out["dist_scribble"] = scribble_distance(example["scribble"], scribble_lambda, quantize)
  out["dist_contour"] = contour_distance(example["pseudo"], contour_lambda, quantize)
  return out


# ------------------------------------------------------------------------------ augmentation


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
  return cv2.resize(
      a, (size[1], size[0]), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
  )


DISTANCE_INTERPOLATIONS = ("nearest", "linear")


def augment(
    example: Mapping[str, Any],
    rng: np.random.Generator,
    *,
    crop_size: int,
    scale_range=(0.5, 2.0),
    rotate_degrees: float = 10.0,
    blur_prob: float = 0.5,
    flip: bool = True,
    distance_pad: float = 1.0,
    distance_interpolation: str = "nearest",
) -> dict[str, Any]:
  """The training transforms (module docstring) applied jointly to every map of `example`.

  Distance maps are resized / rotated with `distance_interpolation` and filled with
  `distance_pad` where rotation and crop padding add pixels (released: nearest, 1.0).
  """
  if distance_interpolation not in DISTANCE_INTERPOLATIONS:
    raise ValueError(
        f"config.data.distance_interpolation={distance_interpolation!r}: use one of "
        f"{DISTANCE_INTERPOLATIONS}."
    )
  out = dict(example)
  keys = ["image"] + [k for k in LABEL_KEYS + FLOAT_KEYS if k in out]
  nearest = {
      k: k in LABEL_KEYS or (k in FLOAT_KEYS and distance_interpolation == "nearest") for k in keys
  }
  border = {
      k: MEAN_RGB if k == "image" else (IGNORE if k in LABEL_KEYS else float(distance_pad))
      for k in keys
  }
  h, w = out["image"].shape[:2]
  s = float(rng.uniform(*scale_range))
  if s != 1.0:
    size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
    for k in keys:
      out[k] = _resize(out[k], size, nearest=nearest[k])
    h, w = size
  if rotate_degrees > 0 and rng.random() < 0.5:
    angle = float(rng.uniform(-rotate_degrees, rotate_degrees))
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
    for k in keys:
      out[k] = cv2.warpAffine(
          out[k],
          matrix,
          (w, h),
          flags=cv2.INTER_NEAREST if nearest[k] else cv2.INTER_LINEAR,
          borderMode=cv2.BORDER_CONSTANT,
          borderValue=border[k],
      )
  if rng.random() < blur_prob:
    out["image"] = cv2.GaussianBlur(out["image"], (5, 5), 0)
  if flip and rng.random() < 0.5:
    for k in keys:
      out[k] = out[k][:, ::-1]
  pad_h, pad_w = max(crop_size - h, 0), max(crop_size - w, 0)
  if pad_h or pad_w:
    for k in keys:
      pad = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
      if k == "image":
        out[k] = np.stack(
            [np.pad(out[k][..., c], pad, constant_values=border[k][c]) for c in range(3)], -1
        )
      else:
        out[k] = np.pad(out[k], pad, constant_values=border[k])
    h, w = out["image"].shape[:2]
  top = int(rng.integers(0, h - crop_size + 1))
  left = int(rng.integers(0, w - crop_size + 1))
  for k in keys:
    out[k] = np.ascontiguousarray(out[k][top : top + crop_size, left : left + crop_size])
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

  def __init__(
      self,
      *,
      crop_size: int,
      scale_range,
      rotate_degrees: float,
      blur_prob: float,
      flip: bool,
      scribble_lambda: float,
      contour_lambda: float,
      quantize: bool = True,
      distance_pad: float = 1.0,
      distance_interpolation: str = "nearest",
  ):
    if distance_interpolation not in DISTANCE_INTERPOLATIONS:
      raise ValueError(
          f"config.data.distance_interpolation={distance_interpolation!r}: use one of "
          f"{DISTANCE_INTERPOLATIONS}."
      )
    self.kwargs = dict(
        crop_size=int(crop_size),
        scale_range=tuple(float(v) for v in scale_range),
        rotate_degrees=float(rotate_degrees),
        blur_prob=float(blur_prob),
        flip=bool(flip),
        distance_pad=float(distance_pad),
        distance_interpolation=str(distance_interpolation),
    )
    self.lambdas = (float(scribble_lambda), float(contour_lambda), bool(quantize))

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    element = add_distance_maps(element, *self.lambdas)
    return augment(element, rng, **self.kwargs)


def pad_eval_example(image: np.ndarray, gt: np.ndarray, size: int) -> dict[str, np.ndarray]:
  """Pads an eval image (mean colour) and its mask (255) at the bottom / right to size x size."""
  h, w = gt.shape
  if h > size or w > size:
    raise ValueError(
        f"Eval image of {h}x{w} is larger than config.data.eval_pad_size={size}; "
        f"raise eval_pad_size (VOC images are at most 500x500)."
    )
  img = np.empty((size, size, 3), np.uint8)
  img[:] = np.asarray(MEAN_RGB, np.uint8)
  img[:h, :w] = image
  mask = np.full((size, size), IGNORE, np.uint8)
  mask[:h, :w] = gt
  return {"image": img, "gt": mask}


# The training-transform keys of config.data and their defaults (the released code's, module
# docstring; crop_size 0 = the dataset's default: the image size for the synthetic set, 465 for
# ScribbleSup).
TRAIN_DEFAULTS = dict(
    crop_size=0,
    scale_range=(0.5, 2.0),
    rotate_degrees=10.0,
    blur_prob=0.5,
    flip=True,
    scribble_lambda=E,
    contour_lambda=E6,
    quantize_distance=True,
    distance_pad=1.0,
    distance_interpolation="nearest",
)


def train_transform(opts: Any, default_crop: int) -> TrainTransform:
  """TrainTransform from a dataset's options view of config.data (which declares the keys of
  TRAIN_DEFAULTS); crop_size 0 = `default_crop`."""
  return TrainTransform(
      crop_size=int(opts.crop_size or default_crop),
      scale_range=tuple(opts.scale_range),
      rotate_degrees=float(opts.rotate_degrees),
      blur_prob=float(opts.blur_prob),
      flip=bool(opts.flip),
      scribble_lambda=float(opts.scribble_lambda),
      contour_lambda=float(opts.contour_lambda),
      quantize=bool(opts.quantize_distance),
      distance_pad=float(opts.distance_pad),
      distance_interpolation=str(opts.distance_interpolation),
  )
