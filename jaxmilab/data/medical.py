"""Medical volumes for MACL: synthetic phantoms, NIfTI / DICOM readers, normalisation, layouts.

A volume is an image float32 [D, H, W, C] (D slices, C = 1 for CT / MR, 4 for BraTS) and,
when labelled, int32 labels [D, H, W]. Slice i of a volume of D slices has the position
label pos = (i + 1) / D (PCL / MACL: positions in (0, 1]).

Sources (`config.data.source`):

* `phantoms` (default, offline): synthetic volumes of nested ellipsoids made here
  (`phantom_volume`), `phantom_classes` classes (3-7); every ellipsoid's cross-section
  changes with the slice, inner structures exist only in a band of slices, so position
  carries information as in real cardiac CT / MR.
* `acdc`: `<root>/patientNNN/patientNNN_frameMM.nii.gz` with `..._gt.nii.gz` (ED and ES frames
  of the ACDC training set; each frame is a volume; labels 0 bg, 1 RV, 2 myocardium, 3 LV).
* `chd`: `<root>/ct_NNNN_image.nii.gz` + `ct_NNNN_label.nii.gz` (ImageCHD; labels > 7 -> 0,
  as the official generate_chd.py).
* `mmwhs`: `<root>/ct_train_NNNN_image.nii.gz` + `ct_train_NNNN_label.nii.gz`; label values
  205, 420, 500, 550, 600, 820, 850 -> 1..7, other values > 100 -> 0 (official generate_mmwhs.py).
* `brats`: `<root>/<case>/<case>_{flair,t1,t1ce,t2}.nii.gz` (4 channels) and `<case>_seg.nii.gz`
  (labels 0, 1, 2, 4 -> 0, 1, 2, 3).
* `nifti`: `<root>/images/<name>.nii[.gz]` and optionally `<root>/labels/<name>.nii[.gz]`.
* `dicom`: `<root>/<case>/` folders of one DICOM series each (unlabelled; pre-training only).

A volume's key is its case name (e.g. "patient001_frame01", "ct_1001"); configs select
labelled / test volumes by key lists (the official fixed lists) or by a fixed fraction.

Normalisation as the official preprocessing does it (`normalization`):
  "zscore"        (x - mean) / std over the volume (ACDC, generate_acdc.py);
  "clip_zscore"   clip to the volume's 1st / 99th percentiles, then z-score (CHD, MMWHS);
  "minmax_slice"  per slice and channel (x - min) / (max - min) (BraTS, dataset/BraTS.py);
  "none".
The official scripts also resample ACDC / MMWHS to a fixed in-plane spacing (1.25 / 1.0 mm)
with SimpleITK before training; resample the files beforehand if you need that
(the readers here keep the stored grid).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
from typing import Any, Sequence

import numpy as np

from jaxmilab.data.base import DataError

SOURCES = ("phantoms", "acdc", "chd", "mmwhs", "brats", "nifti", "dicom")
NORMALIZATIONS = ("zscore", "clip_zscore", "minmax_slice", "none")
DEFAULT_NORMALIZATION = {
    "phantoms": "zscore",
    "acdc": "zscore",
    "chd": "clip_zscore",
    "mmwhs": "clip_zscore",
    "brats": "minmax_slice",
    "nifti": "zscore",
    "dicom": "clip_zscore",
}
NUM_CLASSES = {"acdc": 4, "chd": 8, "mmwhs": 8, "brats": 4}
MMWHS_LABELS = {205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")


# ------------------------------------------------------------------------------- readers


def _require(module: str):
  try:
    return __import__(module)
  except ImportError as e:
    raise ImportError(
        f"Reading medical volumes needs {module}: pip install 'jaxmilab[medical]' "
        f"(nibabel, pydicom)."
    ) from e


def read_nifti(path: str) -> np.ndarray:
  """A NIfTI file as float32 [D, H, W] (3-D) or [D, H, W, T] (4-D), slices first.

  nibabel returns the stored array [X, Y, Z(, T)]; the axes are reversed to [Z, Y, X] as
  SimpleITK's GetArrayFromImage (the official preprocessing) does, so slice i is z = i.
  """
  nib = _require("nibabel")
  try:
    image = nib.load(path)
    data = np.asarray(image.dataobj, dtype=np.float32)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f"Cannot read NIfTI file {path!r}: {e}. Check that it is a complete "
        f".nii / .nii.gz file."
    ) from e
  if data.ndim == 2:
    data = data[:, :, None]
  if data.ndim not in (3, 4):
    raise DataError(
        f"NIfTI file {path!r} has shape {data.shape}; expected a 3-D volume "
        f"(or 4-D with channels / frames last)."
    )
  spatial = np.transpose(data[..., 0] if data.ndim == 4 else data, (2, 1, 0))
  if data.ndim == 4:
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0, 3)))
  return np.ascontiguousarray(spatial)


def read_dicom_series(folder: str) -> np.ndarray:
  """The DICOM files of one folder as one float32 volume [D, H, W] in stored units x slope +
  intercept.

  Slices are ordered by ImagePositionPatient along the slice normal (else InstanceNumber,
  else file name); multi-frame files contribute all their frames. Files that are not DICOM
  images (no pixel data) are skipped; differing slice sizes are an error naming the file.
  """
  pydicom = _require("pydicom")
  if not os.path.isdir(folder):
    raise DataError(f"DICOM series folder {folder!r} does not exist.")
  slices = []
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      continue
    try:
      ds = pydicom.dcmread(path)
    except Exception:  # pylint: disable=broad-except
      continue  # not a DICOM file (e.g. a DICOMDIR index or a text file)
    if "PixelData" not in ds:
      continue
    try:
      pixels = ds.pixel_array.astype(np.float32)
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(
          f"Cannot decode the pixels of DICOM file {path!r}: {e}. Compressed transfer "
          f"syntaxes need the matching pydicom plugin (pylibjpeg, gdcm)."
      ) from e
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) > 1:
      raise DataError(
          f"DICOM file {path!r} is a colour image ({pixels.shape}); medical volumes "
          f"must be greyscale."
      )
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1.0) or 1.0) + float(
        getattr(ds, "RescaleIntercept", 0.0) or 0.0
    )
    frames = pixels if pixels.ndim == 3 else pixels[None]
    key = _dicom_order_key(ds, name)
    for f, frame in enumerate(frames):
      slices.append((key, f, path, frame))
  if not slices:
    raise DataError(f"DICOM series folder {folder!r} holds no DICOM image files.")
  slices.sort(key=lambda s: (s[0], s[1]))
  shapes = {s[3].shape for s in slices}
  if len(shapes) != 1:
    odd = next(s[2] for s in slices if s[3].shape != slices[0][3].shape)
    raise DataError(
        f"DICOM series {folder!r}: slices have different sizes {sorted(shapes)} "
        f"(e.g. {odd!r}); a folder must hold one series."
    )
  return np.stack([s[3] for s in slices]).astype(np.float32)


def _dicom_order_key(ds, name: str) -> tuple:
  position = getattr(ds, "ImagePositionPatient", None)
  orientation = getattr(ds, "ImageOrientationPatient", None)
  if position is not None and orientation is not None and len(orientation) == 6:
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return (0, float(np.dot(normal, np.asarray(position, float))), name)
  number = getattr(ds, "InstanceNumber", None)
  if number is not None:
    return (1, float(number), name)
  return (2, 0.0, name)


# ------------------------------------------------------------------------- normalisation


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
  """Per-volume intensity normalisation (module doc) of float [D, H, W, C]."""
  image = np.asarray(image, np.float32)
  if mode == "none":
    return image
  if mode == "zscore":
    return ((image - image.mean()) / max(float(image.std()), 1e-8)).astype(np.float32)
  if mode == "clip_zscore":
    lo, hi = np.percentile(image, 1), np.percentile(image, 99)
    image = np.clip(image, lo, hi)
    return ((image - image.mean()) / max(float(image.std()), 1e-8)).astype(np.float32)
  if mode == "minmax_slice":
    lo = image.min(axis=(1, 2), keepdims=True)
    hi = image.max(axis=(1, 2), keepdims=True)
    return np.where(hi > lo, (image - lo) / np.where(hi > lo, hi - lo, 1.0), image).astype(
        np.float32
    )
  raise ValueError(f"config.data.normalization={mode!r}: use one of {NORMALIZATIONS}.")


def map_labels(labels: np.ndarray, source: str) -> np.ndarray:
  """Raw label values -> class indices for `source` (module doc)."""
  labels = np.rint(np.asarray(labels)).astype(np.int64)
  if source == "chd":
    labels = np.where(labels > 7, 0, labels)
  elif source == "mmwhs":
    out = np.zeros_like(labels)
    for value, index in MMWHS_LABELS.items():
      out[labels == value] = index
    small = (labels > 0) & (labels <= 100)  # already mapped values pass through
    out[small] = labels[small]
    labels = out
  elif source == "brats":
    labels = np.where(labels == 4, 3, labels)
  return labels.astype(np.int32)


# ------------------------------------------------------------------------------ phantoms


def phantom_volume(
    seed: int, num_classes: int = 4, size: int = 64, num_slices: int = 24, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
  """A synthetic labelled volume: image float32 [D, H, W, C], labels int32 [D, H, W].

  Classes 1..K-1 are nested ellipsoids (class k inside class k-1), each with its own random
  centre offset, radii, in-plane rotation and a radius that changes along z, so the
  structures grow, shrink and appear / disappear from slice to slice; the number of slices
  varies by +-25% between volumes. Intensities: a random mean per class, a smooth bias
  field, Gaussian noise; channels (if > 1) see different class contrasts (like MR sequences).
  """
  if not 2 <= num_classes <= 8:
    raise ValueError(f"phantom_classes={num_classes}: phantoms have 2..8 classes (3-7 typical).")
  rng = np.random.default_rng([0x3ACC1, int(seed)])
  depth = max(4, int(round(num_slices * rng.uniform(0.75, 1.25))))
  z = np.linspace(-1.0, 1.0, depth)[:, None, None]
  yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
  labels = np.zeros((depth, size, size), np.int32)
  centre = np.array([0.0, 0.0, 0.0]) + rng.uniform(-0.1, 0.1, 3)
  radii = np.array([1.0, 0.8, 0.85]) * rng.uniform(0.85, 1.0, 3)  # (z, y, x) of the body
  for k in range(1, num_classes):
    if k > 1:  # nested: shrink and shift inside the previous ellipsoid
      shrink = rng.uniform(0.6, 0.8, 3)
      centre = centre + rng.uniform(-0.25, 0.25, 3) * radii * (1 - shrink)
      radii = radii * shrink
    angle = rng.uniform(0, np.pi)
    taper = rng.uniform(-0.4, 0.4)  # cross-section grows or shrinks along z
    cz, cy, cx = centre
    rz, ry, rx = radii
    ca, sa = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy - 0.15 * taper * z, xx - cx
    u, v = ca * dy + sa * dx, -sa * dy + ca * dx
    scale = 1.0 + taper * z
    inside = (((z - cz) / rz) ** 2 + (u / (ry * scale)) ** 2 + (v / (rx * scale)) ** 2) <= 1.0
    labels[inside] = k
  means = rng.uniform(0.1, 1.0, (num_classes, channels))
  means[0] = rng.uniform(0.0, 0.1, channels)  # dark background
  image = means[labels]  # [D, H, W, C]
  bias = (
      1.0
      + 0.15 * np.sin(np.pi * (rng.uniform(0.5, 1.5) * yy + rng.uniform(0, 2)))[None, :, :, None]
  )
  image = image * bias + rng.normal(0.0, 0.06, image.shape)
  return image.astype(np.float32), labels


# ---------------------------------------------------------------------------- volume sets


@dataclasses.dataclass(frozen=True)
class VolumeRef:
  """One volume: its key and how to read it (files, or a phantom seed)."""

  key: str
  image_paths: tuple[str, ...] = ()  # one file per channel (BraTS: 4), or a DICOM folder
  label_path: str | None = None
  phantom_seed: int | None = None


def _nii_files(folder: str) -> list[str]:
  return sorted(
      glob.glob(os.path.join(folder, "*.nii")) + glob.glob(os.path.join(folder, "*.nii.gz"))
  )


def _strip_nii(name: str) -> str:
  return re.sub(r"\.nii(\.gz)?$", "", os.path.basename(name))


def discover(
    source: str, root: str | None, *, phantom_volumes: int = 0, phantom_seed_offset: int = 0
) -> list[VolumeRef]:
  """The volumes of `source` under `root` (module doc layouts), sorted by key."""
  if source not in SOURCES:
    raise ValueError(f"config.data.source={source!r}: use one of {SOURCES}.")
  if source == "phantoms":
    if phantom_volumes < 1:
      raise ValueError(f"config.data.phantom_volumes={phantom_volumes} must be >= 1.")
    return [
        VolumeRef(key=f"phantom_{i:04d}", phantom_seed=phantom_seed_offset + i)
        for i in range(phantom_volumes)
    ]
  if not root:
    raise ValueError(
        f"config.data.root is required for source {source!r} (see "
        f"jaxmilab/data/medical.py for the expected layout)."
    )
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise DataError(f"config.data.root={root!r} does not exist or is not a folder.")
  refs: list[VolumeRef] = []
  if source == "acdc":
    for folder in sorted(glob.glob(os.path.join(root, "patient*"))):
      for image in _nii_files(folder):
        name = _strip_nii(image)
        if not re.search(r"_frame\d+$", name):
          continue  # skips *_gt and *_4d
        gt = [p for p in _nii_files(folder) if _strip_nii(p) == name + "_gt"]
        refs.append(VolumeRef(name, (image,), gt[0] if gt else None))
  elif source in ("chd", "mmwhs"):
    for image in _nii_files(root):
      name = _strip_nii(image)
      if not name.endswith("_image"):
        continue
      key = name[: -len("_image")]
      label = [p for p in _nii_files(root) if _strip_nii(p) == key + "_label"]
      refs.append(VolumeRef(key, (image,), label[0] if label else None))
  elif source == "brats":
    for folder in sorted(d for d in glob.glob(os.path.join(root, "*")) if os.path.isdir(d)):
      case = os.path.basename(folder)
      files = {_strip_nii(p): p for p in _nii_files(folder)}
      missing = [m for m in BRATS_MODALITIES if f"{case}_{m}" not in files]
      if missing:
        raise DataError(
            f"BraTS case folder {folder!r} lacks {missing} "
            f"(expected {case}_<flair|t1|t1ce|t2|seg>.nii.gz)."
        )
      refs.append(
          VolumeRef(
              case, tuple(files[f"{case}_{m}"] for m in BRATS_MODALITIES), files.get(f"{case}_seg")
          )
      )
  elif source == "nifti":
    images = _nii_files(os.path.join(root, "images"))
    labels = {_strip_nii(p): p for p in _nii_files(os.path.join(root, "labels"))}
    refs = [VolumeRef(_strip_nii(p), (p,), labels.get(_strip_nii(p))) for p in images]
  elif source == "dicom":
    refs = [
        VolumeRef(os.path.basename(d), (d,))
        for d in sorted(glob.glob(os.path.join(root, "*")))
        if os.path.isdir(d)
    ]
  if not refs:
    raise DataError(
        f"config.data.root={root!r} holds no {source} volumes; see "
        f"jaxmilab/data/medical.py for the expected layout."
    )
  return sorted(refs, key=lambda r: r.key)


def select(refs: Sequence[VolumeRef], keys: Sequence[Any] | None, what: str) -> list[VolumeRef]:
  """The volumes whose key is in `keys` (ints match the key's trailing number, e.g. 73 ->
  patient073_frame01 and patient073_frame12); an unknown key is an error naming it."""
  if keys is None:
    return list(refs)
  chosen, missing = [], []
  for key in keys:
    if isinstance(key, (int, np.integer)):
      found = [r for r in refs if _trailing_number(r.key) == int(key)]
    else:
      found = [r for r in refs if r.key == str(key)]
    if not found:
      missing.append(key)
    chosen.extend(r for r in found if r not in chosen)
  if missing:
    raise DataError(
        f"{what}: volume key(s) {missing} not found; available: "
        f"{[r.key for r in refs][:20]}{' ...' if len(refs) > 20 else ''}."
    )
  return chosen


def _trailing_number(key: str) -> int | None:
  """The case number of a key: patient073_frame01 -> 73 (ACDC), ct_1001 -> 1001,
  phantom_0007 -> 7."""
  numbers = re.findall(r"\d+", key)
  if not numbers:
    return None
  return int(numbers[0] if key.startswith("patient") else numbers[-1])


def fixed_fraction(refs: Sequence[VolumeRef], fraction: float, seed: int = 0) -> list[VolumeRef]:
  """A fixed subset of round(fraction * N) >= 1 volumes (a seeded permutation of the keys,
  independent of the run's seed, so every run sees the same labelled volumes)."""
  if not 0 < fraction <= 1:
    raise ValueError(f"config.data.labeled_fraction={fraction} must be in (0, 1].")
  order = np.random.default_rng([0x5EED, int(seed)]).permutation(len(refs))
  count = max(1, int(round(fraction * len(refs))))
  return [refs[i] for i in sorted(order[:count])]


class VolumeReader:
  """Reads (and caches) normalised volumes: key -> (image [D, H, W, C], labels [D, H, W] or
  None)."""

  def __init__(
      self,
      source: str,
      normalization: str,
      *,
      phantom_classes: int = 4,
      phantom_size: int = 64,
      phantom_slices: int = 24,
      channels: int = 1,
      cache_size: int = 8,
  ):
    if normalization not in NORMALIZATIONS:
      raise ValueError(f"config.data.normalization={normalization!r}: use one of {NORMALIZATIONS}.")
    self.source, self.normalization = source, normalization
    self.phantom = dict(
        num_classes=int(phantom_classes),
        size=int(phantom_size),
        num_slices=int(phantom_slices),
        channels=int(channels),
    )
    self._read = functools.lru_cache(maxsize=max(1, int(cache_size)))(self._read_uncached)

  def __call__(self, ref: VolumeRef) -> tuple[np.ndarray, np.ndarray | None]:
    return self._read(ref)

  def _read_uncached(self, ref: VolumeRef) -> tuple[np.ndarray, np.ndarray | None]:
    if ref.phantom_seed is not None:
      image, labels = phantom_volume(ref.phantom_seed, **self.phantom)
      return normalize(image, self.normalization), labels
    if self.source == "dicom":
      channels = [read_dicom_series(ref.image_paths[0])]
    else:
      channels = [read_nifti(p) for p in ref.image_paths]
    if len(channels) == 1 and channels[0].ndim == 4:
      image = channels[0]
    else:
      shapes = {c.shape for c in channels}
      if len(shapes) != 1 or channels[0].ndim != 3:
        raise DataError(
            f"Volume {ref.key!r}: channel files {list(ref.image_paths)} have shapes "
            f"{[c.shape for c in channels]}; they must be 3-D volumes of one shape."
        )
      image = np.stack(channels, axis=-1)
    labels = None
    if ref.label_path:
      labels = map_labels(read_nifti(ref.label_path), self.source)
      if labels.shape != image.shape[:3]:
        raise DataError(
            f"Volume {ref.key!r}: labels {ref.label_path!r} have shape {labels.shape}, "
            f"the image {image.shape[:3]}; they must match voxel for voxel."
        )
    return normalize(image, self.normalization), labels


def slice_index(reader: VolumeReader, refs: Sequence[VolumeRef]) -> list[tuple[int, int, int]]:
  """(volume index, slice index, number of slices) for every slice of `refs`."""
  out = []
  for v, ref in enumerate(refs):
    depth = reader(ref)[0].shape[0]
    out.extend((v, i, depth) for i in range(depth))
  return out


def pad_or_crop(
    image: np.ndarray,
    size: int,
    mode: str,
    rng: np.random.Generator | None = None,
    coords: tuple[int, int] | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
  """The official pad_and_or_crop: zero-pad to >= size (centred), then a size x size window
  ("centre", "random", or "fixed" at `coords` = its centre). Works on [H, W, ...]."""
  h, w = image.shape[:2]
  ph, pw = max(size - h, 0), max(size - w, 0)
  if ph or pw:
    pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (image.ndim - 2)
    image = np.pad(image, pad)
    h, w = image.shape[:2]
  half = size // 2
  if mode == "centre":
    hc, wc = h // 2, w // 2
  elif mode == "fixed":
    hc, wc = coords
  elif mode == "random":
    hi_h, hi_w = (h - 1 - half, w - 1 - half) if size % 2 else (h - half, w - half)
    hc, wc = int(rng.integers(half, hi_h + 1)), int(rng.integers(half, hi_w + 1))
  else:
    raise ValueError(f"pad_or_crop mode {mode!r}")
  return image[hc - half : hc - half + size, wc - half : wc - half + size], (hc, wc)


# ------------------------------------------------------------------------ config helpers

# config.data keys (and defaults) shared by medical_pretrain and medical_seg.
COMMON_DEFAULTS = dict(
    source="phantoms",  # phantoms | acdc | chd | mmwhs | brats | nifti | dicom
    root="",  # dataset folder (layouts in this module's doc)
    normalization="",  # "" = the source's official one (DEFAULT_NORMALIZATION)
    channels=1,  # phantom channels (BraTS-like: 4)
    phantom_volumes=0,  # 0 = the dataset's default count
    phantom_classes=4,
    phantom_size=64,
    phantom_slices=24,
    phantom_seed_offset=0,
    patch_size=64,
    p_spatial=0.67,
    worker_count=0,
    read_threads=4,
    cache_size=64,
)


def reader_from_config(opts: Any) -> VolumeReader:
  """The VolumeReader of a dataset's options view of config.data (keys of COMMON_DEFAULTS)."""
  source = opts.source or "phantoms"
  if source not in SOURCES:
    raise ValueError(f"config.data.source={source!r}: use one of {SOURCES}.")
  return VolumeReader(
      source,
      opts.normalization or DEFAULT_NORMALIZATION[source],
      phantom_classes=int(opts.phantom_classes),
      phantom_size=int(opts.phantom_size),
      phantom_slices=int(opts.phantom_slices),
      channels=int(opts.channels or 1),
      cache_size=int(opts.cache_size),
  )


def refs_from_config(
    opts: Any, *, count_key: str = "phantom_volumes", default_count: int = 16, seed_offset: int = 0
) -> list[VolumeRef]:
  """The volumes of an options view of config.data; phantoms: `opts[count_key]` of them (0 =
  `default_count`)."""
  return discover(
      opts.source or "phantoms",
      opts.root,
      phantom_volumes=int(opts[count_key] or default_count),
      phantom_seed_offset=int(opts.phantom_seed_offset) + seed_offset,
  )


def check_patch(patch: int, what: str = "config.data.patch_size") -> int:
  patch = int(patch)
  if patch < 16:
    raise ValueError(f"{what}={patch} must be >= 16 (the U-Net pools 4 times).")
  return patch
