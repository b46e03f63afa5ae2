"""Degradations synthesized on the fly: name -> fn(image, rng, level=None) -> degraded image.

Every function takes a float32 [H, W, C] image in [0, 1] and a numpy Generator, and returns a
float32 image of the same shape in [0, 1]. All randomness comes from `rng` (pure numpy,
no global state), so a grain worker that owns a per-record rng reproduces the same output.
`level=None` draws the strength from the default range; a value fixes it (units below).
The label of a degraded sample is the index of its type in the task set (DCPT, ICLR 2025).

This module holds the first five types and the registry; the rest of the 19 UIR-2.5M types
(MaskDCPT) live in `jaxmilab.data.uir_degradations`, which registers itself here on import.
Every registered name has a tuple of discrete levels (`LEVELS[name]`, `level_key`,
`level_from_key`): eval and the offline builder pick one explicitly, e.g.
`apply("gaussian_noise", x, rng, level=25)`. With `level=None` the five types below keep
their continuous default ranges; the UIR types draw one of their levels uniformly.
"""

from __future__ import annotations

import dataclasses
import io
import math
import types
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

Degradation = Callable[..., np.ndarray]

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


def gaussian_noise(image: np.ndarray, rng: np.random.Generator,
                   level: float | None = None) -> np.ndarray:
  """Additive white Gaussian noise; level = sigma on the 0-255 scale (default 15-50)."""
  image = _check(image, "gaussian_noise")
  sigma = _uniform(rng, NOISE_SIGMA_RANGE) if level is None else float(level)
  noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma / 255.0)
  return _finish(image + noise)


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
  rows = sum(t * padded[i:i + h] for i, t in enumerate(taps))
  padded = np.pad(rows, ((0, 0), (r, r), (0, 0)), mode="reflect")
  return sum(t * padded[:, i:i + w] for i, t in enumerate(taps))


def gaussian_blur(image: np.ndarray, rng: np.random.Generator,
                  level: float | None = None) -> np.ndarray:
  """Isotropic Gaussian blur, reflect padding; level = sigma in pixels (default 1-3)."""
  image = _check(image, "gaussian_blur")
  sigma = _uniform(rng, BLUR_SIGMA_RANGE) if level is None else float(level)
  return _finish(_separable_filter(image, gaussian_kernel_1d(sigma)))


# ------------------------------------------------------------------------------ JPEG


def to_uint8(image: np.ndarray) -> np.ndarray:
  """float [0, 1] -> uint8 by rounding (what a saved image holds)."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


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
  hazy: np.ndarray          # [H, W, C] I = J t + A (1 - t)
  transmission: np.ndarray  # [H, W, 1] t = exp(-beta d)
  depth: np.ndarray         # [H, W, 1] d in [HAZE_MIN_DEPTH, 1]
  airlight: float           # A (grey atmospheric light)
  beta: float               # scattering coefficient


def _bilinear_resize(grid: np.ndarray, height: int, width: int) -> np.ndarray:
  """Corner-aligned bilinear upsampling of a small [h, w] grid to [height, width]."""
  gy = np.linspace(0.0, grid.shape[0] - 1, height)
  gx = np.linspace(0.0, grid.shape[1] - 1, width)
  rows = np.stack([np.interp(gx, np.arange(grid.shape[1]), r) for r in grid])  # [h, width]
  return np.stack([np.interp(gy, np.arange(grid.shape[0]), c) for c in rows.T], axis=1)


def synthetic_depth(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """A smooth random depth map [H, W] in [HAZE_MIN_DEPTH, 1]: a tilted ramp plus low-frequency noise."""
  angle = rng.uniform(0.0, 2.0 * np.pi)
  yy, xx = np.meshgrid(np.linspace(0.0, 1.0, height), np.linspace(0.0, 1.0, width), indexing="ij")
  ramp = np.cos(angle) * xx + np.sin(angle) * yy
  bumps = _bilinear_resize(rng.uniform(0.0, 1.0, size=(4, 4)), height, width)
  depth = ramp + bumps
  span = depth.max() - depth.min()
  depth = (depth - depth.min()) / span if span > 0 else np.zeros_like(depth)
  return HAZE_MIN_DEPTH + (1.0 - HAZE_MIN_DEPTH) * depth


def synthesize_haze(image: np.ndarray, rng: np.random.Generator, beta: float | None = None,
                    airlight: float | None = None) -> Haze:
  """Atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d) (Koschmieder / RESIDE)."""
  image = _check(image, "haze")
  beta = _uniform(rng, HAZE_BETA_RANGE) if beta is None else float(beta)
  airlight = _uniform(rng, HAZE_AIRLIGHT_RANGE) if airlight is None else float(airlight)
  depth = synthetic_depth(image.shape[0], image.shape[1], rng)[..., None]  # [H, W, 1]
  t = np.exp(-beta * depth)
  hazy = image * t + airlight * (1.0 - t)
  return Haze(hazy=_finish(hazy), transmission=t.astype(np.float32), depth=depth.astype(np.float32),
              airlight=airlight, beta=beta)


def haze(image: np.ndarray, rng: np.random.Generator, level: float | None = None) -> np.ndarray:
  """Synthetic haze; level = beta (default 0.6-1.8), airlight A drawn in [0.7, 1]."""
  return synthesize_haze(image, rng, beta=level).hazy


# -------------------------------------------------------------------------- low light


def low_light(image: np.ndarray, rng: np.random.Generator,
              level: Sequence[float] | None = None) -> np.ndarray:
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


# --------------------------------------------------------------------------- registry

# Discrete levels of the five types above (units as in their docstrings); `level=None`
# still draws from the continuous default ranges.
GAUSSIAN_NOISE_LEVELS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)  # sigma (0-255); 15/25/50: CBSD68
GAUSSIAN_BLUR_LEVELS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # sigma (px); Real-ESRGAN [0.2, 3]+
JPEG_LEVELS = tuple(range(10, 95, 5))  # quality 10..90 (FBCNN trains on 10-95)
HAZE_LEVELS = (0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)  # beta; RESIDE [0.6, 1.8] widened
LOW_LIGHT_LEVELS = tuple((g, s, 3.0) for g in (1.5, 2.0, 2.5) for s in (0.2, 0.35, 0.5))

_REGISTRY: dict[str, Degradation] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "jpeg": jpeg,
    "haze": haze,
    "low_light": low_light,
}
_LEVELS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": GAUSSIAN_NOISE_LEVELS,
    "gaussian_blur": GAUSSIAN_BLUR_LEVELS,
    "jpeg": JPEG_LEVELS,
    "haze": HAZE_LEVELS,
    "low_light": LOW_LIGHT_LEVELS,
}
# Types that exist only as real paired data (no synthetic counterpart): name -> sources.
_REAL_ONLY: dict[str, str] = {}

DEGRADATIONS: Mapping[str, Degradation] = types.MappingProxyType(_REGISTRY)
LEVELS: Mapping[str, tuple[Any, ...]] = types.MappingProxyType(_LEVELS)
REAL_ONLY: Mapping[str, str] = types.MappingProxyType(_REAL_ONLY)

# Named, ordered task sets: the label of a sample is the index of its type here
# (more sets, e.g. "5d", "10d", "12d", "uir19", are added by uir_degradations).
_TASK_SETS: dict[str, tuple[str, ...]] = {
    "5syn": ("gaussian_noise", "gaussian_blur", "jpeg", "haze", "low_light"),
}
TASK_SETS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(_TASK_SETS)
# Task set -> {type: levels used by that set}; a type missing here uses all of LEVELS[type].
_TASK_LEVELS: dict[str, dict[str, tuple[Any, ...]]] = {}
TASK_LEVELS: Mapping[str, Mapping[str, tuple[Any, ...]]] = types.MappingProxyType(_TASK_LEVELS)


def register(name: str, fn: Degradation, levels: Sequence[Any]) -> None:
  """Adds degradation `name` (fn(image, rng, level=None)) with its discrete levels."""
  if name in _REGISTRY or name in _REAL_ONLY:
    raise ValueError(f"Degradation {name!r} is already registered.")
  levels = tuple(levels)
  keys = [level_key(v) for v in levels]
  if not levels or len(set(keys)) != len(keys):
    raise ValueError(f"Degradation {name!r}: levels must be non-empty and distinct, got {levels}.")
  _REGISTRY[name] = fn
  _LEVELS[name] = levels


def register_real_only(name: str, sources: str) -> None:
  """Declares a type that only real paired data provides (no synthesis)."""
  if name in _REGISTRY or name in _REAL_ONLY:
    raise ValueError(f"Degradation {name!r} is already registered.")
  _REAL_ONLY[name] = sources


def register_task_set(name: str, type_names: Sequence[str],
                      levels: Mapping[str, Sequence[Any]] | None = None) -> None:
  """Adds a named task set (label = index) and optional per-type level restrictions."""
  if name in _TASK_SETS:
    raise ValueError(f"Task set {name!r} is already registered.")
  _TASK_SETS[name] = tuple(type_names)
  _TASK_LEVELS[name] = {k: tuple(v) for k, v in (levels or {}).items()}


def level_key(level: Any) -> str:
  """A short readable id of a level, unique per type: 25 -> "25", ("gaussian_noise", 25) -> "gaussian_noise/25"."""
  if isinstance(level, (tuple, list)):
    return "/".join(level_key(v) for v in level)
  if isinstance(level, float):
    return f"{level:g}"
  return str(level)


def level_from_key(name: str, key: str) -> Any:
  """The level of degradation `name` whose `level_key` is `key` (ValueError listing the valid keys)."""
  levels = get_levels(name)
  for level in levels:
    if level_key(level) == str(key):
      return level
  raise ValueError(f"Degradation {name!r} has no level {key!r}. Levels: "
                   f"{', '.join(level_key(v) for v in levels)}.")


def get_levels(name: str) -> tuple[Any, ...]:
  """The discrete levels of degradation `name`."""
  get(name)
  return _LEVELS[name]


def task_levels(task_set: str, name: str) -> tuple[Any, ...]:
  """Levels that task set `task_set` uses for type `name` (all levels unless restricted)."""
  return _TASK_LEVELS.get(task_set, {}).get(name, get_levels(name))


def get(name: str) -> Degradation:
  """The degradation function called `name`."""
  try:
    return DEGRADATIONS[name]
  except KeyError:
    if name in REAL_ONLY:
      raise ValueError(f"Degradation {name!r} has no synthetic counterpart: it comes only from real "
                       f"paired data ({REAL_ONLY[name]}). Read it with jaxmilab.data.paired_folders "
                       f"or the uir2p5m tfds builder.") from None
    raise ValueError(f"Unknown degradation {name!r}. Available: {', '.join(DEGRADATIONS)}.") from None


def resolve(spec: Any, key: str = "config.data.degradations") -> tuple[str, ...]:
  """A task-set name ("5syn") or a sequence of degradation names -> validated tuple of names."""
  if isinstance(spec, str):
    spec = TASK_SETS.get(spec, (spec,))
  names = tuple(spec)
  real = [n for n in names if n in REAL_ONLY]
  if real:
    raise ValueError(f"{key}={names!r} holds real-only types {real} (no synthetic counterpart: "
                     f"{'; '.join(f'{n}: {REAL_ONLY[n]}' for n in real)}). Use a synthetic task set "
                     f"({', '.join(n for n, t in TASK_SETS.items() if not set(t) & set(REAL_ONLY))}) "
                     f"or read the real pairs with jaxmilab.data.paired_folders.")
  unknown = [n for n in names if n not in DEGRADATIONS]
  if unknown or not names:
    raise ValueError(f"{key}={names!r}: unknown or empty degradation names {unknown}. Use a task set "
                     f"({', '.join(TASK_SETS)}) or names from: {', '.join(DEGRADATIONS)}.")
  if len(set(names)) != len(names):
    raise ValueError(f"{key}={names!r} repeats a name; each type must appear once (label = index).")
  return names


def apply(name: str, image: np.ndarray, rng: np.random.Generator, level: Any = None) -> np.ndarray:
  """Applies degradation `name` to `image` with `rng`."""
  return get(name)(image, rng, level)


# The other UIR-2.5M types register themselves into the tables above (import at the end so
# that everything they use from this module exists).
from jaxmilab.data import uir_degradations as _uir  # noqa: E402,F401  pylint: disable=g-import-not-at-top,unused-import
