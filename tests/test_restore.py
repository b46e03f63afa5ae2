"""The restore and evaluate CLIs (called in-process): PNG output equal to the PyTorch pipeline's
(tensor2img rounding), orbax weights, tiling, and the paper-table evaluation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxmilab import evaluate
from jaxmilab import restore
from test_convert import build_torch
from test_convert import case_data  # pylint: disable=unused-import  (module-scoped fixture)
from test_convert import torch_restore


def _write_png(path, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path)


def _read_png(path) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"))


def _tensor2img(y: np.ndarray) -> np.ndarray:
  """BasicSR tensor2img, written out: clamp to [0, 1], * 255, round, uint8."""
  return (np.clip(y, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@pytest.mark.torch
def test_restore_cli_reproduces_torch_png(case_data, tmp_path):  # pylint: disable=redefined-outer-name
  src = str(tmp_path / "in" / "photo.png")
  _write_png(src, case_data["image"])
  dst = str(tmp_path / "out" / "restored.png")
  assert restore.main([f"--model={case_data['name']}", f"--weights={case_data['pth']}",
                       f"--input={src}", f"--output={dst}"]) == 0
  got = _read_png(dst).astype(int)
  want = _tensor2img(case_data["torch_out"]).astype(int)
  assert got.shape == want.shape
  diff = np.abs(got - want)
  # Float differences of ~1e-6 can only flip rounding ties: at most a few values off by one.
  assert diff.max() <= 1 and (diff > 0).sum() <= 3, (case_data["name"], (diff > 0).sum())


@pytest.mark.torch
def test_restore_folder_with_safetensors_and_orbax_weights(tmp_path):
  torch = pytest.importorskip("torch")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  from jaxmilab import convert  # pylint: disable=g-import-not-at-top
  net, sd = build_torch("nafnet_tiny")
  st = str(tmp_path / "w.safetensors")
  save_file({k: v.contiguous() for k, v in sd.items()}, st)
  rng = np.random.default_rng(3)
  images = {n: rng.integers(0, 256, (21, 13, 3), dtype=np.uint8) for n in ("a.png", "b.jpg")}
  for n, im in images.items():
    _write_png(str(tmp_path / "in" / n), im)       # JPEG is lossy: compare on what was read
  # An orbax checkpoint laid out like a jaxmilab run: <workdir>/checkpoints/<step>/state.
  params = convert.load_torch_params(st, restore.get_spec("nafnet_tiny").model)
  workdir = tmp_path / "run"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(str(workdir / "checkpoints" / "7" / "state"),
               {"params": {"backbone": params}, "model_state": {}, "step": np.int32(7)})
  for weights, out in ((st, "out_st"), (str(workdir), "out_orbax")):
    assert restore.main(["--model=nafnet_tiny", f"--weights={weights}",
                         f"--input={tmp_path / 'in'}", f"--output={tmp_path / out}"]) == 0
  for n in images:
    stem = os.path.splitext(n)[0] + ".png"
    lq = np.asarray(Image.open(tmp_path / "in" / n).convert("RGB"))
    want = _tensor2img(torch_restore(net, "nafnet_tiny", lq.astype(np.float32) / 255.0))
    for out in ("out_st", "out_orbax"):
      diff = np.abs(_read_png(tmp_path / out / stem).astype(int) - want)
      assert diff.max() <= 1 and (diff > 0).sum() <= 3, (out, n)


def test_tiling_is_exact_for_a_local_operator():
  """Blended tiles of a 5x5 box filter (radius 2) equal the untiled filter everywhere once the
  overlap is at least 4x the radius (weights vanish within overlap/4 of inner tile edges)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  image = np.random.default_rng(0).uniform(0, 1, (45, 38, 3)).astype(np.float32)
  box = lambda x: ndimage.uniform_filter(x, size=(5, 5, 1), mode="reflect")
  want = box(image)
  for tile, overlap, multiple in ((16, 8, 1), (13, 9, 4), (64, 8, 1), (20, 12, 1)):
    got = restore.tiled_apply(box, image, tile, overlap, multiple)
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{tile} {overlap}")
  # Too little overlap for the radius: the seams show (the test above can fail).
  assert np.abs(restore.tiled_apply(box, image, 16, 2) - want).max() > 1e-3
  with pytest.raises(ValueError, match="tile_overlap"):
    restore.tiled_apply(box, image, 16, 16)


def test_tiled_swinir_equals_untiled():
  """Official SwinIR (window attention with the shift mask, 3x3 convs) is local: receptive
  radius <= 4 blocks x 3 px + 5 convs = 17 px < overlap / 4, and tile origins fall on the window
  grid, so tiled inference reproduces the untiled output everywhere."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxmilab import registry  # pylint: disable=g-import-not-at-top
  spec = restore.get_spec("swinir_tiny")
  model = registry.get_model("swinir")(spec.model)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))["params"]
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * np.sign(p), params)   # non-trivial
  image = np.random.default_rng(0).uniform(0, 1, (96, 92, 3)).astype(np.float32)   # 3 x 3 tiles
  full = restore.Restorer("swinir_tiny", params)(image)
  tiled = restore.Restorer("swinir_tiny", params, tile=80, tile_overlap=72)(image)
  assert spec.reflect_pad is None
  np.testing.assert_allclose(tiled, full, atol=2e-5)
  assert np.abs(full - image).max() > 0.05


@pytest.mark.torch
def test_evaluate_prints_table_equal_to_direct_psnr(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  from skimage.metrics import peak_signal_noise_ratio  # pylint: disable=g-import-not-at-top
  net, sd = build_torch("nafnet_tiny")
  pth = str(tmp_path / "nafnet.pth")
  torch.save({"params": sd}, pth)
  root = tmp_path / "5d"
  rng = np.random.default_rng(5)
  expected, restored = {}, {}
  for task in ("derain", "lowlight"):
    scores = []
    for i in range(2):
      gt = rng.integers(0, 256, (21, 13, 3), dtype=np.uint8)
      lq = np.clip(gt.astype(int) + rng.integers(-40, 40, gt.shape), 0, 255).astype(np.uint8)
      _write_png(str(root / task / "lq" / f"{i}.png"), lq)
      _write_png(str(root / task / "gt" / f"{i}.png"), gt)
      out = _tensor2img(torch_restore(net, "nafnet_tiny", lq.astype(np.float32) / 255.0))
      restored[(task, i)] = out
      scores.append(peak_signal_noise_ratio(gt, out, data_range=255))
    expected[task] = np.mean(scores)
  out_json = str(tmp_path / "table.json")
  saved = tmp_path / "restored"
  assert evaluate.main(["--model=nafnet_tiny", f"--weights={pth}", f"--data_root={root}",
                        "--tasks=derain,lowlight", f"--output={out_json}",
                        f"--save_images={saved}"]) == 0
  printed = capsys.readouterr().out
  # --save_images: every restored image, as scored (uint8 PNG), under <save_images>/<task>/.
  assert sorted(os.listdir(saved)) == ["derain", "lowlight"]
  for (task, i), want in restored.items():
    diff = np.abs(_read_png(saved / task / f"{i}.png").astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).sum() <= 3, (task, i)
  assert "| Method | Deraining (Rain100L) | Low-Light (LOL) | Average |" in printed
  row = [line for line in printed.splitlines() if line.startswith("| nafnet_tiny |")]
  assert len(row) == 1
  with open(out_json, encoding="utf-8") as f:
    table = json.load(f)
  for task, psnr in expected.items():
    assert table["tasks"][task]["psnr"] == pytest.approx(psnr, rel=1e-3), task
    assert f"{table['tasks'][task]['psnr']:.2f} / " in row[0]
  assert table["average"]["psnr"] == pytest.approx(np.mean(list(expected.values())), rel=1e-3)
  # Our SSIM is BasicSR's; on uint8 it is within [0, 1] and reported per task too.
  assert all(0 < table["tasks"][t]["ssim"] <= 1 for t in expected)


def test_task_sets_and_paper_rows():
  tasks, paper = evaluate.parse_tasks("5d")
  assert tasks == ("dehaze", "derain", "denoise", "deblur", "lowlight")
  # DCPT Table 1: the average column is the mean of the five task columns (to rounding).
  for name, row in paper.items():
    assert np.mean([row[t][0] for t in tasks]) == pytest.approx(row["average"][0], abs=0.011), name
  tasks10, paper10 = evaluate.parse_tasks("10d")
  assert len(tasks10) == 10
  assert np.mean([paper10["nafnet_dcpt"][t][0] for t in tasks10]) == pytest.approx(29.72, abs=0.011)
  assert evaluate.parse_tasks("derain, dehaze")[0] == ("derain", "dehaze")
  results = {t: {"psnr": 30.0 + i, "ssim": 0.9} for i, t in enumerate(tasks)}
  table = evaluate.format_table("nafnet_dcpt", results, tasks, paper["nafnet_dcpt"])
  assert "| nafnet_dcpt | 30.00 / 0.900 | 31.00 / 0.900 |" in table
  assert table.splitlines()[-1].endswith("| 29.84 / 0.914 |")


def test_list_models_and_dcpt_settings(capsys):
  from jaxmilab.models import nafnet  # pylint: disable=g-import-not-at-top
  assert restore.main(["--list_models"]) == 0
  printed = capsys.readouterr().out
  for name in ("nafnet_dcpt", "swinir_dcpt", "restormer_dcpt", "promptir_dcpt", "swinir",
               "restormer", "promptir", "nafnet_tiny", "swinir_tiny"):
    assert f"\n{name} " in "\n" + printed, name
  # DCPT's NAFNet (test_NAFNet_5d.yml): width 64, enc [1,1,1,28], middle 1, dec [1,1,1,1],
  # window_size 16 -> reflect padding to 16.
  spec = restore.get_spec("nafnet_dcpt")
  cfg = nafnet.resolve_config(spec.model)
  assert (cfg["width"], cfg["enc_blocks"], cfg["middle_blocks"], cfg["dec_blocks"]) == (
      64, (1, 1, 1, 28), 1, (1, 1, 1, 1))
  assert spec.reflect_pad == 16
  with pytest.raises(ValueError, match="not a known model"):
    restore.get_spec("nafnet_huge")


def test_read_image_applies_exif_orientation(tmp_path):
  """A JPEG stored sideways with EXIF Orientation 6 (rotate 90 CW to display) is read upright."""
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  upright = np.zeros((40, 24, 3), np.uint8)      # tall image, red band at the top
  upright[:8] = (255, 0, 0)
  stored = np.rot90(upright, k=1)                # what a camera writes: 90 deg CCW, [24, 40]
  exif = Image.Exif()
  exif[0x0112] = 6                               # Orientation: rotate 90 CW when displayed
  path = str(tmp_path / "phone.jpg")
  Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
  got = images.read_image(path)
  assert got.shape == (40, 24, 3)
  assert got[:8, :, 0].mean() > 200 and got[-8:, :, 0].mean() < 50   # the band is on top
  plain = str(tmp_path / "plain.jpg")
  Image.fromarray(np.ascontiguousarray(stored)).save(plain, quality=95)
  assert images.read_image(plain).shape == (24, 40, 3)                # no tag: unchanged
