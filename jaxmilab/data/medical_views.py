"""MACL's augmented views and segmentation augmentation, as grain ops (run in grain workers).

Transcribed in numpy / scipy from the official stevezs315/MACL dataset/chd.py
(`prepare_contrast_JCL`) and dataset/acdc.py (`prepare_supervised`), which use torchvision
and batchgenerators:

* `jitter` (I views; intensity only, geometry unchanged): min-max normalise to [0, 1], to
  uint8 (truncation), ColorJitter brightness factor U(0, 1), contrast factor U(0.8, 1.2)
  (blend with the rounded mean grey level), GaussianBlur 3x3 with sigma U(1, 3) (reflect
  border), then min-max normalise again. Each step rounds to uint8 as PIL / torchvision do.
* `spatial` (V views and segmentation training): mirror each axis with p 0.5, then with
  p 0.67 batchgenerators' SpatialTransform (elastic deformation alpha U(100, 350), sigma
  U(14, 17); rotation U(0, 2 pi); scale U(0.7, 1.3); cubic interpolation for images,
  nearest for labels, constant 0 outside), else the alternative random crop (the identity
  here: the input already has the patch size).

`ContrastiveViews` gives the four MACL inputs of one slice: I1, I2 = jitter(crop) drawn
independently (shared geometry), V1 = spatial(I1), V2 = spatial(I2) (independent draws),
plus its position label. Multi-channel slices (BraTS) share one draw across channels; the
official BraTS loader (dataset/BraTS.py) instead uses per-slice min-max input, ColorJitter
brightness 0.2 and RandomAffine (+-20 deg, translate 0.1, scale 0.9-1.1, shear 0.2) views,
which are not reproduced here.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np
from scipy import ndimage

from jaxmilab.data import medical


def minmax(x: np.ndarray) -> np.ndarray:
  """The official Normalization_result: (x - min) / (max - min + 1e-8)."""
  x = np.asarray(x, np.float32)
  return (x - x.min()) / (x.max() - x.min() + 1e-8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One intensity view of float [H, W, C]: float32 [H, W, C] in [0, 1] (module doc)."""
  x = (minmax(image) * 255).astype(np.uint8).astype(np.float32)  # (img * 255).astype(uint8)
  x = _to_uint8(x * rng.uniform(0.0, 1.0)).astype(np.float32)  # brightness=(0, 1)
  c = rng.uniform(0.8, 1.2)  # contrast=(0.8, 1.2)
  mean = np.floor(x.mean() + 0.5)
  x = _to_uint8(mean + c * (x - mean)).astype(np.float32)
  sigma = rng.uniform(1.0, 3.0)  # GaussianBlur(3, (1, 3))
  k = np.exp(-np.arange(-1, 2) ** 2 / (2 * sigma * sigma))
  k = k / k.sum()
  x = ndimage.convolve1d(x, k, axis=0, mode="mirror")
  x = ndimage.convolve1d(x, k, axis=1, mode="mirror")
  return minmax(_to_uint8(x).astype(np.float32))


def spatial(
    image: np.ndarray,
    rng: np.random.Generator,
    labels: np.ndarray | None = None,
    p_spatial: float = 0.67,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Mirror + (p 0.67) elastic / rotate / scale of [H, W, C] (and [H, W] labels alike)."""
  image = np.asarray(image, np.float32)
  for axis in (0, 1):  # MirrorTransform((0, 1))
    if rng.uniform() < 0.5:
      image = np.flip(image, axis)
      labels = None if labels is None else np.flip(labels, axis)
  if rng.uniform() >= p_spatial:  # RndTransform(..., alternative_transform=RandomCropTransform)
    return np.ascontiguousarray(image), None if labels is None else np.ascontiguousarray(labels)
  h, w = image.shape[:2]
  coords = np.stack(
      np.meshgrid(
          np.arange(h, dtype=np.float64) - (h - 1) / 2.0,
          np.arange(w, dtype=np.float64) - (w - 1) / 2.0,
          indexing="ij",
      )
  )
  alpha, sigma = rng.uniform(100.0, 350.0), rng.uniform(14.0, 17.0)
  coords = coords + np.stack(
      [
          ndimage.gaussian_filter(rng.uniform(size=(h, w)) * 2 - 1, sigma, mode="constant", cval=0)
          * alpha
          for _ in range(2)
      ]
  )
  angle = rng.uniform(0.0, 2.0 * np.pi)
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  coords = np.einsum("ij,jhw->ihw", rot, coords) * rng.uniform(0.7, 1.3)
  coords[0] += h / 2.0 - 0.5
  coords[1] += w / 2.0 - 0.5
  out = np.stack(
      [
          ndimage.map_coordinates(image[..., c], coords, order=3, mode="constant", cval=0.0)
          for c in range(image.shape[-1])
      ],
      axis=-1,
  ).astype(np.float32)
  if labels is not None:
    labels = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0).astype(
        labels.dtype
    )
  return out, labels


class SliceSource:
  """Random access to the slices of some volumes: index -> {"image" [H, W, C], "labels"
  [H, W] (zeros if unlabelled), "position" (i + 1) / D, "volume", "slice"}."""

  def __init__(self, reader: medical.VolumeReader, refs, description: str):
    self.reader, self.refs = reader, list(refs)
    self.index = medical.slice_index(reader, self.refs)
    self.description = description

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, key: int) -> dict[str, Any]:
    v, i, depth = self.index[int(key)]
    image, labels = self.reader(self.refs[v])
    return {
        "image": image[i],
        "labels": (labels[i] if labels is not None else np.zeros(image.shape[1:3], np.int32)),
        "position": np.float32((i + 1) / depth),
        "volume": np.int32(v),
        "slice": np.int32(i),
    }

  def __repr__(self) -> str:
    # Stable across processes and restarts: grain checks it when restoring the iterator.
    return f"SliceSource({self.description}, volumes={len(self.refs)}, slices={len(self)})"


VIEW_KINDS = ("macl", "pcl")


class ContrastiveViews(grain.transforms.RandomMap):
  """slice -> {"view_i1", "view_i2", "view_v1", "view_v2": f32 [p, p, C], "position": f32}.

  kind="pcl": the released PCL views (dewenzeng/positional_cl dataset/chd.py
  `prepare_contrast`): {"view_v1", "view_v2", "position"}, V1 and V2 = two independent
  `spatial` draws of the normalised crop itself, no intensity jitter.
  """

  def __init__(self, patch_size: int, p_spatial: float = 0.67, kind: str = "macl"):
    if kind not in VIEW_KINDS:
      raise ValueError(f"config.data.views={kind!r}: use one of {VIEW_KINDS}.")
    self.patch_size, self.p_spatial, self.kind = int(patch_size), float(p_spatial), kind

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, _ = medical.pad_or_crop(element["image"], self.patch_size, "random", rng)
    if self.kind == "pcl":
      v1, _ = spatial(image, rng, p_spatial=self.p_spatial)
      v2, _ = spatial(image, rng, p_spatial=self.p_spatial)
      return {
          "view_v1": np.ascontiguousarray(v1, np.float32),
          "view_v2": np.ascontiguousarray(v2, np.float32),
          "position": np.float32(element["position"]),
      }
    i1, i2 = jitter(image, rng), jitter(image, rng)
    v1, _ = spatial(i1, rng, p_spatial=self.p_spatial)
    v2, _ = spatial(i2, rng, p_spatial=self.p_spatial)
    return {
        "view_i1": i1,
        "view_i2": i2,
        "view_v1": v1,
        "view_v2": v2,
        "position": np.float32(element["position"]),
    }


class SegmentationCrop(grain.transforms.RandomMap):
  """slice -> {"image" f32 [p, p, C], "labels" int32 [p, p]}: random pad/crop, then (if
  `augment`) mirror + spatial with p 0.67 (official prepare_supervised)."""

  def __init__(
      self,
      patch_size: int,
      augment: bool = True,
      minmax_slices: bool = False,
      p_spatial: float = 0.67,
  ):
    self.patch_size, self.augment = int(patch_size), bool(augment)
    self.minmax_slices, self.p_spatial = bool(minmax_slices), float(p_spatial)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    image, coords = medical.pad_or_crop(element["image"], self.patch_size, "random", rng)
    labels, _ = medical.pad_or_crop(element["labels"], self.patch_size, "fixed", coords=coords)
    if self.minmax_slices:
      image = minmax(image)
    if self.augment:
      image, labels = spatial(image, rng, labels, p_spatial=self.p_spatial)
    return {
        "image": np.ascontiguousarray(image, np.float32),
        "labels": np.ascontiguousarray(labels, np.int32),
    }
