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
from test_convert import case_data  # noqa: F401  (module-scoped fixture)
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
def test_restore_cli_reproduces_torch_png(case_data, tmp_path):  # noqa: F811  # pylint: disable=redefined-outer-name
  src = str(tmp_path / "in" / "photo.png")
  _write_png(src, case_data["image"])
  dst = str(tmp_path / "out" / "restored.png")
  assert (
      restore.main(
          [
              f"--model={case_data['name']}",
              f"--weights={case_data['pth']}",
              f"--input={src}",
              f"--output={dst}",
          ]
      )
      == 0
  )
  got = _read_png(dst).astype(int)
  want = _tensor2img(case_data["torch_out"]).astype(int)
  assert got.shape == want.shape
  diff = np.abs(got - want)
  # Float differences of ~1e-6 can only flip rounding ties: at most a few values off by one.
  assert diff.max() <= 1 and (diff > 0).sum() <= 3, (case_data["name"], (diff > 0).sum())


@pytest.mark.torch
def test_restore_folder_with_safetensors_and_orbax_weights(tmp_path):
  pytest.importorskip("torch")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  from jaxmilab import convert  # pylint: disable=g-import-not-at-top

  net, sd = build_torch("nafnet_tiny")
  st = str(tmp_path / "w.safetensors")
  save_file({k: v.contiguous() for k, v in sd.items()}, st)
  rng = np.random.default_rng(3)
  images = {n: rng.integers(0, 256, (21, 13, 3), dtype=np.uint8) for n in ("a.png", "b.jpg")}
  for n, im in images.items():
    _write_png(str(tmp_path / "in" / n), im)  # JPEG is lossy: compare on what was read
  # An orbax checkpoint laid out like a jaxmilab run: <workdir>/checkpoints/<step>/state.
  params = convert.load_torch_params(st, restore.get_spec("nafnet_tiny").model)
  workdir = tmp_path / "run"
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(
        str(workdir / "checkpoints" / "7" / "state"),
        {"params": {"backbone": params}, "model_state": {}, "step": np.int32(7)},
    )
  for weights, out in ((st, "out_st"), (str(workdir), "out_orbax")):
    assert (
        restore.main(
            [
                "--model=nafnet_tiny",
                f"--weights={weights}",
                f"--input={tmp_path / 'in'}",
                f"--output={tmp_path / out}",
            ]
        )
        == 0
    )
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
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * np.sign(p), params)  # non-trivial
  image = np.random.default_rng(0).uniform(0, 1, (96, 92, 3)).astype(np.float32)  # 3 x 3 tiles
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
  assert (
      evaluate.main(
          [
              "--model=nafnet_tiny",
              f"--weights={pth}",
              f"--data_root={root}",
              "--tasks=derain,lowlight",
              f"--output={out_json}",
              f"--save_images={saved}",
          ]
      )
      == 0
  )
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
  for name in (
      "nafnet_dcpt",
      "swinir_dcpt",
      "restormer_dcpt",
      "promptir_dcpt",
      "swinir",
      "restormer",
      "promptir",
      "nafnet_tiny",
      "swinir_tiny",
  ):
    assert f"\n{name} " in "\n" + printed, name
  # DCPT's NAFNet (test_NAFNet_5d.yml): width 64, enc [1,1,1,28], middle 1, dec [1,1,1,1],
  # window_size 16 -> reflect padding to 16.
  spec = restore.get_spec("nafnet_dcpt")
  cfg = nafnet.resolve_config(spec.model)
  assert (cfg["width"], cfg["enc_blocks"], cfg["middle_blocks"], cfg["dec_blocks"]) == (
      64,
      (1, 1, 1, 28),
      1,
      (1, 1, 1, 1),
  )
  assert spec.reflect_pad == 16
  with pytest.raises(ValueError, match="not a known model"):
    restore.get_spec("nafnet_huge")


def test_read_image_applies_exif_orientation(tmp_path):
  """A JPEG stored sideways with EXIF Orientation 6 (rotate 90 CW to display) is read upright."""
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top

  upright = np.zeros((40, 24, 3), np.uint8)  # tall image, red band at the top
  upright[:8] = (255, 0, 0)
  stored = np.rot90(upright, k=1)  # what a camera writes: 90 deg CCW, [24, 40]
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 CW when displayed
  path = str(tmp_path / "phone.jpg")
  Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
  got = images.read_image(path)
  assert got.shape == (40, 24, 3)
  assert got[:8, :, 0].mean() > 200 and got[-8:, :, 0].mean() < 50  # the band is on top
  plain = str(tmp_path / "plain.jpg")
  Image.fromarray(np.ascontiguousarray(stored)).save(plain, quality=95)
  assert images.read_image(plain).shape == (24, 40, 3)  # no tag: unchanged


# ------------------------------------------------------------- nothing a user owns is lost (#32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """A jaxmilab-style workdir of random nafnet_tiny weights with the config.json of a run."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from jaxmilab import registry  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.mktemp("tiny_run")
  model = registry.get_model("nafnet")(restore.get_spec("nafnet_tiny").model)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 16, 16, 3), np.float32))["params"]
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(
        str(workdir / "checkpoints" / "3" / "state"),
        {"params": {"backbone": jax.device_get(params)}, "model_state": {}, "step": np.int32(3)},
    )
  (workdir / "config.json").write_text(
      json.dumps({"model": {"name": "nafnet", "preset": "nafnet_tiny", "width": None}})
  )
  return str(workdir)


def _rgb(seed, shape=(20, 24, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_restore_refuses_to_overwrite_its_inputs(tmp_path):
  photo = tmp_path / "victim.png"
  _write_png(str(photo), _rgb(0))
  before = photo.read_bytes()
  with pytest.raises(ValueError, match="would overwrite the --input image"):
    restore.main(["--weights=w", f"--input={photo}", f"--output={photo}"])
  with pytest.raises(ValueError, match="is the --input folder"):
    restore.main(["--weights=w", f"--input={tmp_path}", f"--output={tmp_path}/"])
  with pytest.raises(ValueError, match="cannot write .gif files"):
    restore.plan_io(str(photo), str(tmp_path / "out.gif"))
  assert photo.read_bytes() == before


def test_same_stem_inputs_get_distinct_outputs(tmp_path):
  for name in ("c.png", "c.jpg", "d.png"):
    _write_png(str(tmp_path / "in" / name), _rgb(1))
  jobs = restore.plan_io(str(tmp_path / "in"), str(tmp_path / "out"))
  assert sorted(os.path.basename(d) for _, d in jobs) == ["c_jpg.png", "c_png.png", "d.png"]
  _write_png(str(tmp_path / "in2" / "e.png"), _rgb(1))
  _write_png(str(tmp_path / "in2" / "e_png.png"), _rgb(1))
  _write_png(str(tmp_path / "in2" / "e.jpg"), _rgb(1))
  with pytest.raises(ValueError, match="would both be written to .*e_png.png"):
    restore.plan_io(str(tmp_path / "in2"), str(tmp_path / "out2"))


def test_output_format_alpha_sixteen_bit_and_greyscale(tiny_run, tmp_path, capsys):
  """The written format is the extension's; alpha, 16 bits and greyscale survive where the
  format holds them, and the line for the image says what was dropped where it does not."""
  cv2 = pytest.importorskip("cv2")
  from jaxmilab.evaluation import restoration  # pylint: disable=g-import-not-at-top

  rgb, alpha = _rgb(2), _rgb(3, (20, 24))
  Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
  gray16 = np.random.default_rng(4).integers(0, 65536, (20, 24)).astype(np.uint16)
  Image.fromarray(gray16).save(tmp_path / "g16.png")
  rgb16 = np.random.default_rng(5).integers(0, 65536, (20, 24, 3)).astype(np.uint16)
  cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
  Image.fromarray(rgb).convert("L").save(tmp_path / "gray.png")
  spec = restore.get_spec("nafnet_tiny")
  restorer = restore.Restorer(
      "nafnet_tiny", restore.load_params("nafnet_tiny", tiny_run), spec=spec
  )
  notes = []
  # RGBA -> PNG: the colour restored as an RGB image would be, the alpha unchanged.
  restore.restore_file(restorer, str(tmp_path / "rgba.png"), str(tmp_path / "o_rgba.png"), notes)
  out = np.asarray(Image.open(tmp_path / "o_rgba.png"))
  assert out.shape == (20, 24, 4) and notes == []
  np.testing.assert_array_equal(out[..., 3], alpha)
  want = restoration.to_uint8(restorer(rgb.astype(np.float32) / 255.0))
  np.testing.assert_array_equal(out[..., :3], want)
  # RGBA -> JPEG: JPEG bytes, alpha dropped with a note.
  restore.restore_file(restorer, str(tmp_path / "rgba.png"), str(tmp_path / "o.jpg"), notes)
  assert (tmp_path / "o.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
  assert notes == ["alpha channel dropped (JPEG has none; write .png or .tif to keep it)"]
  # 16-bit greyscale and 16-bit colour stay 16-bit; 8-bit greyscale stays greyscale.
  restore.restore_file(restorer, str(tmp_path / "g16.png"), str(tmp_path / "o_g16.png"))
  assert Image.open(tmp_path / "o_g16.png").mode == "I;16"
  restore.restore_file(restorer, str(tmp_path / "rgb16.png"), str(tmp_path / "o_rgb16.tif"))
  back = cv2.imread(str(tmp_path / "o_rgb16.tif"), cv2.IMREAD_UNCHANGED)
  assert back.dtype == np.uint16 and back.shape == (20, 24, 3)
  y16 = np.clip(restorer(rgb16.astype(np.float32) / 65535.0), 0, 1)
  np.testing.assert_allclose(back[..., ::-1] / 65535.0, y16, atol=2 / 65535)
  restore.restore_file(restorer, str(tmp_path / "gray.png"), str(tmp_path / "o_gray.png"))
  assert Image.open(tmp_path / "o_gray.png").mode == "L"


def test_folder_skip_existing_continue_on_error_and_model_from_workdir(tiny_run, tmp_path, capsys):
  for name in ("a.png", "c.png"):
    _write_png(str(tmp_path / "in" / name), _rgb(6))
  (tmp_path / "in" / "b.png").write_bytes(b"not a png")
  args = [f"--weights={tiny_run}", f"--input={tmp_path / 'in'}", f"--output={tmp_path / 'out'}"]
  with pytest.raises(ValueError, match=r"b.png.*--continue_on_error goes on past it; 1 image"):
    restore.main(args)  # no --model: the workdir's config.json
  assert restore.main(args + ["--continue_on_error", "--skip_existing"]) == 1
  out = capsys.readouterr().out
  assert "--model=nafnet_tiny (from the config.json of" in out
  assert out.strip().splitlines()[-1] == (
      f"restored 1, skipped 1 (output exists), failed 1 (b.png) -> {tmp_path / 'out'}"
  )
  assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "c.png"]
  name, spec = restore.model_from_workdir(os.path.join(tiny_run, "checkpoints", "3"))
  assert name == "nafnet_tiny" and spec.reflect_pad is None
  with pytest.raises(ValueError, match="--model is required"):
    restore.main(
        [
            f"--weights={tmp_path}",
            f"--input={tmp_path / 'in' / 'a.png'}",
            f"--output={tmp_path / 'x.png'}",
        ]
    )


def test_wrong_model_names_a_few_keys_and_the_model_that_fits(tiny_run):
  with pytest.raises(ValueError) as e:
    restore.load_params("swinir_tiny", tiny_run)
  message = str(e.value)
  assert "\n" not in message and len(message) < 1500, len(message)
  assert "missing: " in message and "more)" in message and "unexpected: " in message
  assert message.endswith("these weights fit --model=nafnet_tiny.")
