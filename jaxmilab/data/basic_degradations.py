"""The five basic synthesized degradations (DCPT's quickstart set "5syn"): Gaussian noise,
Gaussian blur, JPEG, haze and low light, as fn(image, rng, level=None) -> degraded image.

Every function takes a float32 [H, W, C] image in [0, 1] and a numpy Generator, and returns a
float32 image of the same shape in [0, 1]. All randomness comes from `rng` (pure numpy, no
global state), so a grain worker that owns a per-record rng reproduces the same output.
`level=None` draws the strength from the default continuous range; a value fixes it (units
below); each type's discrete levels (for eval and the offline builder) are the *_LEVELS tuples.
This is a leaf module: the registry of names, levels and task sets is
`jaxmilab.data.degradations`, which imports this family and `uir_degradations`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Sequence

import numpy as np
from PIL import Image

from jaxmilab.evaluation.restoration import to_uint8  # round(clip(x) * 255): a saved image

# Default strength ranges (uniform draws).
# Noise sigma on the 0-255 scale: 15-50 covers the sigma 15/25/50 all-in-one benchmarks
# (AirNet / PromptIR / DCPT denoising on CBSD68).
NOISE_SIGMA_RANGE = (15.0, 50.0)
# Isotropic Gaussian blur sigma in pixels: Real-ESRGAN samples [0.2, 3]; the lower end is
# raised to 1 so that the type stays recognisable on small training crops.
BLUR_SIGMA_RANGE = (1.0, 3.0)
# JPEG quality: the 10/20/30/40 levels of JPEG artifact removal (ARCNN, FBCNN).
JPEG_QUALITY_RANGE = (10, 40)
# Haze: RESIDE (Li et al., TIP 2019) samples beta in [0.6, 1.8] and A in [0.7, 1.0].
HAZE_BETA_RANGE = (0.6, 1.8)
HAZE_AIRLIGHT_RANGE = (0.7, 1.0)
HAZE_MIN_DEPTH = 0.3  # The synthetic depth map spans [0.3, 1]: no haze-free pixels.
# Content-following depth: smoothed luminance (bright, low-contrast sky = far), blur sigma px.
HAZE_DEPTH_SMOOTHING = 8.0
# Low light I = scale * J ** gamma + noise, in the spirit of MBLLEN (Lv et al., BMVC 2018)
# synthetic low-light data (gamma darkening plus linear scaling plus sensor noise).
LOW_LIGHT_GAMMA_RANGE = (1.5, 2.5)
LOW_LIGHT_SCALE_RANGE = (0.2, 0.6)
LOW_LIGHT_NOISE_RANGE = (1.0, 6.0)  # sigma on the 0-255 scale


def _finish(image: np.ndarray) -> np.ndarray:
  return np.clip(image, 0.0, 1.0).astype(np.float32)


def _check(image: np.ndarray, name: str) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3:
    raise ValueError(f"degradation {name!r} expects an [H, W, C] image, got shape {image.shape}.")
  return image.astype(np.float32, copy=False)


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
  return float(rng.uniform(bounds[0], bounds[1]))


# ----------------------------------------------------------------------------- noise


def gaussian_noise(
    image: np.ndarray, rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
  """Additive white Gaussian noise; level = sigma on the 0-255 scale (default 15-50)."""
  image = _check(image, "gaussian_noise")
  sigma = _uniform(rng, NOISE_SIGMA_RANGE) if level is None else float(level)
  noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma / 255.0)
  return _finish(image + noise)


def gaussian_noise_released(image: np.ndarray, sigma: float) -> np.ndarray:
  """The released DCPT denoising test input (MILab-PKU/dcpt basicsr/data/paired_image_dataset.py,
  PairedImageDenoiseDataset, phase != train): on the float32 RGB image in [0, 1],
  `np.random.seed(0); img_lq += np.random.normal(0, sigma / 255.0, img_lq.shape)`: the same
  noise (the legacy MT19937 stream seeded 0, HWC order) for every test image, float, NOT
  clipped. Uses its own RandomState(0), which draws exactly that stream, so the global numpy
  state is untouched."""
  image = _check(image, "gaussian_noise_released")
  noise = np.random.RandomState(0).normal(0.0, sigma / 255.0, image.shape)  # float64
  out = image.copy()
  out += noise  # float32 += float64, in place: the released arithmetic
  return out


# ------------------------------------------------------------------------------ blur


def gaussian_kernel_1d(sigma: float, radius: int | None = None) -> np.ndarray:
  """Normalised 1-D Gaussian taps [2r+1], r = ceil(3 sigma) unless given."""
  if sigma <= 0:
    raise ValueError(f"Gaussian blur sigma must be > 0, got {sigma}.")
  radius = int(math.ceil(3.0 * sigma)) if radius is None else int(radius)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return taps / taps.sum()


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
  """Normalised isotropic 2-D Gaussian kernel [2r+1, 2r+1] (sums to 1)."""
  taps = gaussian_kernel_1d(sigma, radius)
  return np.outer(taps, taps)


def _separable_filter(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """Correlates every channel with taps along H then W, reflect (101) padding."""
  r = (len(taps) - 1) // 2
  h, w = image.shape[:2]
  padded = np.pad(image.astype(np.float64), ((r, r), (0, 0), (0, 0)), mode="reflect")
  rows = sum(t * padded[i : i + h] for i, t in enumerate(taps))
  padded = np.pad(rows, ((0, 0), (r, r), (0, 0)), mode="reflect")
  return sum(t * padded[:, i : i + w] for i, t in enumerate(taps))


def gaussian_blur(
    image: np.ndarray, rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
  """Isotropic Gaussian blur, reflect padding; level = sigma in pixels (default 1-3)."""
  image = _check(image, "gaussian_blur")
  sigma = _uniform(rng, BLUR_SIGMA_RANGE) if level is None else float(level)
  return _finish(_separable_filter(image, gaussian_kernel_1d(sigma)))


# ------------------------------------------------------------------------------ JPEG


def jpeg(image: np.ndarray, rng: np.random.Generator, level: int | None = None) -> np.ndarray:
  """JPEG round trip with Pillow's libjpeg codec; level = quality 1-95 (default 10-40)."""
  image = _check(image, "jpeg")
  if level is None:
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
  else:
    quality = int(level)
  if image.shape[-1] not in (1, 3):
    raise ValueError(f"jpeg needs 1 or 3 channels, got shape {image.shape}.")
  pixels = to_uint8(image)
  pil = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  buffer = io.BytesIO()
  pil.save(buffer, format="JPEG", quality=quality)
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    out = np.asarray(decoded, dtype=np.uint8).reshape(image.shape)
  return out.astype(np.float32) / np.float32(255.0)


# ------------------------------------------------------------------------------- haze


@dataclasses.dataclass(frozen=True)
class Haze:
  """A hazy image and the scattering-model parameters that made it."""

  hazy: np.ndarray  # [H, W, C] I = J t + A (1 - t)
  transmission: np.ndarray  # [H, W, 1] t = exp(-beta d)
  depth: np.ndarray  # [H, W, 1] d in [HAZE_MIN_DEPTH, 1]
  airlight: float  # A (grey atmospheric light)
  beta: float  # scattering coefficient


def _bilinear_resize(grid: np.ndarray, height: int, width: int) -> np.ndarray:
  """Corner-aligned bilinear upsampling of a small [h, w] grid to [height, width]."""
  gy = np.linspace(0.0, grid.shape[0] - 1, height)
  gx = np.linspace(0.0, grid.shape[1] - 1, width)
  rows = np.stack([np.interp(gx, np.arange(grid.shape[1]), r) for r in grid])  # [h, width]
  return np.stack([np.interp(gy, np.arange(grid.shape[0]), c) for c in rows.T], axis=1)


def synthetic_depth(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """A smooth random depth map [H, W] in [HAZE_MIN_DEPTH, 1]: a tilted ramp plus low-frequency
  noise, normalised per call (content-independent; kept for callers without an image)."""
  angle = rng.uniform(0.0, 2.0 * np.pi)
  yy, xx = np.meshgrid(np.linspace(0.0, 1.0, height), np.linspace(0.0, 1.0, width), indexing="ij")
  ramp = np.cos(angle) * xx + np.sin(angle) * yy
  bumps = _bilinear_resize(rng.uniform(0.0, 1.0, size=(4, 4)), height, width)
  depth = ramp + bumps
  span = depth.max() - depth.min()
  depth = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
  return HAZE_MIN_DEPTH + (1.0 - HAZE_MIN_DEPTH) * depth


def content_depth(image: np.ndarray) -> np.ndarray:
  """A depth map [H, W] in [HAZE_MIN_DEPTH, 1] that follows the image: the Gaussian-smoothed
  luminance (sigma HAZE_DEPTH_SMOOTHING px) mapped linearly, bright = far.

  A stand-in for RESIDE's estimated scene depth (Li et al., TIP 2019, used a depth network):
  in outdoor photos the sky and distant, low-contrast regions are the brightest, so haze is
  thickest there and thin on dark foreground. It is a pointwise function of a local average
  with fixed bounds (no per-image normalisation), so the depth of a crop equals the depth of
  the whole image at the same pixels away from the crop's border (within ~3 sigma): applying
  haze after cropping is consistent with applying it before."""
  luminance = (
      image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
      if image.shape[-1] >= 3
      else image[..., 0].astype(np.float64)
  )
  smooth = _separable_filter(luminance[..., None], gaussian_kernel_1d(HAZE_DEPTH_SMOOTHING))[..., 0]
  return HAZE_MIN_DEPTH + (1.0 - HAZE_MIN_DEPTH) * np.clip(smooth, 0.0, 1.0)


def synthesize_haze(
    image: np.ndarray,
    rng: np.random.Generator,
    beta: float | None = None,
    airlight: float | None = None,
    depth: str = "random",
) -> Haze:
  """Atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d) (Koschmieder / RESIDE).

  depth: "random" (the registered `haze` type) = synthetic_depth, a smooth random map over the
  image (or crop) it is given, a documented stand-in: RESIDE uses each scene's estimated depth,
  which crops of our photos do not have; "content" = content_depth, which follows the image
  (bright = far) and is crop-consistent. The default stays "random": on the 32 px crops of the
  DCPT smoke run the content depth is nearly flat and the haze class is learnt more slowly
  (loss ratio over 120 steps 0.81 vs 0.73, tests/test_dcpt.py)."""
  image = _check(image, "haze")
  beta = _uniform(rng, HAZE_BETA_RANGE) if beta is None else float(beta)
  airlight = _uniform(rng, HAZE_AIRLIGHT_RANGE) if airlight is None else float(airlight)
  if depth == "random":
    d = synthetic_depth(image.shape[0], image.shape[1], rng)
  elif depth == "content":
    d = content_depth(image)
  else:
    raise ValueError(f"synthesize_haze: depth={depth!r}; use 'random' or 'content'.")
  depth = d[..., None]  # [H, W, 1]
  t = np.exp(-beta * depth)
  hazy = image * t + airlight * (1.0 - t)
  return Haze(
      hazy=_finish(hazy),
      transmission=t.astype(np.float32),
      depth=depth.astype(np.float32),
      airlight=airlight,
      beta=beta,
  )


def haze(image: np.ndarray, rng: np.random.Generator, level: float | None = None) -> np.ndarray:
  """Synthetic haze; level = beta (default 0.6-1.8), airlight A drawn in [0.7, 1]."""
  return synthesize_haze(image, rng, beta=level).hazy


# -------------------------------------------------------------------------- low light


def low_light(
    image: np.ndarray, rng: np.random.Generator, level: Sequence[float] | None = None
) -> np.ndarray:
  """I = scale * J ** gamma + N(0, sigma); level = (gamma, scale, sigma on 0-255) or None."""
  image = _check(image, "low_light")
  if level is None:
    gamma = _uniform(rng, LOW_LIGHT_GAMMA_RANGE)
    scale = _uniform(rng, LOW_LIGHT_SCALE_RANGE)
    sigma = _uniform(rng, LOW_LIGHT_NOISE_RANGE)
  else:
    if len(level) != 3:
      raise ValueError(f"low_light level must be (gamma, scale, noise_sigma), got {level!r}.")
    gamma, scale, sigma = (float(v) for v in level)
  dark = np.float32(scale) * np.power(np.clip(image, 0.0, 1.0), np.float32(gamma))
  noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma / 255.0)
  return _finish(dark + noise)


# Discrete levels of the five types above (units as in their docstrings); `level=None`
# still draws from the continuous default ranges.
GAUSSIAN_NOISE_LEVELS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)  # sigma (0-255); 15/25/50: CBSD68
GAUSSIAN_BLUR_LEVELS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # sigma (px); Real-ESRGAN [0.2, 3]+
JPEG_LEVELS = tuple(range(10, 95, 5))  # quality 10..90 (FBCNN trains on 10-95)
HAZE_LEVELS = (0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)  # beta; RESIDE [0.6, 1.8] widened
LOW_LIGHT_LEVELS = tuple((g, s, 3.0) for g in (1.5, 2.0, 2.5) for s in (0.2, 0.35, 0.5))

# (name, fn, discrete levels) of this family, registered by jaxmilab.data.degradations.
TYPES = (
    ("gaussian_noise", gaussian_noise, GAUSSIAN_NOISE_LEVELS),
    ("gaussian_blur", gaussian_blur, GAUSSIAN_BLUR_LEVELS),
    ("jpeg", jpeg, JPEG_LEVELS),
    ("haze", haze, HAZE_LEVELS),
    ("low_light", low_light, LOW_LIGHT_LEVELS),
)

__all__ = [
    "NOISE_SIGMA_RANGE",
    "BLUR_SIGMA_RANGE",
    "JPEG_QUALITY_RANGE",
    "HAZE_BETA_RANGE",
    "HAZE_AIRLIGHT_RANGE",
    "HAZE_MIN_DEPTH",
    "LOW_LIGHT_GAMMA_RANGE",
    "LOW_LIGHT_SCALE_RANGE",
    "LOW_LIGHT_NOISE_RANGE",
    "GAUSSIAN_NOISE_LEVELS",
    "GAUSSIAN_BLUR_LEVELS",
    "JPEG_LEVELS",
    "HAZE_LEVELS",
    "LOW_LIGHT_LEVELS",
    "gaussian_noise",
    "gaussian_noise_released",
    "gaussian_kernel_1d",
    "gaussian_kernel",
    "gaussian_blur",
    "jpeg",
    "Haze",
    "synthetic_depth",
    "content_depth",
    "synthesize_haze",
    "haze",
    "low_light",
    "to_uint8",
]
