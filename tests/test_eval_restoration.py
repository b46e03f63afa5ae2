"""PSNR / SSIM (BasicSR protocol) against hand computations, skimage and a cv2 re-statement."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from jaxmilab.evaluation import restoration as R


@pytest.fixture(scope="module")
def pair():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)  # [H, W, C]
  noise = rng.integers(-25, 26, a.shape)
  b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
  return a, b


def _skimage_ssim(a, b, **kw):
  opts = dict(
      gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
  )
  opts.update(kw)
  return structural_similarity(a, b, **opts)


def _basicsr_ssim_cv2(a, b):
  """BasicSR _ssim restated with cv2.filter2D + [5:-5] crop, per channel, averaged."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  g = cv2.getGaussianKernel(11, 1.5)
  win = g @ g.T
  f = lambda x: cv2.filter2D(x, -1, win)[5:-5, 5:-5]
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  vals = []
  for c in range(a.shape[2]):
    x, y = a[..., c], b[..., c]
    mx, my = f(x), f(y)
    vx, vy, vxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    vals.append(
        (((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean()
    )
  return float(np.mean(vals))


def test_psnr_constant_offset_by_hand():
  a = np.full((8, 9, 3), 100, np.uint8)
  b = a + np.uint8(2)  # MSE = 4
  assert R.psnr(a, b) == pytest.approx(10 * np.log10(255.0**2 / 4))
  # data_range=1 on floats: an offset of 0.1 -> 10 log10(1 / 0.01) = 20 dB.
  assert R.psnr(np.full((4, 4, 3), 0.5), np.full((4, 4, 3), 0.6), data_range=1.0) == pytest.approx(
      20.0
  )


def test_psnr_identical_is_inf(pair):
  assert R.psnr(pair[0], pair[0]) == float("inf")


def test_psnr_crop_border_by_hand():
  a = np.zeros((10, 10, 3), np.uint8)
  b = a.copy()
  b[0, :, :] = 255  # errors only in the first row
  assert R.psnr(a, b) == pytest.approx(
      10 * np.log10(255.0**2 / (255.0**2 / 10))
  )  # MSE = 255^2 / 10
  assert R.psnr(a, b, crop_border=1) == float("inf")


def test_ssim_matches_skimage_and_cv2_restatement(pair):
  a, b = pair
  ours = R.ssim(a, b)
  # skimage: gaussian_filter (sigma 1.5, truncate 3.5 -> 11 taps), reflect padding, then the SSIM
  # map is cropped by (11 - 1) // 2 = 5 on each side -> exactly BasicSR's 'valid' region.
  assert ours == pytest.approx(_skimage_ssim(a, b), abs=1e-12)
  assert ours == pytest.approx(_basicsr_ssim_cv2(a, b), abs=1e-12)
  # A wrong window / sigma is far outside that tolerance.
  assert abs(ours - _skimage_ssim(a, b, sigma=1.0)) > 1e-4
  assert abs(ours - _skimage_ssim(a, b, gaussian_weights=False, win_size=11)) > 1e-4


def test_ssim_identical_is_one_and_degrades(pair):
  a, b = pair
  assert R.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
  assert R.ssim(a, b) < 0.99


def test_ssim_crop_border(pair):
  a, b = pair
  c = 3
  expected = _skimage_ssim(a[c:-c, c:-c], b[c:-c, c:-c])
  assert R.ssim(a, b, crop_border=c) == pytest.approx(expected, abs=1e-12)
  assert abs(R.ssim(a, b, crop_border=c) - R.ssim(a, b)) > 1e-6


def test_to_uint8_rounds_and_clips():
  x = np.array([-0.2, 0.0, 0.5, 1 / 255 * 0.49, 1 / 255 * 0.51, 1.0, 1.3])
  np.testing.assert_array_equal(R.to_uint8(x), np.array([0, 0, 128, 0, 1, 255, 255], np.uint8))
  assert R.to_uint8(x).dtype == np.uint8


def test_batches_are_per_image(pair):
  a, b = pair
  pred = np.stack([a, b])  # [2, H, W, C]
  tgt = np.stack([b, b])
  p = R.psnr_batch(pred, tgt)
  s = R.ssim_batch(pred, tgt)
  assert p.shape == s.shape == (2,)
  assert p[1] == float("inf") and s[1] == pytest.approx(1.0)
  mse = np.mean((a.astype(np.float64) - b) ** 2)
  assert p[0] == pytest.approx(10 * np.log10(255.0**2 / mse))
  assert s[0] == pytest.approx(_skimage_ssim(a, b), abs=1e-12)


def test_errors_name_shapes():
  with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(8, 9, 3\)"):
    R.psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
  with pytest.raises(ValueError, match=r"\(2, 8, 8, 3\).*\(1, 8, 8, 3\)"):
    R.ssim_batch(np.zeros((2, 8, 8, 3)), np.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="window"):
    R.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))
  with pytest.raises(ValueError, match="data_range"):
    R.psnr(np.full((4, 4, 3), 1.5), np.zeros((4, 4, 3)), data_range=1.0)
  with pytest.raises(ValueError, match="crop_border"):
    R.psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), crop_border=2)


# ------------------------------------------------------------------ streaming evaluator


def _old_restoration_summary(outputs, class_names, with_accuracy):
  """The concatenating summary the methods used before streaming (kept as the reference)."""
  valid = outputs["valid"].astype(bool)
  gt, lq, out = (R.to_uint8(outputs[k][valid]) for k in ("gt", "lq", "restored"))
  labels = outputs["label"][valid]
  per_image = {
      "psnr_input": np.array([R.psnr(a, b) for a, b in zip(lq, gt)]),
      "psnr": np.array([R.psnr(a, b) for a, b in zip(out, gt)]),
      "ssim_input": np.array([R.ssim(a, b) for a, b in zip(lq, gt)]),
      "ssim": np.array([R.ssim(a, b) for a, b in zip(out, gt)]),
  }
  per_image = {k: np.minimum(v, 100.0) for k, v in per_image.items()}
  summary = {k: float(v.mean()) for k, v in per_image.items()}
  for index, name in enumerate(class_names):
    sel = labels == index
    if sel.any():
      for k, v in per_image.items():
        summary[f"{k}/{name}"] = float(v[sel].mean())
  if with_accuracy:
    correct = outputs["pred"][valid] == labels
    summary["accuracy"] = float(correct.mean())
    for index, name in enumerate(class_names):
      sel = labels == index
      if sel.any():
        summary[f"accuracy/{name}"] = float(correct[sel].mean())
  return summary


def _old_image_grid(outputs, keys=("lq", "restored", "gt"), max_rows=6):
  valid = np.flatnonzero(outputs["valid"])
  labels = outputs["label"][valid]
  rows = [valid[labels == c][0] for c in np.unique(labels)][:max_rows]
  tiles = []
  for i in rows:
    row = [
        np.pad(np.clip(outputs[k][i], 0, 1), ((2, 2), (2, 2), (0, 0)), constant_values=1.0)
        for k in keys
    ]
    tiles.append(np.concatenate(row, axis=1))
  return np.concatenate(tiles, axis=0)


def _eval_batches(seed=0, batches=3, batch=4, size=16):
  rng = np.random.default_rng(seed)
  out = []
  for b in range(batches):
    gt = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), -0.1, 1.1).astype(np.float32)
    restored = (gt + rng.normal(0, 0.05, gt.shape)).astype(np.float32)
    restored[0] = gt[0]  # an exact restoration: capped PSNR
    label = rng.integers(0, 3, batch).astype(np.int32)  # type 3 never occurs
    valid = np.ones(batch, bool)
    if b == batches - 1:
      valid[-1] = False  # padding in the last batch
      restored[-1] = 5.0
    pred = np.where(rng.uniform(size=batch) < 0.6, label, (label + 1) % 4).astype(np.int32)
    out.append(
        ({"lq": lq, "gt": gt, "label": label, "valid": valid}, {"restored": restored, "pred": pred})
    )
  return out


@pytest.mark.parametrize("with_accuracy", [False, True])
def test_streaming_equals_concatenated_summary(with_accuracy):
  names = ("noise", "blur", "jpeg", "haze")
  batches = _eval_batches()
  ev = R.RestorationEvaluator(names, with_accuracy=with_accuracy)
  for batch, outputs in batches:
    ev.update(batch, outputs)
  got = ev.compute()
  host = {
      k: np.concatenate([{**b, **o}[k] for b, o in batches])
      for k in {**batches[0][0], **batches[0][1]}
  }
  want = _old_restoration_summary(host, names, with_accuracy)
  assert set(got) == set(want)
  assert "psnr/haze" not in got  # no example of that type
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-12, err_msg=k)
  np.testing.assert_array_equal(ev.images(), _old_image_grid(host))
  # Two "hosts" with half of the batches each, merged, give the same numbers.
  a = R.RestorationEvaluator(names, with_accuracy=with_accuracy)
  b = R.RestorationEvaluator(names, with_accuracy=with_accuracy)
  a.update(*batches[0])
  for batch, outputs in batches[1:]:
    b.update(batch, outputs)
  merged = a.merge(b).compute()
  for k in want:
    np.testing.assert_allclose(merged[k], want[k], rtol=1e-12, err_msg=k)
  # Statistics exist before the first batch (hosts that see no example still hold them).
  fresh = R.RestorationEvaluator(names, with_accuracy=with_accuracy)
  assert set(fresh.sums) == set(a.sums) and all(v.shape == (4,) for v in fresh.sums.values())


def test_float_images_score_unrounded_pixels():
  rng = np.random.default_rng(1)
  gt = rng.integers(20, 230, (1, 16, 16, 3)) / 255.0  # on the uint8 levels
  out = gt + 0.3 / 255.0  # sub-level error: vanishes when rounded to uint8
  ev = R.RestorationEvaluator(("a",), float_images=True)
  ev.accumulate(out, gt, gt)
  want = 10 * np.log10(1.0 / np.mean((out - gt) ** 2))
  np.testing.assert_allclose(ev.compute()["psnr"], want, rtol=1e-9)
  ev8 = R.RestorationEvaluator(("a",))
  ev8.accumulate(out, gt, gt)
  assert ev8.compute()["psnr"] == R.PSNR_CAP  # rounding hides the error


def test_accumulate_crops_to_sizes_and_checks_labels():
  rng = np.random.default_rng(2)
  gt = rng.uniform(0, 1, (2, 20, 20, 3))
  out = gt.copy()
  out[:, 16:, :] = 0.0  # garbage outside the valid 16 x 16 region
  out[:, :, 16:] = 0.0
  ev = R.RestorationEvaluator(("a", "b"))
  ev.accumulate(out, gt, gt, labels=[0, 1], sizes=[(16, 16), (16, 16)])
  assert ev.compute()["psnr"] == R.PSNR_CAP
  with pytest.raises(ValueError, match="out of range"):
    ev.accumulate(out, gt, gt, labels=[0, 2])


def test_evaluate_task_released_denoise_inputs_and_float_metrics(tmp_path):
  """evaluate.py: the denoise task's inputs are made from gt/ only (released protocol: float,
  unclipped, seed 0) and scored in uint8 or, with float_metrics, on float images."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxmilab import evaluate  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import basic_degradations  # pylint: disable=g-import-not-at-top

  gt = np.random.default_rng(4).integers(0, 256, (20, 24, 3), dtype=np.uint8)
  (tmp_path / "denoise" / "gt").mkdir(parents=True)
  Image.fromarray(gt).save(tmp_path / "denoise" / "gt" / "a.png")
  identity = lambda x: x
  noisy = basic_degradations.gaussian_noise_released(gt.astype(np.float32) / 255.0, 25.0)
  got = evaluate.evaluate_task(identity, str(tmp_path), "denoise", denoise_sigma=25.0)
  assert got["images"] == 1
  np.testing.assert_allclose(got["psnr"], R.psnr(R.to_uint8(noisy), gt), rtol=1e-12)
  got_f = evaluate.evaluate_task(
      identity, str(tmp_path), "denoise", denoise_sigma=25.0, float_metrics=True
  )
  want_f = 10 * np.log10(1.0 / np.mean((np.clip(noisy.astype(np.float64), 0, 1) - gt / 255.0) ** 2))
  np.testing.assert_allclose(got_f["psnr"], want_f, rtol=1e-9)
  assert got_f["psnr"] != got["psnr"]
