"""Noise models of OPD's experiments (a leaf family): fn(image, rng, **params) -> noisy image.

Registered with the other corruption families in `jaxmilab.data.degradations`
(`apply_noise`, `noise_model`, `check_noise_params`, `is_pixelwise`, `NOISE_MODELS`).

Pure numpy, all randomness from the passed `np.random.Generator`. Every function takes a
float32 clean image [H, W, C] in [0, 1] and returns a float32 noisy image of the same shape,
NOT clipped or quantized (the dataset does that, like the official add_noise.py which
stores uint8 PNGs). The models follow the official add_noise.py
(LujiaJin/One-Pot_Multi-Frame_Denoising) on the [0, 1] scale:

* awgn(sigma=25):      x = I + n, n ~ N(0, (sigma/255)^2) per value (AWGN).
* poisson(lam=30):     x = Poisson(lam * I) / lam, so E[x] = I and Var[x] = I / lam (SDPN).
* bernoulli(p=0.5):    x = I * b, b ~ Bernoulli(1 - p) per value: p is the probability that a
                       value is DROPPED (set to 0), a fraction 1 - p is kept (MBN,
                       official `1 - binomial(1, p)`).
* impulse(ratio=0.3):  random-valued impulse noise (RVIN): each value is replaced, with
                       probability `ratio`, by u ~ U[0, 1). `blend=True` reproduces the
                       official variant, which writes I (1 - ratio) + u ratio instead of u.
* text(coverage=0.3):  random strings (5-29 letters/digits, font size 15-39 px, random RGB
                       colour, as add_noise.py) drawn with Pillow's default font at random
                       centres until at least `coverage` of the pixels are covered (the
                       official parameter is the same "fraction of corrupted pixels", there
                       only matched in expectation).
* mixed(sigma=25, lam=30, p=0.5): the official mixed(-blind) chain: AWGN, negatives set to
                       0, then Poisson, then multiplicative Bernoulli.

Defaults: AWGN sigma 25, Poisson lambda 30 and Bernoulli p 0.5 are the paper's settings
(OPD paper); the impulse ratio, text coverage and the mixed triple are not given there and are
our choice. `TYPES` marks the models whose values are independent per pixel (the dataset may
synthesize them tile by tile).
"""

from __future__ import annotations

import string
from typing import Any, Callable

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

NoiseModel = Callable[..., np.ndarray]

# add_noise.py `add_text_noise`: str_len_range = (5, 30), font_size_range = (15, 40)
# (np.random.randint, so the upper ends are exclusive), characters letters + digits.
TEXT_LENGTH_RANGE = (5, 30)
TEXT_FONT_SIZE_RANGE = (15, 40)
_TEXT_CHARS = np.array(list(string.ascii_letters + string.digits))
_TEXT_MAX_STRINGS = 100_000


def _check(image: np.ndarray, name: str) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or not np.issubdtype(image.dtype, np.floating):
    raise ValueError(
        f"noise.{name}: expected a float [H, W, C] image in [0, 1], got "
        f"{image.dtype} {image.shape}."
    )
  return image.astype(np.float32, copy=False)


def awgn(image: np.ndarray, rng: np.random.Generator, *, sigma: float = 25.0) -> np.ndarray:
  """Additive white Gaussian noise, std sigma / 255 per value."""
  image = _check(image, "awgn")
  if sigma < 0:
    raise ValueError(f"noise awgn: sigma={sigma} must be >= 0 (0-255 scale).")
  return (image + rng.normal(0.0, sigma / 255.0, image.shape)).astype(np.float32)


def poisson(image: np.ndarray, rng: np.random.Generator, *, lam: float = 30.0) -> np.ndarray:
  """Signal-dependent Poisson noise: Poisson(lam * I) / lam (mean I, variance I / lam)."""
  image = _check(image, "poisson")
  if lam <= 0:
    raise ValueError(f"noise poisson: lam={lam} must be > 0.")
  return (rng.poisson(lam * np.maximum(image, 0.0)) / lam).astype(np.float32)


def bernoulli(image: np.ndarray, rng: np.random.Generator, *, p: float = 0.5) -> np.ndarray:
  """Multiplicative Bernoulli noise: each value is zeroed with probability p (kept w.p. 1 - p)."""
  image = _check(image, "bernoulli")
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"noise bernoulli: p={p} must be in [0, 1] (probability of dropping a value).")
  keep = rng.random(image.shape) >= p
  return (image * keep).astype(np.float32)


def impulse(
    image: np.ndarray, rng: np.random.Generator, *, ratio: float = 0.3, blend: bool = False
) -> np.ndarray:
  """Random-valued impulse noise: a fraction `ratio` of the values becomes u ~ U[0, 1)."""
  image = _check(image, "impulse")
  if not 0.0 <= ratio <= 1.0:
    raise ValueError(f"noise impulse: ratio={ratio} must be in [0, 1].")
  replace = rng.random(image.shape) < ratio
  value = rng.random(image.shape)
  if blend:  # official add_noise.py RVIN: img * (1 - ratio) + noise_color * ratio
    value = image * (1.0 - ratio) + value * ratio
  return np.where(replace, value, image).astype(np.float32)


def text(image: np.ndarray, rng: np.random.Generator, *, coverage: float = 0.3) -> np.ndarray:
  """Random text overlay covering at least `coverage` of the pixels (Pillow's default font)."""
  image = _check(image, "text")
  if not 0.0 <= coverage <= 0.95:
    raise ValueError(f"noise text: coverage={coverage} must be in [0, 0.95] (fraction of pixels).")
  height, width = image.shape[:2]
  colour_layer = Image.new("RGB", (width, height))
  mask_layer = Image.new("L", (width, height))
  draw_colour, draw_mask = ImageDraw.Draw(colour_layer), ImageDraw.Draw(mask_layer)
  fonts: dict[int, Any] = {}
  target = coverage * height * width
  covered, count = 0, 0
  while covered < target:
    if count >= _TEXT_MAX_STRINGS:
      raise RuntimeError(
          f"noise text: {count} strings did not cover {coverage} of a " f"{height}x{width} image."
      )
    length = int(rng.integers(*TEXT_LENGTH_RANGE))
    size = int(rng.integers(*TEXT_FONT_SIZE_RANGE))
    words = "".join(rng.choice(_TEXT_CHARS, size=length))
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
    if size not in fonts:
      fonts[size] = ImageFont.load_default(size=size)
    # anchor "mm": the string is centred on the drawn point, as add_noise.py places it.
    draw_colour.text(centre, words, font=fonts[size], fill=colour, anchor="mm")
    draw_mask.text(centre, words, font=fonts[size], fill=255, anchor="mm")
    count += 1
    covered = int(np.count_nonzero(np.asarray(mask_layer)))
  alpha = np.asarray(mask_layer, dtype=np.float32)[..., None] / 255.0  # [H, W, 1], anti-aliased
  colour_rgb = np.asarray(colour_layer, dtype=np.float32) / 255.0  # [H, W, 3]
  channels = image.shape[-1]
  if channels == 1:
    colour_rgb = colour_rgb.mean(axis=-1, keepdims=True)
  elif channels != 3:
    raise ValueError(f"noise text: expected 1 or 3 channels, got {image.shape}.")
  return (image * (1.0 - alpha) + colour_rgb * alpha).astype(np.float32)


def mixed(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    sigma: float = 25.0,
    lam: float = 30.0,
    p: float = 0.5,
) -> np.ndarray:
  """Official mixed noise: AWGN(sigma), negatives -> 0, Poisson(lam), Bernoulli(p)."""
  image = _check(image, "mixed")
  x = np.maximum(awgn(image, rng, sigma=sigma), 0.0)
  x = poisson(x, rng, lam=lam)
  return bernoulli(x, rng, p=p)


# The family's table, registered by jaxmilab.data.degradations (the one registry of image
# corruptions): (name, fn, parameter names, pixelwise: values independent per pixel, so the
# dataset may synthesize them tile by tile).
TYPES: tuple[tuple[str, NoiseModel, tuple[str, ...], bool], ...] = (
    ("awgn", awgn, ("sigma",), True),
    ("poisson", poisson, ("lam",), True),
    ("bernoulli", bernoulli, ("p",), True),
    ("impulse", impulse, ("ratio", "blend"), True),
    ("text", text, ("coverage",), False),
    ("mixed", mixed, ("sigma", "lam", "p"), True),
)
