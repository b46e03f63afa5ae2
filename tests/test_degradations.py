"""Degradation synthesis against formulas, scipy and Pillow (independent references), and the
contract every registered degradation keeps (the UIR-2.5M types' own properties:
tests/test_uir_degradations.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxmilab.data import degradations as D

NAMES = D.TASK_SETS["5syn"]
ALL = tuple(D.DEGRADATIONS)  # the five basic types and the UIR-2.5M ones


def photo(height=48, width=40, seed=0):
  """A smooth-ish random colour image [H, W, 3] in [0, 1] (not constant, not pure noise); also
  tests/test_uir_degradations.py's test image."""
  rng = np.random.default_rng(seed)
  image = ndimage.gaussian_filter(rng.uniform(0, 1, (height, width, 3)), sigma=(2, 2, 0))
  image = (image - image.min()) / (image.max() - image.min())
  return image.astype(np.float32)


def test_registry_and_task_set():
  assert NAMES == ("gaussian_noise", "gaussian_blur", "jpeg", "haze", "low_light")
  assert all(n in D.DEGRADATIONS for n in NAMES)
  assert D.resolve("5syn") == NAMES
  assert D.resolve(["jpeg", "haze"]) == ("jpeg", "haze")
  with pytest.raises(ValueError, match="rain_streaks"):
    D.resolve(("jpeg", "rain_streaks"))
  with pytest.raises(ValueError, match="repeats"):
    D.resolve(("jpeg", "jpeg"))


@pytest.mark.parametrize("name", ALL)
def test_contract_levels_and_seeding(name):
  image = photo(40, 44)
  out = D.apply(name, image, np.random.default_rng(7))
  assert out.shape == image.shape and out.dtype == np.float32
  assert 0.0 <= out.min() and out.max() <= 1.0
  assert not np.allclose(out, image, atol=1e-3), "the degradation changed nothing"
  np.testing.assert_array_equal(out, D.apply(name, image, np.random.default_rng(7)))
  # Different seeds: different output (for jpeg only the quality is random; try a few seeds).
  others = [D.apply(name, image, np.random.default_rng(s)) for s in (8, 9, 10)]
  assert any(not np.array_equal(out, o) for o in others)
  # Every level runs and degrades the image (grain workers get only the name and an rng).
  for i, level in enumerate(D.LEVELS[name]):
    y = D.apply(name, image, np.random.default_rng(i), level)
    assert y.shape == image.shape and not np.array_equal(y, image), (name, level)


def test_gaussian_noise_std_matches_sigma():
  grey = np.full((128, 128, 3), 0.5, np.float32)  # 0.5 is 5.1 sigma at 25/255: no clipping
  for sigma in (15.0, 25.0):
    residual = D.gaussian_noise(grey, np.random.default_rng(0), level=sigma) - grey
    assert abs(residual.std() / (sigma / 255.0) - 1.0) < 0.03
    assert abs(residual.mean()) < 0.003
  # Default level: the sigma is drawn in [15, 50] (0-255 scale).
  std = (D.gaussian_noise(grey, np.random.default_rng(3)) - grey).std() * 255.0
  assert 15.0 * 0.95 < std < 50.0 * 1.05


def test_gaussian_kernel_formula():
  sigma = 1.3
  kernel = D.gaussian_kernel(sigma)
  radius = int(np.ceil(3 * sigma))
  assert kernel.shape == (2 * radius + 1, 2 * radius + 1)
  assert abs(kernel.sum() - 1.0) < 1e-12
  x = np.arange(-radius, radius + 1)
  expected = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
  np.testing.assert_allclose(kernel, expected / expected.sum(), rtol=1e-12)
  np.testing.assert_allclose(kernel, kernel.T)  # isotropic


def test_gaussian_blur_constant_impulse_and_scipy():
  rng = np.random.default_rng(0)
  constant = np.full((16, 20, 3), 0.37, np.float32)
  np.testing.assert_allclose(D.gaussian_blur(constant, rng, level=2.0), constant, atol=1e-6)

  sigma = 1.5
  impulse = np.zeros((31, 31, 1), np.float32)
  impulse[15, 15] = 1.0
  response = D.gaussian_blur(impulse, rng, level=sigma)[..., 0]
  kernel = D.gaussian_kernel(sigma)
  r = kernel.shape[0] // 2
  np.testing.assert_allclose(response[15 - r : 16 + r, 15 - r : 16 + r], kernel, atol=1e-7)
  assert abs(response.sum() - 1.0) < 1e-5

  # Reflect (101) padding at the borders == scipy's "mirror" mode with the same radius.
  image = photo(24, 18)
  ours = D.gaussian_blur(image, rng, level=sigma)
  reference = ndimage.gaussian_filter(
      image.astype(np.float64),
      sigma=sigma,
      mode="mirror",
      radius=int(np.ceil(3 * sigma)),
      axes=(0, 1),
  )
  np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_jpeg_equals_pillow_codec():
  image = photo(32, 40)
  for quality in (10, 35):
    ours = D.jpeg(image, np.random.default_rng(0), level=quality)
    pixels = np.round(image * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32) / 255.0
    np.testing.assert_array_equal(ours, reference)
    assert np.abs(ours - image).mean() > 1e-3
  # Lower quality loses more.
  err = [np.abs(D.jpeg(image, None, level=q) - image).mean() for q in (10, 90)]
  assert err[0] > err[1]


def test_haze_scattering_model():
  image = photo(40, 36)
  result = D.synthesize_haze(image, np.random.default_rng(5))
  t, a = result.transmission, result.airlight
  assert t.shape == (40, 36, 1)
  assert 0.7 <= a <= 1.0 and 0.6 <= result.beta <= 1.8
  np.testing.assert_allclose(t, np.exp(-result.beta * result.depth), rtol=1e-6)
  assert 0.3 - 1e-6 <= result.depth.min() and result.depth.max() <= 1.0 + 1e-6
  np.testing.assert_allclose(result.hazy, np.clip(image * t + a * (1 - t), 0, 1), atol=1e-6)
  # The depth map is smooth: neighbouring pixels differ little.
  assert np.abs(np.diff(result.depth, axis=0)).max() < 0.1
  assert np.abs(np.diff(result.depth, axis=1)).max() < 0.1
  # A black scene becomes A (1 - t); fixed beta and A are honoured.
  fixed = D.synthesize_haze(np.zeros_like(image), np.random.default_rng(1), beta=1.0, airlight=0.8)
  expected = np.broadcast_to(0.8 * (1 - np.exp(-fixed.depth)), image.shape)
  np.testing.assert_allclose(fixed.hazy, expected, atol=1e-6)
  # The registry entry is the same draw.
  np.testing.assert_array_equal(D.haze(image, np.random.default_rng(5)), result.hazy)


def test_low_light_darkens_by_expected_factor():
  flat = np.full((64, 64, 3), 0.8, np.float32)
  gamma, scale = 2.0, 0.4
  noiseless = D.low_light(flat, np.random.default_rng(0), level=(gamma, scale, 0.0))
  np.testing.assert_allclose(noiseless, scale * 0.8**gamma, rtol=1e-6)
  noisy = D.low_light(flat, np.random.default_rng(0), level=(gamma, scale, 5.0))
  assert abs(noisy.mean() - scale * 0.8**gamma) < 2e-3
  assert abs(noisy.std() - 5.0 / 255) < 2e-3
  # Default ranges: always darker than the input on a mid-to-bright image.
  image = 0.5 + 0.5 * photo()
  for seed in range(5):
    assert D.low_light(image, np.random.default_rng(seed)).mean() < 0.65 * image.mean()


def test_released_denoise_input_matches_the_released_code():
  """basicsr PairedImageDenoiseDataset (phase != train): np.random.seed(0) then
  img_lq += np.random.normal(0, sigma / 255, shape) on the float32 RGB image, unclipped."""
  rng = np.random.default_rng(3)
  gt = rng.uniform(0, 1, (20, 18, 3)).astype(np.float32)
  state = np.random.get_state()
  try:
    np.random.seed(0)
    want = gt.copy()
    want += np.random.normal(0, 25 / 255.0, want.shape)
  finally:
    np.random.set_state(state)
  before = np.random.get_state()[1].copy()
  got = D.gaussian_noise_released(gt, 25)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.float32 and (got.min() < 0 or got.max() > 1)  # not clipped
  np.testing.assert_array_equal(np.random.get_state()[1], before)  # global state untouched
  np.testing.assert_allclose(
      D.gaussian_noise_released(gt[:, ::-1].copy(), 25) - gt[:, ::-1], got - gt, atol=1e-6
  )  # the same noise per image


def test_haze_depth_follows_content_and_crops():
  """Depth = smoothed luminance (bright = far), the same for a crop as for the whole image away
  from the crop border: no per-crop renormalisation."""
  yy, xx = np.mgrid[0:96, 0:96]
  image = np.repeat(((xx > 48) * 0.8 + 0.1)[..., None], 3, -1).astype(np.float32)  # dark | bright
  depth = D.content_depth(image)
  assert depth[:, 80:].mean() > depth[:, :16].mean() + 0.4
  crop = image[16:80, 8:72]
  np.testing.assert_allclose(D.content_depth(crop)[24:40, 24:40], depth[40:56, 32:48], atol=1e-6)
  small = D.content_depth(image[:12, :12])  # smaller than the blur radius
  assert small.shape == (12, 12) and np.isfinite(small).all()
  hazy = D.synthesize_haze(image, np.random.default_rng(0), beta=1.0, airlight=0.9, depth="content")
  np.testing.assert_allclose(hazy.depth[..., 0], depth, rtol=1e-6)
  with pytest.raises(ValueError, match="depth"):
    D.synthesize_haze(image, np.random.default_rng(0), depth="flat")
