"""The 19 UIR-2.5M degradation types (MaskDCPT, arXiv 2510.13282) with their levels.

Every function is `fn(image, rng, level=None) -> image`: float32 [H, W, C] in [0, 1] in and
out, all randomness from the numpy Generator passed in (pure numpy / scipy / Pillow, no
global state), so grain workers and `build_uir` worker processes reproduce the same sample
from the same rng. `level` picks one of the type's discrete levels (`degradations.LEVELS`);
None draws one uniformly. `jaxmilab.data.degradations` registers TYPES, REAL_ONLY_TYPES and
TASK_SETS below (this module is a leaf: it imports only the basic family).

The 19 types follow the UIR-2.5M table of the MaskDCPT README (assets/maskdcpt_dataset_table.png):

  #  name                     abbrev family      synthesis here               real pairs in UIR-2.5M
  0  noise                    GN     noise       gaussian / poisson / s&p     -
  1  real_noise               RN     noise       NONE (real only)             SIDD
  2  motion_blur              MB     blur        linear motion kernel         RSBlur (real part)
  3  defocus_blur             DB     blur        disk (pillbox) kernel        (DPDD, LFDOF)
  4  gaussian_sinc_blur       GB     blur        iso / aniso Gaussian, sinc   -
  5  jpeg                     J      compression Pillow libjpeg round trip    -
  6  haze                     H      weather     scattering model             (RESIDE-beta)
  7  rain_streak              RS     weather     additive oriented streaks    RealRain-1k, RainDS,
                                                                              OutdoorRain
  8  raindrop                 RD     weather     refracting drops             (RainDrop, RainDS)
  9  rain_streak_raindrop     RSD    weather     streaks + drops              RainDS real
  10 snow                     S      weather     alpha-composited flakes      (Snow100K, SRRS, CSD)
  11 mosaic                   MS     others      RGGB Bayer + OpenCV EA (DCPT) -
  12 low_light                LL     others      gamma + scale + noise        LoL-v1, LoL-v2 (real)
  13 moire                    MR     others      colour interference pattern  (RDNet screen photos)
  14 blur_jpeg                -      mixed       Gaussian blur -> JPEG        RealBlur-J, REDS
  15 blur_rain                -      mixed       motion blur -> rain streaks  RainDropClarity-Day
  16 blur_low_light_noise     -      mixed       motion blur -> dark -> noise (LoL-Blur)
  17 low_light_haze_rain_snow -      mixed       the 11 CDD-11 combinations   (CDD)
  18 down_noise_blur_jpeg     -      mixed       blur, down x s, noise, JPEG  -

Only `real_noise` (SIDD) has no synthetic counterpart: `degradations.get("real_noise")`
raises and points to `paired_folders` / the `uir2p5m` builder. The real parts of the other
types (real rain, RSBlur, LoL real captures, RealBlur-J, RainDropClarity) exist only as real
paired data as well; they are read from folders, not synthesized. Sources in parentheses are
themselves synthetic or rendered datasets that this module approximates with a model.

Extra types outside UIR-19: "inpainting" (DCPT 10D: 5-10 polylines, thickness 5-10, white or
black) and the fine-grained members of the grouped types ("poisson_noise",
"salt_pepper_noise", "anisotropic_blur", "sinc_blur", plus "gaussian_noise" and
"gaussian_blur" from degradations.py), so eval can pick e.g. gaussian noise at sigma 25.

Levels per type (units; the grouped types' levels are (member, member level)):
noise 22 (gaussian sigma 5..50, poisson peak 4..128, s&p amount 0.01..0.2), real_noise 1
(its source), motion_blur 14 (length 5..31 px), defocus_blur 10 (radius 1..10 px),
gaussian_sinc_blur 22 (8 iso sigmas, 6 aniso sigma pairs, 8 sinc cutoffs), jpeg 17 (quality
10..90), haze 9 (beta), rain_streak 12 (density x length), raindrop 6 (count),
rain_streak_raindrop 9, snow 8 (density x flake size), mosaic 5 (CFA noise sigma), low_light 9
(gamma x scale), moire 9 (period x amplitude), blur_jpeg 9, blur_rain 9,
blur_low_light_noise 9, low_light_haze_rain_snow 11, down_noise_blur_jpeg 27: 218 in all.

Task sets (label = index; `degradations.TASK_SETS`, levels in `degradations.TASK_LEVELS`):
"5d" and "10d" (DCPT), "12d" (MaskDCPT Table, 12D) and "uir19" name the types of the paper's
tasks; "12d" and "uir19" contain `real_noise`, which only real data provides, so on-the-fly
synthesis uses "12d_syn" / "uir19_syn" (the same sets without it); "uir_noise_jpeg" (the noise
and JPEG families) is the quickstart's pre-training set. The paper evaluates 5D/10D/12D
on real benchmark sets (Rain100L, SOTS, GoPro, LOL-v1, DPDD, Snow100K, SIDD, ...): read those
with `paired_folders`; these synthetic sets are their stand-ins for pre-training and smoke runs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from scipy import signal
from scipy import special

from jaxmilab.evaluation.restoration import to_uint8

from jaxmilab.data import basic_degradations as D

# ------------------------------------------------------------------------------ helpers


def _pick(rng: np.random.Generator, levels: Sequence[Any], level: Any) -> Any:
  """`level` if given, else one of `levels` drawn uniformly from rng."""
  if level is not None:
    return level
  return levels[int(rng.integers(len(levels)))]


def filter2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Correlates every channel of [H, W, C] with a 2-D kernel [k, k'], reflect (101) padding."""
  kh, kw = kernel.shape
  ph, pw = kh // 2, kw // 2
  padded = np.pad(
      image.astype(np.float64), ((ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0)), mode="reflect"
  )
  out = signal.fftconvolve(
      padded, kernel[::-1, ::-1, None].astype(np.float64), mode="valid", axes=(0, 1)
  )
  return out  # [H, W, C] float64


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic resize of float [H, W, C] with Pillow (per channel, float mode "F")."""
  chans = [
      np.asarray(
          Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
              (width, height), Image.BICUBIC
          )
      )
      for c in range(image.shape[-1])
  ]
  return np.stack(chans, axis=-1)


# -------------------------------------------------------------------------------- noise

POISSON_PEAKS = (4, 8, 16, 32, 64, 128)  # photons at intensity 1: variance = mean / peak
SALT_PEPPER_AMOUNTS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2)  # fraction of pixels hit


def poisson_noise(
    image: np.ndarray, rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
  """Shot noise: lq = Poisson(peak * x) / peak, so Var[lq] = x / peak; level = peak."""
  image = D._check(image, "poisson_noise")  # pylint: disable=protected-access
  peak = float(_pick(rng, POISSON_PEAKS, level))
  counts = rng.poisson(np.clip(image, 0.0, 1.0).astype(np.float64) * peak)
  return D._finish(counts / peak)  # pylint: disable=protected-access


def salt_pepper_noise(
    image: np.ndarray, rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
  """Impulse noise: a fraction `level` of pixels (all channels) set to 0 or 1, half each."""
  image = D._check(image, "salt_pepper_noise")  # pylint: disable=protected-access
  amount = float(_pick(rng, SALT_PEPPER_AMOUNTS, level))
  u = rng.random(image.shape[:2])
  salt = rng.random(image.shape[:2]) < 0.5
  out = image.copy()
  hit = u < amount
  out[hit & salt] = 1.0
  out[hit & ~salt] = 0.0
  return D._finish(out)  # pylint: disable=protected-access


NOISE_LEVELS = (
    tuple(("gaussian_noise", s) for s in D.GAUSSIAN_NOISE_LEVELS)
    + tuple(("poisson_noise", p) for p in POISSON_PEAKS)
    + tuple(("salt_pepper_noise", a) for a in SALT_PEPPER_AMOUNTS)
)


class _Grouped:
  """A UIR type made of member degradations; level = (member name, member level). Picklable."""

  def __init__(self, name: str, levels: tuple[Any, ...]):
    self.__name__ = name
    self.levels = levels
    self.__doc__ = f"UIR type {name!r}: one of its members; level = (member, member level)."

  def __call__(self, image: np.ndarray, rng: np.random.Generator, level: Any = None) -> np.ndarray:
    member, member_level = _pick(rng, self.levels, level)
    return _MEMBERS[member](image, rng, member_level)


# --------------------------------------------------------------------------------- blur

SINC_KERNEL_SIZE = 21  # Real-ESRGAN / MaskDCPT PairedImageGaussianBlurDataset pad kernels to 21
ANISO_SIGMAS = ((0.5, 2.0), (1.0, 2.0), (1.0, 3.0), (1.0, 4.0), (2.0, 3.0), (2.0, 4.0))
SINC_CUTOFFS = tuple(round(f * math.pi, 6) for f in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
MOTION_LENGTHS = tuple(range(5, 33, 2))  # px, odd: 5..31
DEFOCUS_RADII = tuple(float(r) for r in range(1, 11))  # px


def anisotropic_gaussian_kernel(
    sigma_x: float, sigma_y: float, theta: float, size: int | None = None
) -> np.ndarray:
  """Bivariate Gaussian exp(-x^T S^-1 x / 2), S = R diag(sx^2, sy^2) R^T; x = (col, row), sums to 1.

  `theta` (radians) rotates the sigma_x axis from the column axis towards the row axis.
  """
  if size is None:
    size = 2 * int(math.ceil(3.0 * max(sigma_x, sigma_y))) + 1
  r = size // 2
  c, s = math.cos(theta), math.sin(theta)
  rot = np.array([[c, -s], [s, c]])
  cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
  inv = np.linalg.inv(cov)
  rows, cols = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
  q = inv[0, 0] * cols**2 + 2 * inv[0, 1] * cols * rows + inv[1, 1] * rows**2
  k = np.exp(-0.5 * q)
  return k / k.sum()  # [size, size]


def sinc_kernel(cutoff: float, size: int = SINC_KERNEL_SIZE) -> np.ndarray:
  """Circular low-pass (2-D sinc) kernel: k(r) = wc J1(wc r) / (2 pi r), normalised to sum 1."""
  r = size // 2
  rows, cols = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
  dist = np.hypot(rows, cols)
  with np.errstate(divide="ignore", invalid="ignore"):
    k = cutoff * special.j1(cutoff * dist) / (2.0 * math.pi * dist)
  k[r, r] = cutoff**2 / (4.0 * math.pi)  # the limit at r = 0
  return k / k.sum()


def motion_kernel(length: int, angle: float, *, normalize: bool = True) -> np.ndarray:
  """A straight motion path of `length` px at `angle` (radians, from the column axis towards
  -rows, i.e. counter-clockwise on screen), anti-aliased by bilinear splatting; [L+2, L+2]."""
  size = int(length) + 2 + (int(length) + 1) % 2  # odd, room for the splat
  r = size // 2
  k = np.zeros((size, size), np.float64)
  t = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, 16 * int(length))
  x = r + t * math.cos(angle)  # column
  y = r - t * math.sin(angle)  # row (rows grow downwards)
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = x - x0, y - y0
  for dy, dx, w in (
      (0, 0, (1 - fx) * (1 - fy)),
      (0, 1, fx * (1 - fy)),
      (1, 0, (1 - fx) * fy),
      (1, 1, fx * fy),
  ):
    np.add.at(k, (y0 + dy, x0 + dx), w)
  return k / k.sum() if normalize else k / k.max()


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
  """Defocus (pillbox) kernel: the area fraction of each pixel inside a disk of `radius`, sum 1."""
  r = int(math.ceil(radius))
  size = 2 * r + 1
  offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
  grid = np.arange(-r, r + 1)
  ys = (grid[:, None] + offsets[None, :]).reshape(-1)  # [size * s]
  inside = (ys[:, None] ** 2 + ys[None, :] ** 2) <= radius**2  # [size*s, size*s]
  k = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
  return k / k.sum()


def kernel_blur(image: np.ndarray, name: str, kernel: np.ndarray) -> np.ndarray:
  """The checked image `name` received, correlated with `kernel` (`filter2d`), clipped to [0, 1]
  as float32: the common tail of the kernel blurs below."""
  image = D._check(image, name)  # pylint: disable=protected-access
  return D._finish(filter2d(image, kernel))  # pylint: disable=protected-access


def anisotropic_blur(
    image: np.ndarray, rng: np.random.Generator, level: tuple[float, float] | None = None
) -> np.ndarray:
  """Anisotropic Gaussian blur; level = (sigma_x, sigma_y) px, rotation uniform in [0, pi)."""
  sx, sy = _pick(rng, ANISO_SIGMAS, level)
  theta = float(rng.uniform(0.0, math.pi))
  return kernel_blur(image, "anisotropic_blur", anisotropic_gaussian_kernel(sx, sy, theta))


def sinc_blur(
    image: np.ndarray, rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
  """Ringing low-pass (sinc) blur, 21x21 kernel; level = cutoff wc in rad/px (pi/5 .. 0.9 pi)."""
  cutoff = float(_pick(rng, SINC_CUTOFFS, level))
  return kernel_blur(image, "sinc_blur", sinc_kernel(cutoff))


def motion_blur(
    image: np.ndarray, rng: np.random.Generator, level: int | None = None
) -> np.ndarray:
  """Linear motion blur; level = path length in px (5..31), direction uniform in [0, pi)."""
  length = int(_pick(rng, MOTION_LENGTHS, level))
  angle = float(rng.uniform(0.0, math.pi))
  return kernel_blur(image, "motion_blur", motion_kernel(length, angle))


def defocus_blur(
    image: np.ndarray, rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
  """Defocus blur with a disk kernel; level = radius in px (1..10)."""
  radius = float(_pick(rng, DEFOCUS_RADII, level))
  return kernel_blur(image, "defocus_blur", disk_kernel(radius))


# MaskDCPT's released 12D Gaussian-blur set (MILab-PKU/MaskDCPT options/all_in_one/test/
# test_NAFNet_12d.yml `GaussianBlur_Urban100`, PairedImageGaussianBlurDataset in
# basicsr/data/paired_image_dataset.py): Real-ESRGAN's mixed kernels (Wang et al., ICCVW 2021).
MIXED_KERNEL_SIZES = tuple(range(7, 22, 2))  # `kernel_range`: 7..21, one drawn uniformly
MIXED_KERNEL_TYPES = (
    "iso",
    "aniso",
    "generalized_iso",
    "generalized_aniso",
    "plateau_iso",
    "plateau_aniso",
)  # `kernel_list`
MIXED_KERNEL_PROBS = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # `kernel_prob`
MIXED_SINC_PROB = 0.1  # `sinc_prob`
MIXED_BLUR_SIGMA = (0.2, 3.0)  # `blur_sigma` (both axes)
MIXED_BETA_G = (0.5, 4.0)  # `betag_range` (generalized Gaussian)
MIXED_BETA_P = (1.0, 2.0)  # `betap_range` (plateau)


def _shape_exponent(rng: np.random.Generator, low: float, high: float) -> float:
  """Real-ESRGAN's shape parameter: half of the draws in [low, 1), half in [1, high)."""
  if rng.uniform() < 0.5:
    return float(rng.uniform(low, 1.0))
  return float(rng.uniform(1.0, high))


def mixed_kernel(rng: np.random.Generator, size: int) -> np.ndarray:
  """One kernel of the released 12D Gaussian-blur set, [size, size], sums to 1.

  With probability MIXED_SINC_PROB a circular low-pass (sinc) kernel, cutoff uniform in
  [pi/3, pi) for sizes < 13 and [pi/5, pi) otherwise; else a kernel type drawn by
  MIXED_KERNEL_PROBS: q = x^T S^-1 x with S = R diag(sx^2, sy^2) R^T, sx, sy uniform in
  MIXED_BLUR_SIGMA (sy = sx and no rotation for the iso types), rotation uniform in [-pi, pi);
  Gaussian exp(-q / 2), generalized Gaussian exp(-q^beta / 2), plateau 1 / (q^beta + 1).
  """
  if rng.uniform() < MIXED_SINC_PROB:
    cutoff = float(rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi))
    return sinc_kernel(cutoff, size)
  kind = MIXED_KERNEL_TYPES[int(rng.choice(len(MIXED_KERNEL_TYPES), p=MIXED_KERNEL_PROBS))]
  sx = float(rng.uniform(*MIXED_BLUR_SIGMA))
  if kind.endswith("_iso") or kind == "iso":
    sy, theta = sx, 0.0
  else:
    sy = float(rng.uniform(*MIXED_BLUR_SIGMA))
    theta = float(rng.uniform(-math.pi, math.pi))
  r = size // 2
  c, s_ = math.cos(theta), math.sin(theta)
  rot = np.array([[c, -s_], [s_, c]])
  inv = np.linalg.inv(rot @ np.diag([sx**2, sy**2]) @ rot.T)
  rows, cols = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
  q = inv[0, 0] * cols**2 + 2 * inv[0, 1] * cols * rows + inv[1, 1] * rows**2
  if kind.startswith("generalized"):
    k = np.exp(-0.5 * np.power(q, _shape_exponent(rng, *MIXED_BETA_G)))
  elif kind.startswith("plateau"):
    k = 1.0 / (np.power(q, _shape_exponent(rng, *MIXED_BETA_P)) + 1.0)
  else:
    k = np.exp(-0.5 * q)
  return k / k.sum()


def gaussian_sinc_blur_12d(
    image: np.ndarray, rng: np.random.Generator, level: int | None = None
) -> np.ndarray:
  """MaskDCPT's released 12D Gaussian blur: a mixed kernel (`mixed_kernel`) of odd size
  level (7..21, drawn uniformly when None), zero-padded to 21 x 21 as released."""
  size = int(_pick(rng, MIXED_KERNEL_SIZES, level))
  kernel = mixed_kernel(rng, size)
  pad = (SINC_KERNEL_SIZE - size) // 2
  return kernel_blur(image, "gaussian_sinc_blur_12d", np.pad(kernel, pad))


GAUSSIAN_SINC_BLUR_LEVELS = (
    tuple(("gaussian_blur", s) for s in D.GAUSSIAN_BLUR_LEVELS)
    + tuple(("anisotropic_blur", s) for s in ANISO_SIGMAS)
    + tuple(("sinc_blur", c) for c in SINC_CUTOFFS)
)

# ------------------------------------------------------------------------------ weather

# (density of streak seeds per pixel, streak length px): light (Rain100L-like) to heavy.
RAIN_LEVELS = tuple((d, n) for d in (0.002, 0.005, 0.01, 0.02) for n in (11, 21, 31))
RAIN_ANGLE_SPREAD = math.radians(20.0)  # streaks within 20 degrees of vertical


def rain_layer(
    height: int, width: int, rng: np.random.Generator, density: float, length: int, angle: float
) -> np.ndarray:
  """Grey streak layer [H, W] in [0, 1]: random seeds smeared along `angle` (radians, see
  motion_kernel)."""
  seeds = (rng.random((height, width)) < density) * rng.uniform(0.5, 1.0, (height, width))
  streaks = filter2d(seeds[..., None], motion_kernel(length, angle, normalize=False))[..., 0]
  return np.clip(streaks, 0.0, 1.0)


def rain_streak(
    image: np.ndarray, rng: np.random.Generator, level: tuple[float, int] | None = None
) -> np.ndarray:
  """Additive rain streaks (Rain100L/H style): lq = clip(x + opacity * layer); level = (density,
  length)."""
  image = D._check(image, "rain_streak")  # pylint: disable=protected-access
  density, length = _pick(rng, RAIN_LEVELS, level)
  angle = math.pi / 2 + float(rng.uniform(-RAIN_ANGLE_SPREAD, RAIN_ANGLE_SPREAD))
  opacity = float(rng.uniform(0.6, 0.9))
  layer = rain_layer(image.shape[0], image.shape[1], rng, float(density), int(length), angle)
  return D._finish(image + opacity * layer[..., None])  # pylint: disable=protected-access


RAINDROP_LEVELS = (4, 8, 12, 16, 24, 32)  # number of drops


@dataclasses.dataclass(frozen=True)
class Raindrops:
  """An image seen through drops on the lens, and where the drops are."""

  image: np.ndarray  # [H, W, C]
  mask: np.ndarray  # [H, W] bool, True inside a drop


def synthesize_raindrops(image: np.ndarray, rng: np.random.Generator, count: int) -> Raindrops:
  """Drops act as small fish-eye lenses: each shows a flipped, wider, blurred view of its
  surroundings with a darker rim (in the spirit of Qian et al., CVPR 2018); outside: untouched."""
  image = D._check(image, "raindrop")  # pylint: disable=protected-access
  h, w = image.shape[:2]
  blurred = D._separable_filter(image, D.gaussian_kernel_1d(1.5))  # pylint: disable=protected-access
  out = image.astype(np.float64).copy()
  mask = np.zeros((h, w), bool)
  base = max(2.0, 0.04 * min(h, w))
  for _ in range(int(count)):
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry = base * rng.uniform(0.6, 1.6)
    rx = ry * rng.uniform(0.7, 1.1)
    zoom = rng.uniform(1.5, 3.0)
    y0, y1 = max(0, int(cy - ry)), min(h, int(math.ceil(cy + ry)) + 1)
    x0, x1 = max(0, int(cx - rx)), min(w, int(math.ceil(cx + rx)) + 1)
    if y0 >= y1 or x0 >= x1:
      continue
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    inside = d <= 1.0
    if not inside.any():
      continue
    # Inverted, magnified-field view: the drop maps its neighbourhood (zoom x its radius) upside
    # down.
    sy = np.clip(np.round(cy - (yy - cy) * zoom), 0, h - 1).astype(int)
    sx = np.clip(np.round(cx - (xx - cx) * zoom), 0, w - 1).astype(int)
    view = blurred[sy, sx] * (1.0 - 0.35 * d[..., None] ** 2) + 0.08  # darker rim, brighter centre
    region = out[y0:y1, x0:x1]
    region[inside] = view[inside]
    mask[y0:y1, x0:x1] |= inside
  return Raindrops(image=D._finish(out), mask=mask)  # pylint: disable=protected-access


def raindrop(image: np.ndarray, rng: np.random.Generator, level: int | None = None) -> np.ndarray:
  """Raindrops on the lens; level = number of drops."""
  return synthesize_raindrops(image, rng, int(_pick(rng, RAINDROP_LEVELS, level))).image


RAIN_STREAK_RAINDROP_LEVELS = tuple((d, n) for d in (0.002, 0.005, 0.01) for n in (4, 12, 24))


def rain_streak_raindrop(
    image: np.ndarray, rng: np.random.Generator, level: tuple[float, int] | None = None
) -> np.ndarray:
  """Rain streaks (length 21) then raindrops on the lens (RainDS); level = (streak density,
  drops)."""
  density, count = _pick(rng, RAIN_STREAK_RAINDROP_LEVELS, level)
  streaked = rain_streak(image, rng, (float(density), 21))
  return raindrop(streaked, rng, int(count))


# (flake density per pixel, largest flake radius px): Snow100K-S/M/L-like mixtures.
SNOW_LEVELS = tuple((d, s) for d in (0.004, 0.008, 0.016, 0.032) for s in (1.5, 3.0))


def snow_alpha(
    height: int, width: int, rng: np.random.Generator, density: float, size: float
) -> np.ndarray:
  """Opacity of snow [H, W] in [0, 1]: small and large soft flakes, slightly smeared by the fall."""
  alpha = np.zeros((height, width), np.float64)
  for share, radius in ((0.7, 0.6), (0.3, float(size))):
    seeds = (rng.random((height, width)) < density * share) * rng.uniform(0.6, 1.0, (height, width))
    taps = D.gaussian_kernel_1d(max(radius / 2.0, 0.3))
    layer = D._separable_filter(seeds[..., None], taps / taps.max())[..., 0]  # pylint: disable=protected-access
    alpha += layer
  fall = math.pi / 2 + float(rng.uniform(-0.5, 0.5))
  alpha = filter2d(alpha[..., None], motion_kernel(3, fall))[..., 0]
  return np.clip(alpha, 0.0, 1.0) * float(rng.uniform(0.8, 1.0))


def snow(
    image: np.ndarray, rng: np.random.Generator, level: tuple[float, float] | None = None
) -> np.ndarray:
  """White flakes alpha-composited over the scene: lq = x (1 - a) + a; level = (density, size)."""
  image = D._check(image, "snow")  # pylint: disable=protected-access
  density, size = _pick(rng, SNOW_LEVELS, level)
  alpha = snow_alpha(image.shape[0], image.shape[1], rng, float(density), float(size))[..., None]
  return D._finish(image * (1.0 - alpha) + alpha)  # pylint: disable=protected-access


# ------------------------------------------------------------------------------- others

MOSAIC_LEVELS = (0.0, 1.0, 2.0, 4.0, 8.0)  # sensor noise sigma (0-255) on the raw CFA samples


def bayer_masks(height: int, width: int) -> np.ndarray:
  """RGGB colour filter array [H, W, 3] bool: R at (even, even), G at (even, odd) and (odd, even),
  B at (odd, odd)."""
  rows, cols = np.mgrid[0:height, 0:width]
  r = (rows % 2 == 0) & (cols % 2 == 0)
  b = (rows % 2 == 1) & (cols % 2 == 1)
  return np.stack([r, ~(r | b), b], axis=-1)


def bayer_mosaic(image: np.ndarray) -> np.ndarray:
  """The raw RGGB sensor plane [H, W]: each pixel keeps only its CFA channel."""
  masks = bayer_masks(image.shape[0], image.shape[1])
  return (image * masks).sum(axis=-1)


_K_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float64) / 4.0
_K_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64) / 4.0


def demosaic_bilinear(cfa: np.ndarray) -> np.ndarray:
  """Bilinear demosaicking of an RGGB plane [H, W] -> [H, W, 3] (known samples are kept)."""
  masks = bayer_masks(cfa.shape[0], cfa.shape[1])
  planes = masks * cfa[..., None]  # [H, W, 3], zeros where the channel was not sampled
  out = np.empty(planes.shape, np.float64)
  out[..., 0] = filter2d(planes[..., :1], _K_RB)[..., 0]
  out[..., 1] = filter2d(planes[..., 1:2], _K_G)[..., 0]
  out[..., 2] = filter2d(planes[..., 2:], _K_RB)[..., 0]
  return out


def mosaic_bilinear(
    image: np.ndarray, rng: np.random.Generator, level: float | None = None
) -> np.ndarray:
  """RGGB Bayer sampling (+ sensor noise sigma = level on 0-255) then bilinear demosaicking, in
  RGB order: a cleaner alternative to the released pipeline (`mosaic`)."""
  image = D._check(image, "mosaic_bilinear")  # pylint: disable=protected-access
  if image.shape[-1] != 3:
    raise ValueError(f"mosaic_bilinear needs an RGB image, got shape {image.shape}.")
  sigma = float(_pick(rng, MOSAIC_LEVELS, level))
  cfa = bayer_mosaic(image.astype(np.float64))
  if sigma > 0:
    cfa = np.clip(cfa + rng.standard_normal(cfa.shape) * (sigma / 255.0), 0.0, 1.0)
  return D._finish(demosaic_bilinear(cfa))  # pylint: disable=protected-access


def demosaic_released(cfa_uint8: np.ndarray) -> np.ndarray:
  """OpenCV's edge-aware demosaicking as the released DCPT code calls it:
  cv2.cvtColor(CFA, cv2.COLOR_BAYER_BG2BGR_EA) on an RGGB plane (OpenCV names the pattern by
  its second row, so "BG" is RGGB), [H, W] uint8 -> [H, W, 3] uint8 in OpenCV's BGR order."""
  import cv2  # pylint: disable=g-import-not-at-top

  return cv2.cvtColor(np.ascontiguousarray(cfa_uint8), cv2.COLOR_BAYER_BG2BGR_EA)


def mosaic(image: np.ndarray, rng: np.random.Generator, level: float | None = None) -> np.ndarray:
  """The released demosaicking task (MILab-PKU/dcpt basicsr/data/paired_image_dataset.py,
  PairedImageMosaicDataset): the uint8 RGB image -> RGGB CFA (`mosaic_CFA_Bayer`, uint8) ->
  `cv2.cvtColor(CFA, COLOR_BAYER_BG2BGR_EA)`, whose BGR output is used as the RGB input without
  conversion, so red and blue are swapped in the degraded image (the released channel order;
  the network learns the swap). level = sensor noise sigma (0-255) added to the CFA before
  demosaicking: 0 is the released path exactly; the other levels are ours (UIR-2.5M's mosaic
  levels are not published). `mosaic_bilinear` is the RGB-ordered bilinear alternative."""
  image = D._check(image, "mosaic")  # pylint: disable=protected-access
  if image.shape[-1] != 3:
    raise ValueError(f"mosaic needs an RGB image, got shape {image.shape}.")
  sigma = float(_pick(rng, MOSAIC_LEVELS, level))
  pixels = to_uint8(image)  # imfrombytes(float32=False)
  cfa = (pixels * bayer_masks(*pixels.shape[:2])).sum(axis=-1)  # RGGB plane, exact integers
  if sigma > 0:
    cfa = cfa + rng.standard_normal(cfa.shape) * sigma
  cfa = np.clip(np.round(cfa), 0, 255).astype(np.uint8)
  return demosaic_released(cfa).astype(np.float32) / np.float32(255.0)


INPAINTING_LEVELS = tuple((c, t) for c in ("white", "black") for t in range(5, 11))


def polyline_mask(
    height: int, width: int, segments: Sequence[tuple[float, float, float, float]], thickness: int
) -> np.ndarray:
  """[H, W] bool: line segments (x1, y1, x2, y2) drawn `thickness` px wide (Pillow)."""
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  for x1, y1, x2, y2 in segments:
    draw.line([(x1, y1), (x2, y2)], fill=255, width=int(thickness))
  return np.asarray(canvas) > 0


def inpainting_mask(
    height: int, width: int, rng: np.random.Generator, thickness: int
) -> tuple[np.ndarray, int]:
  """5-10 random segments of the given thickness (DCPT 10D inpainting); returns (mask, count)."""
  count = int(rng.integers(5, 11))
  ends = rng.integers(0, [width + 1, height + 1, width + 1, height + 1], size=(count, 4))
  return polyline_mask(height, width, [tuple(map(float, e)) for e in ends], thickness), count


def inpainting(
    image: np.ndarray, rng: np.random.Generator, level: tuple[str, int] | None = None
) -> np.ndarray:
  """Paints 5-10 white or black polylines over the image; level = (colour, thickness 5-10)."""
  image = D._check(image, "inpainting")  # pylint: disable=protected-access
  colour, thickness = _pick(rng, INPAINTING_LEVELS, level)
  mask, _ = inpainting_mask(image.shape[0], image.shape[1], rng, int(thickness))
  out = image.copy()
  out[mask] = 1.0 if colour == "white" else 0.0
  return D._finish(out)  # pylint: disable=protected-access


MOIRE_LEVELS = tuple((p, a) for p in (3.0, 5.0, 8.0) for a in (0.15, 0.3, 0.45))


def moire_pattern(
    height: int, width: int, period: float, angle: float, curvature: float, phases: Sequence[float]
) -> np.ndarray:
  """[H, W, 3] cos(2 pi (u / period + curvature v^2 / (H W)) + phase_c): stripes along `angle`
  (radians, from the column axis), bent by `curvature`, shifted per channel (subpixel layout)."""
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
  u = cols * math.cos(angle) + rows * math.sin(angle)
  v = -cols * math.sin(angle) + rows * math.cos(angle)
  base = 2.0 * math.pi * (u / period + curvature * v**2 / (height * width))
  return np.stack([np.cos(base + p) for p in phases], axis=-1)


def moire(
    image: np.ndarray, rng: np.random.Generator, level: tuple[float, float] | None = None
) -> np.ndarray:
  """Screen-capture moire: lq = x (1 + amplitude * pattern); level = (period px, amplitude)."""
  image = D._check(image, "moire")  # pylint: disable=protected-access
  period, amplitude = _pick(rng, MOIRE_LEVELS, level)
  angle = float(rng.uniform(0.0, math.pi))
  curvature = float(rng.uniform(0.0, 2.0))
  offset = float(rng.uniform(0.0, 2.0 * math.pi))
  phases = [offset + c * 2.0 * math.pi / 3.0 for c in range(image.shape[-1])]
  pattern = moire_pattern(image.shape[0], image.shape[1], float(period), angle, curvature, phases)
  return D._finish(image * (1.0 + float(amplitude) * pattern))  # pylint: disable=protected-access


# -------------------------------------------------------------------------------- mixed

BLUR_JPEG_LEVELS = tuple((s, q) for s in (1.0, 2.0, 3.0) for q in (20, 40, 60))
BLUR_RAIN_LEVELS = tuple((n, d) for n in (9, 15, 21) for d in (0.005, 0.01, 0.02))
# (motion length, gamma, scale): LOL-Blur style darkness after the blur; noise sigma 2-8.
BLUR_LOW_LIGHT_NOISE_LEVELS = tuple(
    (n, g, s) for n in (9, 15, 21) for g, s in ((1.8, 0.4), (2.2, 0.3), (2.6, 0.2))
)
# CDD-11 (Guo et al., OneRestore, ECCV 2024): the 11 combinations of low light, haze, rain, snow.
CDD_LEVELS = (
    ("low",),
    ("haze",),
    ("rain",),
    ("snow",),
    ("low", "haze"),
    ("low", "rain"),
    ("low", "snow"),
    ("haze", "rain"),
    ("haze", "snow"),
    ("low", "haze", "rain"),
    ("low", "haze", "snow"),
)
# (down-scale factor, noise sigma 0-255, JPEG quality): Real-ESRGAN first-order chain.
DOWN_NOISE_BLUR_JPEG_LEVELS = tuple(
    (s, n, q) for s in (2, 3, 4) for n in (5, 15, 25) for q in (30, 50, 70)
)


def blur_jpeg(
    image: np.ndarray, rng: np.random.Generator, level: tuple[float, int] | None = None
) -> np.ndarray:
  """Gaussian blur then JPEG; level = (sigma px, quality)."""
  sigma, quality = _pick(rng, BLUR_JPEG_LEVELS, level)
  return D.jpeg(D.gaussian_blur(image, rng, float(sigma)), rng, int(quality))


def blur_rain(
    image: np.ndarray, rng: np.random.Generator, level: tuple[int, float] | None = None
) -> np.ndarray:
  """Motion blur then rain streaks (length 21); level = (motion length px, streak density)."""
  length, density = _pick(rng, BLUR_RAIN_LEVELS, level)
  return rain_streak(motion_blur(image, rng, int(length)), rng, (float(density), 21))


def blur_low_light_noise(
    image: np.ndarray, rng: np.random.Generator, level: tuple[int, float, float] | None = None
) -> np.ndarray:
  """LOL-Blur-like: motion blur, then darkening s x^g, then noise; level = (length, gamma,
  scale)."""
  length, gamma, scale = _pick(rng, BLUR_LOW_LIGHT_NOISE_LEVELS, level)
  sigma = float(rng.uniform(2.0, 8.0))
  return D.low_light(motion_blur(image, rng, int(length)), rng, (float(gamma), float(scale), sigma))


def low_light_haze_rain_snow(
    image: np.ndarray, rng: np.random.Generator, level: tuple[str, ...] | None = None
) -> np.ndarray:
  """A CDD-11 combination, applied haze -> rain / snow -> low light; level = the components."""
  parts = tuple(_pick(rng, CDD_LEVELS, level))
  unknown = set(parts) - {"low", "haze", "rain", "snow"}
  if unknown or not parts:
    raise ValueError(
        f"low_light_haze_rain_snow level {parts!r}: components must be from "
        f"low, haze, rain, snow."
    )
  out = image
  if "haze" in parts:
    out = D.haze(out, rng, float(rng.uniform(0.6, 1.4)))
  if "rain" in parts:
    out = rain_streak(out, rng, (0.005, 21))
  if "snow" in parts:
    out = snow(out, rng, (0.008, 3.0))
  if "low" in parts:
    out = D.low_light(out, rng, (2.0, 0.35, 3.0))
  return out


def down_noise_blur_jpeg(
    image: np.ndarray, rng: np.random.Generator, level: tuple[int, float, int] | None = None
) -> np.ndarray:
  """Blur (sigma 0.5-2), bicubic down x s, Gaussian noise, JPEG, bicubic up to H x W;
  level = (s, noise sigma 0-255, quality)."""
  image = D._check(image, "down_noise_blur_jpeg")  # pylint: disable=protected-access
  scale, sigma, quality = _pick(rng, DOWN_NOISE_BLUR_JPEG_LEVELS, level)
  h, w = image.shape[:2]
  out = D.gaussian_blur(image, rng, float(rng.uniform(0.5, 2.0)))
  small = _resize(out, max(1, round(h / scale)), max(1, round(w / scale)))
  small = D.gaussian_noise(np.clip(small, 0.0, 1.0), rng, float(sigma))
  small = D.jpeg(small, rng, int(quality))
  return D._finish(_resize(small, h, w))  # pylint: disable=protected-access


# ----------------------------------------------------------------------- UIR-19 table


@dataclasses.dataclass(frozen=True)
class UirType:
  """One row of the UIR-2.5M table (MaskDCPT README, dataset table)."""

  name: str
  abbrev: str  # the table's abbreviation ("" for the mixed rows, which have none)
  family: str
  synthetic: bool  # False: real paired data only
  sources: str  # datasets UIR-2.5M draws this type from (real ones marked)


UIR_TYPES = (
    UirType("noise", "GN", "noise", True, "LSDIR, DF2K, BSD500, WED (531,816)"),
    UirType("real_noise", "RN", "noise", False, "SIDD real (30,608)"),
    UirType(
        "motion_blur", "MB", "blur", True, "GoPro, REDS, RSBlur (217,702); RSBlur real (8,878)"
    ),
    UirType("defocus_blur", "DB", "blur", True, "DPDD, LFDOF (18,261)"),
    UirType("gaussian_sinc_blur", "GB", "blur", True, "LSDIR, DF2K, BSD500, WED (531,816)"),
    UirType("jpeg", "J", "compression", True, "LSDIR, DF2K, BSD500, WED (88,636)"),
    UirType("haze", "H", "weather", True, "RESIDE-beta (72,030)"),
    UirType(
        "rain_streak",
        "RS",
        "weather",
        True,
        "Rain13k, SynRain-13k, RainDS (28,422); RealRain-1k, RainDS, OutdoorRain real (11,150)",
    ),
    UirType("raindrop", "RD", "weather", True, "RainDrop, RainDS (1,861 + 150)"),
    UirType("rain_streak_raindrop", "RSD", "weather", True, "RainDS (1,000); RainDS real (150)"),
    UirType("snow", "S", "weather", True, "Snow100K, SRRS, CSD (73,005)"),
    UirType("mosaic", "MS", "others", True, "LSDIR, DF2K, BSD500, WED (88,636)"),
    UirType(
        "low_light",
        "LL",
        "others",
        True,
        "LoL-v1, LoL-v2-Syn real (1,385); LoL-v2-Real, LSRW (6,289)",
    ),
    UirType("moire", "MR", "others", True, "RDNet (63,180)"),
    UirType("blur_jpeg", "", "mixed", True, "REDS-Avg (8,878); RealBlur-J, REDS real (12,636)"),
    UirType("blur_rain", "", "mixed", True, "RainDropClarity-Day real (14,490)"),
    UirType("blur_low_light_noise", "", "mixed", True, "LoL-Blur (20,400)"),
    UirType("low_light_haze_rain_snow", "", "mixed", True, "CDD (8,281)"),
    UirType("down_noise_blur_jpeg", "", "mixed", True, "LSDIR, NKUSR8K, FFHQ1K (643,328)"),
)
UIR_TYPE_NAMES = tuple(t.name for t in UIR_TYPES)


def uir_pair_counts() -> dict[str, int]:
  """Pairs per UIR-2.5M type: the sum of the counts the table gives for its sources (synthetic
  and real), e.g. noise 531,816, raindrop 1,861 + 150 = 2,011 (MaskDCPT README, dataset table)."""
  counts = {}
  for t in UIR_TYPES:
    numbers = re.findall(r"\d{1,3}(?:,\d{3})+|\d+", " ".join(re.findall(r"\(([^)]*)\)", t.sources)))
    counts[t.name] = sum(int(n.replace(",", "")) for n in numbers)
  return counts


def type_probabilities(
    types: Sequence[str],
    weights: Any,
    key: str = "config.data.type_weights",
    choices: Sequence[str] = ("uniform", "uir_counts"),
) -> np.ndarray:
  """How often each of `types` is drawn, as probabilities (float64, sum 1).

  weights: "uniform" (every type equally often); "uir_counts" (in proportion to the pairs the
  UIR-2.5M table lists for the type, `uir_pair_counts`: noise is drawn ~260x as often as
  raindrop); or one non-negative weight per type. `choices` only names the accepted strings in
  the error of a caller that handles more of them itself.
  """
  types = tuple(types)
  if isinstance(weights, str):
    if weights == "uniform":
      return np.full(len(types), 1.0 / len(types))
    if weights != "uir_counts":
      named = ", ".join(repr(c) for c in choices)
      raise ValueError(f"{key}={weights!r}: use {named} or one weight per type.")
    counts = uir_pair_counts()
    unknown = [t for t in types if t not in counts]
    if unknown:
      raise ValueError(
          f"{key}='uir_counts': {unknown} are not UIR-2.5M types "
          f"({', '.join(counts)}); use a UIR task set or explicit weights."
      )
    weights = [counts[t] for t in types]
  w = np.asarray(weights, np.float64)
  if w.shape != (len(types),) or np.any(w < 0) or w.sum() <= 0:
    raise ValueError(
        f"{key}: {len(types)} non-negative weights (one per type of {types}) are "
        f"needed, got {tuple(weights)}."
    )
  return w / w.sum()


def allocate(p: np.ndarray, total: int, minimum: Any = 0) -> np.ndarray:
  """Whole counts for probabilities `p` summing to about `total`: floor(p * total), raised to
  `minimum` (per type, or one number) where p > 0 and 0 where p = 0, then one more for the
  largest remainders while the sum is below `total` (int64)."""
  p = np.asarray(p, np.float64)
  used = p > 0
  share = p * total
  n = np.where(used, np.maximum(np.floor(share), minimum), 0).astype(np.int64)
  for i in np.argsort(-(share - np.floor(share))):  # largest remainders first
    if n.sum() >= total:
      break
    if used[i]:
      n[i] += 1
  return n


_NEW = (
    ("poisson_noise", poisson_noise, POISSON_PEAKS),
    ("salt_pepper_noise", salt_pepper_noise, SALT_PEPPER_AMOUNTS),
    ("noise", _Grouped("noise", NOISE_LEVELS), NOISE_LEVELS),
    ("anisotropic_blur", anisotropic_blur, ANISO_SIGMAS),
    ("sinc_blur", sinc_blur, SINC_CUTOFFS),
    (
        "gaussian_sinc_blur",
        _Grouped("gaussian_sinc_blur", GAUSSIAN_SINC_BLUR_LEVELS),
        GAUSSIAN_SINC_BLUR_LEVELS,
    ),
    ("gaussian_sinc_blur_12d", gaussian_sinc_blur_12d, MIXED_KERNEL_SIZES),
    ("motion_blur", motion_blur, MOTION_LENGTHS),
    ("defocus_blur", defocus_blur, DEFOCUS_RADII),
    ("rain_streak", rain_streak, RAIN_LEVELS),
    ("raindrop", raindrop, RAINDROP_LEVELS),
    ("rain_streak_raindrop", rain_streak_raindrop, RAIN_STREAK_RAINDROP_LEVELS),
    ("snow", snow, SNOW_LEVELS),
    ("mosaic", mosaic, MOSAIC_LEVELS),
    ("mosaic_bilinear", mosaic_bilinear, MOSAIC_LEVELS),
    ("inpainting", inpainting, INPAINTING_LEVELS),
    ("moire", moire, MOIRE_LEVELS),
    ("blur_jpeg", blur_jpeg, BLUR_JPEG_LEVELS),
    ("blur_rain", blur_rain, BLUR_RAIN_LEVELS),
    ("blur_low_light_noise", blur_low_light_noise, BLUR_LOW_LIGHT_NOISE_LEVELS),
    ("low_light_haze_rain_snow", low_light_haze_rain_snow, CDD_LEVELS),
    ("down_noise_blur_jpeg", down_noise_blur_jpeg, DOWN_NOISE_BLUR_JPEG_LEVELS),
)


# (name, fn, levels) of this family, registered by jaxmilab.data.degradations.
TYPES = tuple(_NEW)
# Member functions of the grouped types ("noise", "gaussian_sinc_blur"), by name.
_MEMBERS = {
    "gaussian_noise": D.gaussian_noise,
    "gaussian_blur": D.gaussian_blur,
    **{name: fn for name, fn, _ in _NEW},
}
REAL_ONLY_TYPES = (("real_noise", "SIDD (UIR-2.5M type RN); layout <root>/real_noise/{lq,gt}"),)

# DCPT 5D order (configs/dcpt.py TASKS_5D): derain, denoise, dehaze, deblur, low light. The paper
# uses Rain100L, BSD400+WED (sigma 15/25/50), SOTS-outdoor, GoPro, LOL-v1.
_FIVE = ("rain_streak", "gaussian_noise", "haze", "motion_blur", "low_light")
# Rain100L is light rain: the two sparsest densities.
_FIVE_LEVELS = {
    "gaussian_noise": (15, 25, 50),
    "rain_streak": tuple(v for v in RAIN_LEVELS if v[0] <= 0.005),
}
# MaskDCPT 12D (README 12D table order); real denoising is SIDD (real only).
_TWELVE = (
    "rain_streak",
    "haze",
    "snow",
    "raindrop",
    "low_light",
    "motion_blur",
    "defocus_blur",
    "jpeg",
    "real_noise",
    "gaussian_sinc_blur",
    "mosaic",
    "moire",
)
# (name, ordered types, per-type level restrictions): label = index in the set.
TASK_SETS = (
    ("5d", _FIVE, _FIVE_LEVELS),
    # DCPT 10D adds defocus deblur (DPDD), JPEG, desnow, demosaic and inpainting.
    ("10d", _FIVE + ("defocus_blur", "jpeg", "snow", "mosaic", "inpainting"), _FIVE_LEVELS),
    ("12d", _TWELVE, None),
    ("12d_syn", tuple(n for n in _TWELVE if n != "real_noise"), None),
    ("uir19", UIR_TYPE_NAMES, None),
    ("uir19_syn", tuple(n for n in UIR_TYPE_NAMES if n != "real_noise"), None),
    # The two UIR-2.5M families of the quickstart's fine-tuning task (Gaussian noise sigma 25,
    # JPEG quality 10) at all their UIR levels: configs/maskdcpt.py:quickstart pre-trains on it.
    ("uir_noise_jpeg", ("noise", "jpeg"), None),
)


def uir_level_count() -> int:
  """Number of (type, level) pairs over the 19 UIR types (a real-only type counts its source
  once)."""
  levels = {name: lv for name, _, lv in D.TYPES + TYPES}
  return sum(len(levels[t.name]) if t.synthetic else 1 for t in UIR_TYPES)
