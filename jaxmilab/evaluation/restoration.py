"""PSNR / SSIM with the BasicSR protocol, on host numpy arrays.

Follows basicsr/metrics/psnr_ssim.py (`calculate_psnr`, `calculate_ssim`, `_ssim`)
as used by DCPT / MaskDCPT: RGB (no Y channel), float64 arithmetic, SSIM with an
11x11 Gaussian window (sigma 1.5) per channel, 'valid' filtering (BasicSR crops 5
pixels of the filtered maps), averaged over channels. Images are HWC (or HW),
uint8 or float in [0, data_range]; round float network outputs with `to_uint8`
first, as BasicSR's `tensor2img` does before scoring.
"""

from __future__ import annotations

import numpy as np

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


def _prepare(pred, target, data_range: float, crop_border: int, name: str) -> tuple[np.ndarray, np.ndarray]:
  """Checks shapes / ranges, crops borders, returns float64 [H, W, C] pairs."""
  pred = np.asarray(pred)
  target = np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f"{name}: pred has shape {pred.shape} but target has shape {target.shape}; "
                     "they must be the same HWC (or HW) shape.")
  if pred.ndim == 2:
    pred, target = pred[..., None], target[..., None]
  if pred.ndim != 3:
    raise ValueError(f"{name}: expected an HWC (or HW) image, got shape {pred.shape}; "
                     f"use {name}_batch for [N, H, W, C] batches.")
  if not data_range > 0:
    raise ValueError(f"{name}: data_range must be positive, got {data_range}.")
  crop_border = int(crop_border)
  h, w = pred.shape[:2]
  if crop_border < 0 or 2 * crop_border >= min(h, w):
    raise ValueError(f"{name}: crop_border={crop_border} is invalid for an image of shape {pred.shape}; "
                     "it must be >= 0 and leave at least one pixel.")
  out = []
  for label, img in (("pred", pred), ("target", target)):
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
      raise TypeError(f"{name}: {label} has dtype {img.dtype}; pass uint8 or float images.")
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
      raise ValueError(f"{name}: {label} contains NaN or inf.")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0 or hi > data_range:
      raise ValueError(f"{name}: {label} values span [{lo}, {hi}], outside [0, data_range={data_range}]; "
                       "clip/round float outputs first (e.g. to_uint8(x) for images in [0, 1]).")
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
  ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
  return float(ssim_map.mean())


def ssim(pred, target, *, data_range: float = 255.0, crop_border: int = 0) -> float:
  """SSIM, 11x11 Gaussian window (sigma 1.5), per channel, averaged (BasicSR calculate_ssim)."""
  a, b = _prepare(pred, target, data_range, crop_border, "ssim")
  h, w = a.shape[:2]
  if min(h, w) < _SSIM_WINDOW:
    raise ValueError(f"ssim: image of shape {a.shape} (after crop_border={crop_border}) is smaller than "
                     f"the {_SSIM_WINDOW}x{_SSIM_WINDOW} window; use images of at least that size.")
  return float(np.mean([_ssim_channel(a[..., c], b[..., c], data_range) for c in range(a.shape[2])]))


def _batch(fn, name: str, pred, target, data_range: float, crop_border: int) -> np.ndarray:
  pred = np.asarray(pred)
  target = np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f"{name}: pred has shape {pred.shape} but target has shape {target.shape}; "
                     "they must be the same [N, H, W, C] shape.")
  if pred.ndim != 4:
    raise ValueError(f"{name}: expected [N, H, W, C] batches, got shape {pred.shape}.")
  return np.array([fn(p, t, data_range=data_range, crop_border=crop_border) for p, t in zip(pred, target)],
                  dtype=np.float64)


def psnr_batch(pred, target, *, data_range: float = 255.0, crop_border: int = 0) -> np.ndarray:
  """Per-image PSNR of [N, H, W, C] batches -> [N] float64 (average over a test set afterwards)."""
  return _batch(psnr, "psnr_batch", pred, target, data_range, crop_border)


def ssim_batch(pred, target, *, data_range: float = 255.0, crop_border: int = 0) -> np.ndarray:
  """Per-image SSIM of [N, H, W, C] batches -> [N] float64."""
  return _batch(ssim, "ssim_batch", pred, target, data_range, crop_border)
