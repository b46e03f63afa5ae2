"""PSNR / SSIM with the BasicSR protocol, on host numpy arrays.

Follows basicsr/metrics/psnr_ssim.py (`calculate_psnr`, `calculate_ssim`, `_ssim`)
as used by DCPT / MaskDCPT: RGB (no Y channel), float64 arithmetic, SSIM with an
11x11 Gaussian window (sigma 1.5) per channel, 'valid' filtering (BasicSR crops 5
pixels of the filtered maps), averaged over channels. Images are HWC (or HW),
uint8 or float in [0, data_range]; round float network outputs with `to_uint8`
first, as BasicSR's `tensor2img` does before scoring.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from jaxmilab.evaluation import base as evaluation_base

# BasicSR `_ssim`: cv2.getGaussianKernel(11, 1.5), outer product, 'valid' region.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _gaussian_kernel(size: int, sigma: float) -> np.ndarray:
  """1-D normalized Gaussian, the same numbers as cv2.getGaussianKernel(size, sigma)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  k = np.exp(-(x**2) / (2.0 * sigma**2))
  return k / k.sum()


def to_uint8(x) -> np.ndarray:
  """round(clip(x, 0, 1) * 255) as uint8, for float images in [0, 1] (BasicSR tensor2img)."""
  x = np.asarray(x, dtype=np.float64)
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _prepare(
    pred, target, data_range: float, crop_border: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
  """Checks shapes / ranges, crops borders, returns float64 [H, W, C] pairs."""
  pred = np.asarray(pred)
  target = np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(
        f"{name}: pred has shape {pred.shape} but target has shape {target.shape}; "
        "they must be the same HWC (or HW) shape."
    )
  if pred.ndim == 2:
    pred, target = pred[..., None], target[..., None]
  if pred.ndim != 3:
    raise ValueError(
        f"{name}: expected an HWC (or HW) image, got shape {pred.shape}; "
        f"use {name}_batch for [N, H, W, C] batches."
    )
  if not data_range > 0:
    raise ValueError(f"{name}: data_range must be positive, got {data_range}.")
  crop_border = int(crop_border)
  h, w = pred.shape[:2]
  if crop_border < 0 or 2 * crop_border >= min(h, w):
    raise ValueError(
        f"{name}: crop_border={crop_border} is invalid for an image of shape {pred.shape}; "
        "it must be >= 0 and leave at least one pixel."
    )
  out = []
  for label, img in (("pred", pred), ("target", target)):
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
      raise TypeError(f"{name}: {label} has dtype {img.dtype}; pass uint8 or float images.")
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
      raise ValueError(f"{name}: {label} contains NaN or inf.")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > data_range:
      raise ValueError(
          f"{name}: {label} values span [{lo}, {hi}], outside [0, data_range={data_range}]; "
          "clip/round float outputs first (e.g. to_uint8(x) for images in [0, 1])."
      )
    if crop_border:
      img = img[crop_border:-crop_border, crop_border:-crop_border, :]
    out.append(img)
  return out[0], out[1]


def psnr(pred, target, *, data_range: float = 255.0, crop_border: int = 0) -> float:
  """PSNR in dB over all pixels and channels (BasicSR calculate_psnr); inf when identical."""
  a, b = _prepare(pred, target, data_range, crop_border, "psnr")
  mse = np.mean((a - b) ** 2)
  if mse == 0:
    return float("inf")
  return float(10.0 * np.log10(data_range * data_range / mse))


def _valid_filter(x: np.ndarray, k: np.ndarray) -> np.ndarray:
  """Separable 2-D correlation of [H, W] with k (x) k, 'valid' region only."""
  n = k.shape[0]
  x = np.lib.stride_tricks.sliding_window_view(x, n, axis=0) @ k  # [H-n+1, W]
  return np.lib.stride_tricks.sliding_window_view(x, n, axis=1) @ k  # [H-n+1, W-n+1]


def _ssim_channel(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
  """Mean SSIM map of one channel (BasicSR `_ssim`), [H, W] float64 inputs."""
  c1 = (_SSIM_K1 * data_range) ** 2
  c2 = (_SSIM_K2 * data_range) ** 2
  k = _gaussian_kernel(_SSIM_WINDOW, _SSIM_SIGMA)
  mu1, mu2 = _valid_filter(a, k), _valid_filter(b, k)
  mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  sigma1_sq = _valid_filter(a * a, k) - mu1_sq
  sigma2_sq = _valid_filter(b * b, k) - mu2_sq
  sigma12 = _valid_filter(a * b, k) - mu1_mu2
  ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
      (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
  )
  return float(ssim_map.mean())


def ssim(pred, target, *, data_range: float = 255.0, crop_border: int = 0) -> float:
  """SSIM, 11x11 Gaussian window (sigma 1.5), per channel, averaged (BasicSR calculate_ssim)."""
  a, b = _prepare(pred, target, data_range, crop_border, "ssim")
  h, w = a.shape[:2]
  if min(h, w) < _SSIM_WINDOW:
    raise ValueError(
        f"ssim: image of shape {a.shape} (after crop_border={crop_border}) is smaller than "
        f"the {_SSIM_WINDOW}x{_SSIM_WINDOW} window; use images of at least that size."
    )
  return float(
      np.mean([_ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[2])])
  )


def _batch(fn, name: str, pred, target, data_range: float, crop_border: int) -> np.ndarray:
  pred = np.asarray(pred)
  target = np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(
        f"{name}: pred has shape {pred.shape} but target has shape {target.shape}; "
        "they must be the same [N, H, W, C] shape."
    )
  if pred.ndim != 4:
    raise ValueError(f"{name}: expected [N, H, W, C] batches, got shape {pred.shape}.")
  return np.array(
      [fn(p, t, data_range=data_range, crop_border=crop_border) for p, t in zip(pred, target)],
      dtype=np.float64,
  )


def psnr_batch(pred, target, *, data_range: float = 255.0, crop_border: int = 0) -> np.ndarray:
  """Per-image PSNR of [N, H, W, C] batches -> [N] float64 (average over a test set afterwards)."""
  return _batch(psnr, "psnr_batch", pred, target, data_range, crop_border)


def ssim_batch(pred, target, *, data_range: float = 255.0, crop_border: int = 0) -> np.ndarray:
  """Per-image SSIM of [N, H, W, C] batches -> [N] float64."""
  return _batch(ssim, "ssim_batch", pred, target, data_range, crop_border)


# ------------------------------------------------------------------------- streaming evaluation

METRICS = ("psnr_input", "psnr", "ssim_input", "ssim")
PSNR_CAP = 100.0  # PSNR of identical images is inf (BasicSR); capped so averages stay finite.


def per_image_scores(
    restored, target, degraded, *, float_images: bool = False
) -> dict[str, np.ndarray]:
  """PSNR / SSIM of each restored and each degraded image against its target.

  restored, target, degraded: [N, H, W, C] floats in [0, 1]. float_images=False scores
  uint8-rounded images (BasicSR `tensor2img` then `calculate_psnr`, DCPT's protocol);
  True scores the clipped float images with data_range 1 (MaskDCPT's option files set
  `image_range: 1.0`). Returns {"psnr", "psnr_input", "ssim", "ssim_input"} -> [N] float64.
  """
  if float_images:
    prep, data_range = (lambda x: np.clip(np.asarray(x, np.float64), 0.0, 1.0)), 1.0
  else:
    prep, data_range = to_uint8, 255.0
  out, gt, lq = prep(restored), prep(target), prep(degraded)
  scores = {
      "psnr_input": [psnr(a, b, data_range=data_range) for a, b in zip(lq, gt)],
      "psnr": [psnr(a, b, data_range=data_range) for a, b in zip(out, gt)],
      "ssim_input": [ssim(a, b, data_range=data_range) for a, b in zip(lq, gt)],
      "ssim": [ssim(a, b, data_range=data_range) for a, b in zip(out, gt)],
  }
  return {k: np.minimum(np.asarray(v, np.float64).reshape(-1), PSNR_CAP) for k, v in scores.items()}


class RestorationEvaluator(evaluation_base.Evaluator):
  """Streaming PSNR / SSIM of restored and degraded images, overall and per degradation type.

  Statistics (all [num_types], created up front): per-type sums of each metric in METRICS
  and per-type image counts; with `with_accuracy`, per-type counts of correct predictions.
  Results: "psnr", "psnr_input", "ssim", "ssim_input" (mean over images), "<metric>/<type>"
  for every type with at least one image and, with accuracy, "accuracy" and
  "accuracy/<type>". A few examples (the first of each type, up to `max_rows`) are kept for
  `images()`: rows of degraded | restored | clean.

  Two ways in: `update(batch, outputs)` (the Method contract: batch "lq", "gt", "label",
  "valid"; outputs `restored_key` and, with accuracy, "pred") or `accumulate(...)` with arrays
  (e.g. OPD, whose images carry per-example valid sizes).
  """

  def __init__(
      self,
      class_names: Sequence[str],
      *,
      restored_key: str = "restored",
      with_accuracy: bool = False,
      float_images: bool = False,
      max_rows: int = 6,
  ):
    super().__init__()
    self.class_names = tuple(class_names) or ("all",)
    self.restored_key = restored_key
    self.with_accuracy = with_accuracy
    self.float_images = float_images
    self.max_rows = max_rows
    self.kept: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    n = len(self.class_names)
    for name in METRICS + ("count",) + (("correct",) if with_accuracy else ()):
      self.add(name, np.zeros(n))

  def accumulate(
      self, restored, target, degraded, labels=None, valid=None, *, predictions=None, sizes=None
  ) -> None:
    """Adds [N, H, W, C] images in [0, 1]; labels [N] type indices (default 0); valid [N] bool
    (False = padding, ignored); predictions [N] (with_accuracy); sizes [N, 2] valid (h, w) of
    each image (top-left crop; default the whole image)."""
    restored, target, degraded = (np.asarray(x) for x in (restored, target, degraded))
    n = restored.shape[0]
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels).astype(np.int64)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid).astype(bool)
    if labels.shape != (n,) or valid.shape != (n,):
      raise ValueError(
          f"RestorationEvaluator: labels {labels.shape} and valid {valid.shape} must "
          f"be [{n}] for {n} images of shape {restored.shape}."
      )
    index = np.flatnonzero(valid)
    if index.size == 0:
      return
    if labels[index].min() < 0 or labels[index].max() >= len(self.class_names):
      raise ValueError(
          f"RestorationEvaluator: labels {np.unique(labels[index])} out of range for "
          f"{len(self.class_names)} types {self.class_names}."
      )
    sums = {k: np.zeros(len(self.class_names)) for k in METRICS}
    for i in index:
      h, w = restored.shape[1:3] if sizes is None else (int(sizes[i][0]), int(sizes[i][1]))
      one = per_image_scores(
          restored[i : i + 1, :h, :w],
          target[i : i + 1, :h, :w],
          degraded[i : i + 1, :h, :w],
          float_images=self.float_images,
      )
      for k in METRICS:
        sums[k][labels[i]] += one[k][0]
      if labels[i] not in self.kept and len(self.kept) < self.max_rows:
        self.kept[int(labels[i])] = tuple(
            np.array(x[i, :h, :w], np.float32) for x in (degraded, restored, target)
        )
    for k in METRICS:
      self.add(k, sums[k])
    self.add("count", np.bincount(labels[index], minlength=len(self.class_names)))
    if self.with_accuracy:
      if predictions is None:
        raise ValueError("RestorationEvaluator(with_accuracy=True) needs predictions.")
      correct = np.asarray(predictions)[index] == labels[index]
      self.add(
          "correct",
          np.bincount(
              labels[index], weights=correct.astype(np.float64), minlength=len(self.class_names)
          ),
      )

  def update(self, batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    if self.restored_key not in outputs:
      raise KeyError(
          f"RestorationEvaluator: eval outputs have no {self.restored_key!r} "
          f"(keys {sorted(outputs)})."
      )
    self.accumulate(
        outputs[self.restored_key],
        batch["gt"],
        batch["lq"],
        batch.get("label"),
        batch.get("valid"),
        predictions=outputs.get("pred"),
    )

  def compute(self) -> dict[str, float]:
    count = self.sums["count"]
    total = count.sum()
    if total == 0:
      raise ValueError("RestorationEvaluator.compute: no valid image was accumulated.")
    keys = METRICS + (("correct",) if self.with_accuracy else ())
    out = {}
    for k in keys:
      name = "accuracy" if k == "correct" else k
      out[name] = float(self.sums[k].sum() / total)
      for i, type_name in enumerate(self.class_names):
        if count[i] > 0:
          out[f"{name}/{type_name}"] = float(self.sums[k][i] / count[i])
    return out

  def images(self) -> np.ndarray | None:
    """Rows (one per kept type, in type order) of degraded | restored | clean, [H, W, 3]."""
    if not self.kept:
      return None
    pad = 2
    rows = []
    for label in sorted(self.kept):
      tiles = [
          np.pad(np.clip(x, 0, 1), ((pad, pad), (pad, pad), (0, 0)), constant_values=1.0)
          for x in self.kept[label]
      ]
      rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows]
    image = np.concatenate(rows, axis=0)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def summarize(
    outputs: Mapping[str, np.ndarray], class_names: Sequence[str], **kwargs
) -> dict[str, float]:
  """One-shot RestorationEvaluator over concatenated host outputs (lq, gt, label, valid,
  restored[, pred])."""
  ev = RestorationEvaluator(class_names, **kwargs)
  ev.update(outputs, outputs)
  return ev.compute()
