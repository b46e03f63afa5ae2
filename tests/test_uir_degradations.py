"""The 19 UIR-2.5M degradation types: registry, levels, determinism and one measurable
property per type (formulas, scipy, Pillow, invariants). The contract every type keeps (shape,
range, seeding, every level): tests/test_degradations.py."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from jaxmilab.data import degradations as D
from jaxmilab.data import uir_degradations as U
from test_degradations import ALL
from test_degradations import photo as _photo


def _moments(kernel):
  """Mean-centred covariance [[E xx, E xy], [E xy, E yy]] of a kernel, x = column, y = row."""
  r0, c0 = (np.array(kernel.shape) - 1) / 2
  rows, cols = np.mgrid[0 : kernel.shape[0], 0 : kernel.shape[1]]
  x, y = cols - c0, rows - r0
  return np.array(
      [
          [(kernel * x * x).sum(), (kernel * x * y).sum()],
          [(kernel * x * y).sum(), (kernel * y * y).sum()],
      ]
  )


# ----------------------------------------------------------------------------- registry


def test_quickstart_pretraining_set_covers_the_fine_tuning_task():
  # configs/maskdcpt.py:quickstart pre-trains on "uir_noise_jpeg"; the fine-tuning task
  # (configs/restoration.py:quickstart) must be among its (type, level) pairs.
  from jaxmilab.configs import maskdcpt as maskdcpt_config
  from jaxmilab.configs import restoration as restoration_config

  assert maskdcpt_config.get_config("quickstart").data.degradations == "uir_noise_jpeg"
  assert D.resolve("uir_noise_jpeg") == ("noise", "jpeg")
  (noise, noise_level), (jpeg, jpeg_level) = zip(
      restoration_config.QUICKSTART_TYPES, restoration_config.QUICKSTART_LEVELS
  )
  assert (noise, jpeg) == ("gaussian_noise", "jpeg")
  assert (noise, noise_level) in D.get_levels("noise")
  assert jpeg_level in D.get_levels("jpeg")


def test_uir19_table_task_sets_and_level_count():
  assert len(U.UIR_TYPES) == 19 and D.TASK_SETS["uir19"] == U.UIR_TYPE_NAMES
  assert [t.name for t in U.UIR_TYPES if not t.synthetic] == ["real_noise"]
  assert all(t.name in D.DEGRADATIONS for t in U.UIR_TYPES if t.synthetic)
  assert U.uir_level_count() > 200  # the paper: "over 200 levels" (docs/maskdcpt.md)
  assert len(D.TASK_SETS["5d"]) == 5 and len(D.TASK_SETS["10d"]) == 10
  assert len(D.TASK_SETS["12d"]) == 12 and "real_noise" in D.TASK_SETS["12d"]
  assert D.resolve("uir19_syn") == tuple(n for n in U.UIR_TYPE_NAMES if n != "real_noise")
  assert D.resolve("12d_syn") == tuple(n for n in D.TASK_SETS["12d"] if n != "real_noise")
  assert D.resolve("10d")[5:] == ("defocus_blur", "jpeg", "snow", "mosaic", "inpainting")
  for name in ("uir19", "12d"):
    with pytest.raises(ValueError, match="real_noise.*SIDD"):
      D.resolve(name)
  with pytest.raises(ValueError, match="no synthetic counterpart"):
    D.get("real_noise")
  assert D.task_levels("5d", "gaussian_noise") == (15, 25, 50)
  assert D.task_levels("uir19", "jpeg") == D.LEVELS["jpeg"]


def test_levels_are_selectable_by_key():
  for name in ALL:
    keys = [D.level_key(v) for v in D.LEVELS[name]]
    assert len(set(keys)) == len(keys), name
    for key, level in zip(keys, D.LEVELS[name]):
      assert D.level_from_key(name, key) == level
  assert D.level_from_key("noise", "gaussian_noise/25") == ("gaussian_noise", 25)
  assert D.level_from_key("rain_streak", "0.005/21") == (0.005, 21)
  with pytest.raises(ValueError, match="no level '11'.*10, 15"):
    D.level_from_key("jpeg", "11")


def test_functions_pickle_for_worker_processes():
  for name in ALL:
    fn = pickle.loads(pickle.dumps(D.get(name)))
    image = _photo(16, 16)
    np.testing.assert_array_equal(
        fn(image, np.random.default_rng(0)), D.apply(name, image, np.random.default_rng(0))
    )


# -------------------------------------------------------------------------------- noise


def test_poisson_variance_proportional_to_mean():
  for peak, mean in ((8, 0.1), (32, 0.2), (32, 0.5), (128, 0.7)):  # means where clipping is rare
    flat = np.full((200, 200, 3), mean, np.float32)
    out = D.apply("poisson_noise", flat, np.random.default_rng(1), peak).astype(np.float64)
    assert abs(out.mean() - mean) < 0.01
    assert abs(out.var() / (mean / peak) - 1) < 0.05, (peak, mean)


def test_salt_and_pepper_ratio():
  grey = np.full((200, 200, 3), 0.5, np.float32)
  out = D.apply("salt_pepper_noise", grey, np.random.default_rng(0), 0.1)
  hit = np.any(out != 0.5, axis=-1)
  assert abs(hit.mean() - 0.1) < 0.005
  values = out[hit]
  assert np.all((values == 0.0) | (values == 1.0)) and np.all(values.min(-1) == values.max(-1))
  assert abs((values[:, 0] == 1.0).mean() - 0.5) < 0.05


def test_grouped_types_dispatch_to_members():
  image = _photo(48, 48)
  for name, level in (
      ("noise", ("gaussian_noise", 25)),
      ("gaussian_sinc_blur", ("sinc_blur", U.SINC_CUTOFFS[2])),
  ):
    np.testing.assert_array_equal(
        D.apply(name, image, np.random.default_rng(3), level),
        D.apply(level[0], image, np.random.default_rng(3), level[1]),
    )
  grey = np.full((128, 128, 3), 0.5, np.float32)  # Gaussian member: std = sigma / 255
  std = (D.apply("noise", grey, np.random.default_rng(0), ("gaussian_noise", 25)) - grey).std()
  assert abs(std * 255 / 25 - 1) < 0.03


# --------------------------------------------------------------------------------- blur


def test_filter2d_is_correlation_with_mirror_padding():
  image = _photo(20, 17).astype(np.float64)
  kernel = np.random.default_rng(0).random((5, 7))
  ref = np.stack([ndimage.correlate(image[..., c], kernel, mode="mirror") for c in range(3)], -1)
  np.testing.assert_allclose(U.filter2d(image, kernel), ref, atol=1e-10)


def test_anisotropic_gaussian_kernel_covariance():
  sx, sy, theta = 1.0, 3.0, 0.5
  k = U.anisotropic_gaussian_kernel(sx, sy, theta, size=41)
  assert abs(k.sum() - 1) < 1e-12
  np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
  rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  np.testing.assert_allclose(_moments(k), rot @ np.diag([sx**2, sy**2]) @ rot.T, atol=2e-3)
  # The default size truncates at 3 sigma of the long axis; still normalised.
  assert abs(U.anisotropic_gaussian_kernel(0.5, 2.0, 1.0).sum() - 1) < 1e-12


def test_sinc_kernel_is_a_circular_low_pass():
  cutoff = math.pi / 2
  k = U.sinc_kernel(cutoff)
  assert k.shape == (21, 21) and abs(k.sum() - 1) < 1e-12
  np.testing.assert_allclose(k, k.T, atol=1e-15)
  np.testing.assert_allclose(k, k[::-1], atol=1e-15)
  response = np.abs(np.fft.fft2(k, s=(128, 128)))
  w = 2 * np.pi * np.fft.fftfreq(128)
  radius = np.hypot(w[:, None], w[None, :])
  assert np.all(np.abs(response[radius < 0.6 * cutoff] - 1) < 0.15)
  assert np.all(response[(radius > 1.4 * cutoff) & (radius < np.pi)] < 0.15)


@pytest.mark.parametrize("length,angle_deg", [(15, 30.0), (21, 100.0)])
def test_motion_kernel_is_a_line_of_given_length_and_angle(length, angle_deg):
  angle = math.radians(angle_deg)
  k = U.motion_kernel(length, angle)
  assert abs(k.sum() - 1) < 1e-12
  cov = _moments(k)
  cov[0, 1] = cov[1, 0] = -cov[0, 1]  # rows grow downwards: flip y to measure angles upwards
  values, vectors = np.linalg.eigh(cov)
  direction = vectors[:, 1]
  measured = math.degrees(math.atan2(direction[1], direction[0])) % 180
  assert abs(measured - angle_deg) < 1.0
  assert abs(values[1] / ((length - 1) ** 2 / 12) - 1) < 0.05  # uniform along the path
  assert values[0] < 0.3  # thin across it
  # motion_blur of an impulse is the (flipped) kernel: a blur, mass preserved.
  impulse = np.zeros((41, 41, 1), np.float32)
  impulse[20, 20] = 1
  out = D.apply("motion_blur", impulse, np.random.default_rng(0), length)
  assert abs(out.sum() - 1) < 1e-4


def test_disk_kernel_is_a_uniform_disk():
  radius = 5.0
  k = U.disk_kernel(radius)
  assert k.shape == (11, 11) and abs(k.sum() - 1) < 1e-12
  np.testing.assert_allclose(k, k.T, atol=1e-15)
  np.testing.assert_allclose(k, k[::-1], atol=1e-15)
  assert np.trace(_moments(k)) == pytest.approx(radius**2 / 2, rel=0.03)  # E[r^2] of a disk
  assert np.ptp(k[3:8, 3:8]) < 1e-12  # flat inside
  flat = np.full((32, 32, 3), 0.3, np.float32)
  np.testing.assert_allclose(
      D.apply("defocus_blur", flat, np.random.default_rng(0), 4.0), flat, atol=1e-6
  )


# ----------------------------------------------------------------------------- weather


def test_rain_streaks_are_additive_grey_and_oriented():
  black = np.zeros((96, 96, 3), np.float32)
  out = D.apply("rain_streak", black, np.random.default_rng(0), (0.01, 21))
  assert np.all(out >= 0) and out.mean() > 0.01
  np.testing.assert_array_equal(out[..., 0], out[..., 2])  # the same grey layer on every channel
  photo = _photo(96, 96) * 0.5
  rain = D.apply("rain_streak", photo, np.random.default_rng(0), (0.01, 21))
  assert np.all(rain >= photo - 1e-7)  # additive
  for angle_deg in (70.0, 110.0):
    # The autocorrelation of the layer (within a disc) is elongated along the streaks.
    estimates = []
    for seed in range(4):
      layer = U.rain_layer(
          256, 256, np.random.default_rng(seed), 0.002, 21, math.radians(angle_deg)
      )
      x = layer - layer.mean()
      ac = np.fft.fftshift(np.real(np.fft.ifft2(np.abs(np.fft.fft2(x)) ** 2)))[113:144, 113:144]
      rows, cols = np.mgrid[-15:16, -15:16]
      w = np.clip(ac, 0, None) * (rows**2 + cols**2 <= 225)
      up = -rows
      cov = np.array(
          [
              [(w * cols * cols).sum(), (w * cols * up).sum()],
              [(w * cols * up).sum(), (w * up * up).sum()],
          ]
      )
      _, vectors = np.linalg.eigh(cov)
      estimates.append(math.degrees(math.atan2(vectors[1, 1], vectors[0, 1])) % 180)
    assert abs(np.mean(estimates) - angle_deg) < 5.0, estimates
  sparse = U.rain_layer(96, 96, np.random.default_rng(2), 0.002, 21, math.pi / 2).mean()
  dense = U.rain_layer(96, 96, np.random.default_rng(2), 0.02, 21, math.pi / 2).mean()
  assert dense > 4 * sparse


def test_raindrops_change_only_inside_drops():
  image = _photo(64, 64)
  drops = U.synthesize_raindrops(image, np.random.default_rng(0), 12)
  np.testing.assert_array_equal(drops.image[~drops.mask], image[~drops.mask])
  assert 0.02 < drops.mask.mean() < 0.5
  assert np.abs(drops.image[drops.mask] - image[drops.mask]).mean() > 0.05
  few = U.synthesize_raindrops(image, np.random.default_rng(0), 4).mask.mean()
  many = U.synthesize_raindrops(image, np.random.default_rng(0), 32).mask.mean()
  assert many > 2 * few


def test_rain_streak_raindrop_is_streaks_then_drops():
  image = _photo(48, 48)
  rng = np.random.default_rng(4)
  expected = U.raindrop(U.rain_streak(image, rng, (0.005, 21)), rng, 12)
  np.testing.assert_array_equal(
      D.apply("rain_streak_raindrop", image, np.random.default_rng(4), (0.005, 12)), expected
  )


def test_snow_is_white_alpha_compositing():
  photo = _photo(64, 64)
  out = D.apply("snow", photo, np.random.default_rng(0), (0.016, 3.0))
  assert np.all(out >= photo - 1e-6)  # only whitens
  white = np.ones_like(photo)
  np.testing.assert_allclose(D.apply("snow", white, np.random.default_rng(0)), white, atol=1e-6)
  alpha = D.apply("snow", np.zeros_like(photo), np.random.default_rng(0), (0.016, 3.0))
  np.testing.assert_array_equal(alpha[..., 0], alpha[..., 1])  # lq = x (1 - a) + a: a itself
  np.testing.assert_allclose(out, photo * (1 - alpha) + alpha, atol=1e-6)
  light = U.snow_alpha(96, 96, np.random.default_rng(1), 0.004, 1.5).mean()
  heavy = U.snow_alpha(96, 96, np.random.default_rng(1), 0.032, 1.5).mean()
  assert heavy > 4 * light


# ------------------------------------------------------------------------------ others


def test_bayer_rggb_pattern_and_demosaic():
  masks = U.bayer_masks(4, 4)
  assert masks.sum(-1).max() == 1 and masks.sum(-1).min() == 1  # one channel per pixel
  np.testing.assert_array_equal(np.argmax(masks[:2, :2], -1), [[0, 1], [1, 2]])  # R G / G B
  image = _photo(24, 30)
  cfa = U.bayer_mosaic(image)
  np.testing.assert_allclose(cfa[0::2, 0::2], image[0::2, 0::2, 0])
  np.testing.assert_allclose(cfa[0::2, 1::2], image[0::2, 1::2, 1])
  np.testing.assert_allclose(cfa[1::2, 0::2], image[1::2, 0::2, 1])
  np.testing.assert_allclose(cfa[1::2, 1::2], image[1::2, 1::2, 2])
  out = D.apply("mosaic_bilinear", image, np.random.default_rng(0), 0.0)
  known = U.bayer_masks(24, 30)
  np.testing.assert_allclose(out[known], image[known], atol=1e-6)  # known samples kept
  assert np.abs(out - image).mean() > 1e-3  # the other two channels are interpolated
  colour = np.broadcast_to(np.float32([0.2, 0.5, 0.9]), (10, 12, 3)).copy()
  np.testing.assert_allclose(
      D.apply("mosaic_bilinear", colour, np.random.default_rng(0), 0.0), colour, atol=1e-6
  )
  rows, cols = np.mgrid[0:16, 0:16]  # bilinear interpolation is exact on a linear ramp
  ramp = np.stack([0.02 * cols + 0.1, 0.01 * rows + 0.03 * cols, 0.5 - 0.02 * rows], -1) / 1.5
  out = U.demosaic_bilinear(U.bayer_mosaic(ramp))
  np.testing.assert_allclose(out[1:-1, 1:-1], ramp[1:-1, 1:-1], atol=1e-12)


def _released_mosaic_reference(image_uint8):
  """The released path restated: DPIR-style masks_CFA_Bayer('RGGB') on the RGB uint8 image,
  CFA = (mask * RGB).sum(2).astype(uint8), cv2.cvtColor(CFA, COLOR_BAYER_BG2BGR_EA), / 255."""
  import cv2  # pylint: disable=g-import-not-at-top

  h, w = image_uint8.shape[:2]
  r = np.zeros((h, w), bool)
  g = np.zeros((h, w), bool)
  b = np.zeros((h, w), bool)
  r[0::2, 0::2] = True
  g[0::2, 1::2] = True
  g[1::2, 0::2] = True
  b[1::2, 1::2] = True
  mask = np.stack([r, g, b], -1)
  cfa = np.multiply(mask, image_uint8).sum(2).astype(np.uint8)
  return cv2.cvtColor(cfa, cv2.COLOR_BAYER_BG2BGR_EA).astype(np.float32) / 255.0


def test_mosaic_follows_the_released_pipeline():
  image = _photo(24, 30)
  pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  out = D.apply("mosaic", image, np.random.default_rng(0), 0.0)
  np.testing.assert_array_equal(out, _released_mosaic_reference(pixels))
  # The released channel order: a flat colour comes back with red and blue swapped.
  colour = np.broadcast_to(np.float32([40, 128, 230]) / 255, (12, 12, 3)).copy()
  flat = D.apply("mosaic", colour, np.random.default_rng(0), 0.0)
  np.testing.assert_allclose(
      flat[2:-2, 2:-2], np.broadcast_to(colour[0, 0, ::-1], (8, 8, 3)), atol=1.5 / 255
  )
  # Sensor-noise levels (ours) change the input; level 0 is deterministic.
  noisy = D.apply("mosaic", image, np.random.default_rng(0), 8.0)
  assert np.abs(noisy - out).mean() > 1e-3


def test_inpainting_lines():
  mask = U.polyline_mask(30, 40, [(5.0, 15.0, 35.0, 15.0)], 7)
  assert mask[:, 20].sum() == 7 and mask[15, 5:36].all()
  for seed in range(5):
    m, count = U.inpainting_mask(64, 64, np.random.default_rng(seed), 5)
    assert 5 <= count <= 10 and m.any()
  image = _photo(64, 64)
  for colour, value in (("white", 1.0), ("black", 0.0)):
    out = D.apply("inpainting", image, np.random.default_rng(1), (colour, 8))
    changed = np.any(out != image, axis=-1)
    assert changed.mean() > 0.05 and np.all(out[changed] == value)


def test_moire_interference_frequency_and_amplitude():
  period, amplitude = 8.0, 0.3
  pattern = U.moire_pattern(64, 64, period, 0.0, 0.0, [0.0, 1.0, 2.0])
  spectrum = np.abs(np.fft.fft2(pattern[..., 0])) / 64**2
  assert np.unravel_index(np.argmax(spectrum), spectrum.shape) in ((0, 8), (0, 56))  # 64 / 8 cycles
  assert spectrum[0, 8] == pytest.approx(0.5, abs=1e-6)
  grey = np.full((64, 64, 3), 0.5, np.float32)
  out = D.apply("moire", grey, np.random.default_rng(0), (period, amplitude))
  ratio = out / 0.5 - 1
  assert np.abs(ratio).max() == pytest.approx(amplitude, abs=0.02)
  assert not np.allclose(ratio[..., 0], ratio[..., 1])  # colour fringes (per-channel phase)


# -------------------------------------------------------------------------------- mixed


def test_blur_jpeg_is_a_real_jpeg_of_the_blurred_image():
  image = _photo(32, 40)
  out = D.apply("blur_jpeg", image, np.random.default_rng(0), (2.0, 40))
  blurred = D.gaussian_blur(image, None, 2.0)
  buffer = io.BytesIO()
  Image.fromarray(D.to_uint8(blurred)).save(buffer, format="JPEG", quality=40)
  reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), np.float32) / 255
  np.testing.assert_array_equal(out, reference)


def test_blur_rain_adds_streaks_to_a_motion_blurred_image():
  image = _photo(64, 64) * 0.5
  rng = np.random.default_rng(5)
  blurred = U.motion_blur(image, rng, 15)
  np.testing.assert_array_equal(
      D.apply("blur_rain", image, np.random.default_rng(5), (15, 0.01)),
      U.rain_streak(blurred, rng, (0.01, 21)),
  )
  assert np.all(D.apply("blur_rain", image, np.random.default_rng(5), (15, 0.01)) >= blurred - 1e-7)


def test_blur_low_light_noise_darkens_by_the_gamma_law():
  flat = np.full((96, 96, 3), 0.8, np.float32)
  out = D.apply("blur_low_light_noise", flat, np.random.default_rng(0), (15, 2.2, 0.3))
  assert out.mean() == pytest.approx(0.3 * 0.8**2.2, abs=3e-3)
  assert 2 / 255 * 0.9 < out.std() < 8 / 255 * 1.1


def test_cdd_combinations():
  photo = _photo(48, 48)
  means = {}
  for level in U.CDD_LEVELS:
    means[level] = D.apply(
        "low_light_haze_rain_snow", photo, np.random.default_rng(0), level
    ).mean()
  assert len(U.CDD_LEVELS) == 11  # CDD-11
  assert all(means[lv] < 0.6 * photo.mean() for lv in U.CDD_LEVELS if "low" in lv)
  assert all(
      means[lv] > photo.mean() for lv in U.CDD_LEVELS if "low" not in lv
  )  # haze/rain/snow brighten
  dark = np.zeros((32, 32, 3), np.float32)
  hazy = D.apply("low_light_haze_rain_snow", dark, np.random.default_rng(0), ("haze",))
  assert hazy.min() > 0.1  # airlight A (1 - t) with t <= exp(-0.6 * 0.3)
  with pytest.raises(ValueError, match="fog"):
    D.apply("low_light_haze_rain_snow", photo, np.random.default_rng(0), ("fog",))


def test_down_noise_blur_jpeg_removes_high_frequencies():
  rng = np.random.default_rng(0)
  texture = rng.random((96, 96, 3)).astype(np.float32)
  out = D.apply("down_noise_blur_jpeg", texture, np.random.default_rng(1), (4, 5, 70))
  f = np.abs(np.fft.fftfreq(96))
  high = (f[:, None] > 1 / 8) | (f[None, :] > 1 / 8)  # above the Nyquist rate of the x4 image

  def energy(x):
    spec = np.abs(np.fft.fft2(x - x.mean(axis=(0, 1)), axes=(0, 1))) ** 2
    return spec[high].sum()

  assert energy(out) < 0.1 * energy(texture)
  grey = np.full((64, 64, 3), 0.5, np.float32)
  assert D.apply(
      "down_noise_blur_jpeg", grey, np.random.default_rng(2), (2, 15, 50)
  ).mean() == pytest.approx(0.5, abs=0.01)


def test_mixed_kernels_follow_the_released_12d_blur():
  """gaussian_sinc_blur_12d (MaskDCPT's 12D GaussianBlur set, Real-ESRGAN mixed kernels): kernels
  sum to 1 and are zero-padded to 21 x 21; sinc in ~10 % of draws (ours before: ~36 %); every
  Gaussian-family kernel has its spread within sigma <= 3 (ours before: up to 4); generalized and
  plateau shapes occur (heavier / flatter tails than a Gaussian of the same sigma)."""
  from jaxmilab.data import uir_degradations as U  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  n = 2000
  sinc = 0
  max_sigma = 0.0
  for _ in range(n):
    size = int(rng.choice(U.MIXED_KERNEL_SIZES))
    k = U.mixed_kernel(rng, size)
    assert k.shape == (size, size)
    np.testing.assert_allclose(k.sum(), 1.0, rtol=1e-9)
    if k.min() < -1e-12:  # only the sinc kernel has negative lobes
      sinc += 1
      continue
    r = size // 2
    rows, cols = np.mgrid[-r : r + 1, -r : r + 1]
    var = max((k * rows**2).sum(), (k * cols**2).sum())
    max_sigma = max(max_sigma, float(np.sqrt(var)))
  # Sinc kernels of small cutoff may lack negative lobes inside the window: bound loosely.
  assert 0.05 < sinc / n < 0.12, sinc / n
  assert max_sigma < 5.0, max_sigma  # plateau tails (1 / (q^b + 1)) widen the spread beyond 3
  img = rng.uniform(0, 1, (40, 40, 3)).astype(np.float32)
  out = D.apply("gaussian_sinc_blur_12d", img, np.random.default_rng(1), 21)
  assert out.shape == img.shape and out.dtype == np.float32 and np.abs(out - img).mean() > 0.01


def test_uir_pair_counts_are_the_table_counts():
  from jaxmilab.data import uir_degradations as U  # pylint: disable=g-import-not-at-top

  counts = U.uir_pair_counts()
  assert counts["noise"] == 531_816 and counts["raindrop"] == 1_861 + 150
  assert counts["rain_streak"] == 28_422 + 11_150 and len(counts) == 19
  assert 2_400_000 < sum(counts.values()) < 2_600_000  # "2.5M pairs"


def test_type_weights_uir_counts_mix():
  """degraded_photos type_weights="uir_counts": record slots per type follow the table (noise
  ~200x raindrop), every type keeps at least one; "uniform" keeps one slot per type."""
  from jaxmilab.data import degraded_photos  # pylint: disable=g-import-not-at-top

  types = D.resolve("uir19_syn")
  slots = np.bincount(degraded_photos.type_slots(types, "uir_counts"), minlength=len(types))
  assert slots.min() >= 1 and abs(slots.sum() - degraded_photos.TYPE_SLOTS) <= len(types)
  ratio = slots[types.index("noise")] / slots[types.index("raindrop")]
  assert 150 < ratio < 600, ratio
  assert degraded_photos.type_slots(types, "uniform") is None
  with pytest.raises(ValueError, match="type_weights"):
    degraded_photos.type_slots(("gaussian_noise",), "uir_counts")
