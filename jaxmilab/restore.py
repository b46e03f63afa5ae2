r"""Restore images with a restoration network and official or jaxmilab weights.

  python -m jaxmilab.restore --model=nafnet_dcpt --weights=dcpt_nafnet_5d.pth \
      --input=photo.png --output=restored.png [--tile=512 --tile_overlap=32]
  python -m jaxmilab.restore --list_models

--weights: a BasicSR `.pth` (`params_ema`, else `params`, else a bare state dict; read without
running pickled code and without torch), a `.safetensors` file, or an orbax checkpoint of a
jaxmilab run (workdir, its checkpoints/ or checkpoints/<step>/; the backbone is used).
--input / --output: one image and an output file (or an existing folder), or a folder of
images and an output folder (PNG files named like the inputs; a progress bar counts them).
Photos are read upright (EXIF orientation applied). Output = round(clip(y, 0, 1) *
255), BasicSR's `tensor2img`.

Padding (each checked against MILab-PKU/dcpt options/all_in_one/test/*.yml and
`SRModel.pre_test`): DCPT reflect-pads the input to a multiple of `network_g.window_size` and
crops the output. For NAFNet that is 16 (test_NAFNet_5d.yml), and DCPT's `NAFNetBaseline` does
not pad itself, so `nafnet_dcpt` reflect-pads to 16 here before the network (the flax NAFNet's
own zero padding to 2**levels = 16 is then a no-op). megvii's NAFNet pads with zeros inside its
forward, which the flax model does, so the official NAFNet names add nothing. SwinIR, Restormer
and PromptIR reflect-pad to their window / 8 inside the flax models, the same as DCPT's
`pre_test` (window_size 8) and SwinIR's own `check_image_size`.

Tiling (--tile=N): the image is cut into N x N tiles (N rounded up to the padding unit) that
overlap by --tile_overlap pixels; every tile has the same shape, so the network is compiled once
per image size, and only one tile is on the device at a time (a 4K photo fits a laptop). Tile
outputs are blended with weights that are 0 within overlap/4 of a tile's inner edge and ramp to
1 over the next overlap/2, so every output pixel comes from tiles where it lies at least
overlap/4 from an edge: for a network whose receptive field is within overlap/4, the result
equals the untiled one exactly. All four backbones also have global operations (NAFNet's
channel attention pools the whole tile, Restormer/PromptIR attend over channels across the
tile, PromptIR's prompt weights pool it, SwinIR's shifted windows wrap around it), so a tiled
result differs slightly from the untiled one everywhere, as with BasicSR's `test_tile`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import numpy as np

from jaxmilab import console


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A named network: its config.model, DCPT's pre-network reflect padding, and provenance."""
  model: dict[str, Any]
  source: str
  reflect_pad: int | None = None   # pad the input (bottom/right, reflect) to this multiple


_DCPT = "MILab-PKU/dcpt options/all_in_one/test/test_{}_5d.yml (pretrained_models/dcpt_{}_5d.pth)"
MODELS: dict[str, ModelSpec] = {
    # DCPT's NAFNetBaseline: width 64, enc [1,1,1,28], middle 1, dec [1,1,1,1], window_size 16.
    "nafnet_dcpt": ModelSpec({"name": "nafnet", "preset": "nafnet_dcpt"},
                             _DCPT.format("NAFNet", "nafnet"), reflect_pad=16),
    # megvii-research/NAFNet options/test/SIDD/NAFNet-width64.yml.
    "nafnet_sidd": ModelSpec({"name": "nafnet", "width": 64, "enc_blocks": (2, 2, 4, 8),
                              "middle_blocks": 12, "dec_blocks": (2, 2, 2, 2)},
                             "megvii-research/NAFNet NAFNet-SIDD-width64.pth"),
    # megvii-research/NAFNet options/test/GoPro/NAFNet-width64.yml (its test-time local
    # converter, NAFNetLocal / TLC, is not implemented: global pooling over the whole image).
    "nafnet_gopro": ModelSpec({"name": "nafnet", "preset": "nafnet_dcpt"},
                              "megvii-research/NAFNet NAFNet-GoPro-width64.pth (without TLC)"),
    "swinir": ModelSpec({"name": "swinir", "preset": "swinir"},
                        "JingyunLiang/SwinIR color_dn (e.g. 005_colorDN_DFWB_s128w8_SwinIR-M_noise25.pth)"),
    "swinir_dcpt": ModelSpec({"name": "swinir", "preset": "swinir_dcpt"},
                             _DCPT.format("SwinIR", "swinir")),
    "restormer": ModelSpec({"name": "restormer", "preset": "restormer"},
                           "swz30/Restormer denoising models (BiasFree LayerNorm)"),
    "restormer_dcpt": ModelSpec({"name": "restormer", "preset": "restormer_dcpt"},
                                _DCPT.format("Restormer", "restormer")),
    "promptir": ModelSpec({"name": "promptir", "preset": "promptir"},
                          "va1shn9v/PromptIR (net.* keys of its Lightning checkpoint)"),
    "promptir_dcpt": ModelSpec({"name": "promptir", "preset": "promptir_dcpt"},
                               _DCPT.format("PromptIR", "promptir")),
    # Small presets for quickstarts and tests (jaxmilab's own runs, random weights).
    "nafnet_small": ModelSpec({"name": "nafnet", "preset": "nafnet_small"}, "jaxmilab preset"),
    "nafnet_tiny": ModelSpec({"name": "nafnet", "preset": "nafnet_tiny"}, "jaxmilab test preset"),
    "nafnet_dcpt_tiny": ModelSpec({"name": "nafnet", "preset": "nafnet_tiny"},
                                  "jaxmilab test preset, DCPT padding", reflect_pad=4),
}
MODELS.update({preset: ModelSpec({"name": preset.split("_")[0], "preset": preset},
                                 "jaxmilab test preset")
               for preset in ("swinir_tiny", "swinir_dcpt_tiny", "restormer_tiny",
                              "restormer_dcpt_tiny", "promptir_tiny", "promptir_dcpt_tiny")})


def get_spec(name: str) -> ModelSpec:
  if name not in MODELS:
    raise ValueError(f"--model={name!r} is not a known model; choose one of {sorted(MODELS)} "
                     f"(python -m jaxmilab.restore --list_models).")
  return MODELS[name]


def load_params(name: str, weights: str) -> Any:
  """Backbone params of model `name` from a .pth / .safetensors file or an orbax checkpoint,
  checked key by key against the network (one error listing every difference)."""
  from jaxmilab import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxmilab import convert  # pylint: disable=g-import-not-at-top
  from jaxmilab.convert import mapping  # pylint: disable=g-import-not-at-top
  spec = get_spec(name)
  if os.path.isdir(weights):
    loaded = checkpoint.load_variables(weights)
    params = loaded.get("params", {}).get("backbone")
    if params is None:
      raise ValueError(f"--weights={weights!r}: the orbax checkpoint has no params/backbone; "
                       f"pass a run of the dcpt, maskdcpt or restoration method.")
    expected, label = convert.expected_params(spec.model)
    mapping.check_params(params, expected, source=weights, model=f"{name}: {label}")
    return params
  if not os.path.exists(weights):
    raise FileNotFoundError(f"--weights={weights!r} does not exist: pass a .pth / .safetensors "
                            f"file or an orbax checkpoint folder.")
  return convert.load_torch_params(weights, spec.model, label=name)


def _blend_profile(start: int, size: int, total: int, overlap: int) -> np.ndarray:
  """1-D blending weights of a tile [start, start + size) of an axis of length `total`."""
  pos = np.arange(size, dtype=np.float64)
  dist = np.full(size, np.inf)
  if start > 0:
    dist = np.minimum(dist, pos)
  if start + size < total:
    dist = np.minimum(dist, size - 1 - pos)
  if overlap <= 0:
    return np.ones(size)
  return np.clip((dist - overlap / 4) / (overlap / 2), 0.0, 1.0)


def _starts(total: int, tile: int, overlap: int) -> list[int]:
  if tile >= total:
    return [0]
  stride = tile - overlap
  return list(range(0, total - tile, stride)) + [total - tile]


def tiled_apply(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int,
                overlap: int, multiple: int = 1) -> np.ndarray:
  """fn over overlapping tiles of image [H, W, C] -> [H, W, C'], blended (module docstring).

  tile is rounded up to `multiple`; every tile has the same shape (min(tile, H), min(tile, W)),
  so a jitted fn compiles once per image size.
  """
  if tile <= 0:
    raise ValueError(f"--tile={tile} must be positive.")
  tile = -(-tile // multiple) * multiple
  if not 0 <= overlap < tile:
    raise ValueError(f"--tile_overlap={overlap} must be in [0, tile={tile}).")
  h, w = image.shape[:2]
  th, tw = min(tile, h), min(tile, w)
  acc = None                                  # float32 accumulators: 4K RGB = 100 MB + 33 MB
  wsum = np.zeros((h, w, 1), np.float32)
  for y0 in _starts(h, th, overlap):
    wy = _blend_profile(y0, th, h, overlap)
    for x0 in _starts(w, tw, overlap):
      weight = (wy[:, None] * _blend_profile(x0, tw, w, overlap)[None, :])[..., None]
      weight = weight.astype(np.float32)
      out = np.asarray(fn(image[y0:y0 + th, x0:x0 + tw]), np.float32)
      if acc is None:
        acc = np.zeros((h, w, out.shape[-1]), np.float32)
      acc[y0:y0 + th, x0:x0 + tw] += weight * out
      wsum[y0:y0 + th, x0:x0 + tw] += weight
  return acc / wsum


class Restorer:
  """A named network with loaded params: __call__(image [H, W, C] float in [0, 1]) -> float32
  [H, W, C] (not clipped). Jits one function; it compiles once per input shape."""

  def __init__(self, name: str, params: Any, *, tile: int | None = None, tile_overlap: int = 32):
    import jax  # pylint: disable=g-import-not-at-top
    from jaxmilab import registry  # pylint: disable=g-import-not-at-top
    self.name, self.spec = name, get_spec(name)
    self.model = registry.get_model(self.spec.model["name"])(self.spec.model)
    self.params = jax.device_put(params)
    self.tile, self.tile_overlap = tile, tile_overlap
    self._apply = jax.jit(lambda p, x: self.model.apply({"params": p}, x))
    # Tiles are cut at multiples of the padding unit so they need no padding of their own.
    self.multiple = self.spec.reflect_pad or int(getattr(self.model, "pad_multiple", 1))

  def _run(self, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x = image
    if self.spec.reflect_pad:
      m = self.spec.reflect_pad
      x = np.pad(x, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect")   # = F.pad 'reflect'
    y = self._apply(self.params, np.asarray(x, np.float32)[None])
    return np.asarray(y)[0, :h, :w]

  def __call__(self, image: np.ndarray) -> np.ndarray:
    if image.ndim != 3:
      raise ValueError(f"Restorer expects an [H, W, C] image, got shape {image.shape}.")
    if self.tile:
      return tiled_apply(self._run, image, self.tile, self.tile_overlap, self.multiple)
    return self._run(image)


def _is_image(path: str) -> bool:
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  return path.lower().endswith(images.IMAGE_EXTENSIONS)


def plan_io(inp: str, out: str) -> list[tuple[str, str]]:
  """[(input image, output png)] for an image or a folder; creates output folders."""
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  if os.path.isdir(inp):
    if os.path.isfile(out):
      raise ValueError(f"--input={inp!r} is a folder, so --output={out!r} must be a folder.")
    os.makedirs(out, exist_ok=True)
    return [(os.path.join(inp, n), os.path.join(out, os.path.splitext(n)[0] + ".png"))
            for n in images.list_images(inp, what="--input folder")]
  if not os.path.isfile(inp):
    raise FileNotFoundError(f"--input={inp!r} is neither an image file nor a folder.")
  if os.path.isdir(out) or not _is_image(out):
    os.makedirs(out, exist_ok=True)
    out = os.path.join(out, os.path.splitext(os.path.basename(inp))[0] + ".png")
  else:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  return [(inp, out)]


def restore_file(restorer: Restorer, src: str, dst: str) -> np.ndarray:
  """Reads src, restores it, writes dst (PNG, uint8); returns the uint8 [H, W, 3] output."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top
  from jaxmilab.evaluation import restoration  # pylint: disable=g-import-not-at-top
  lq = images.read_image(src).astype(np.float32) / 255.0          # [H, W, 3]
  out = restoration.to_uint8(restorer(lq))
  Image.fromarray(out).save(dst, format="PNG")
  return out


def list_models() -> str:
  width = max(len(n) for n in MODELS)
  return "\n".join(f"{n:<{width}}  {s.model}  [{s.source}]" + (
      f"  reflect-pad {s.reflect_pad}" if s.reflect_pad else "") for n, s in MODELS.items())


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, *, io: bool = True) -> None:
  """restore's flags on `flag_values` (defined only when run as a program or by main(), so
  importing this module adds none). io=False: only the model flags (shared with evaluate)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string("model", None, "A network name of --list_models.", **fv)
  flags.DEFINE_string("weights", None, "A .pth / .safetensors file or an orbax checkpoint folder "
                      "(a jaxmilab workdir, its checkpoints/ or checkpoints/<step>/).", **fv)
  flags.DEFINE_integer("tile", 0, "Tile size in pixels (0: the whole image at once).", **fv)
  flags.DEFINE_integer("tile_overlap", 32, "Overlap of neighbouring tiles in pixels.", **fv)
  if io:
    flags.DEFINE_string("input", None, "An image or a folder of images.", **fv)
    flags.DEFINE_string("output", None, "An output image (.png) or folder.", **fv)
    flags.DEFINE_bool("list_models", False, "Print the known networks and exit.", **fv)


def restore_main(fv: flags.FlagValues) -> int:
  """The CLI on parsed flags: restores every --input image into --output, with a progress bar."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if fv.list_models:
    print(list_models())
    return 0
  for flag in ("model", "weights", "input", "output"):
    if not fv[flag].value:
      raise ValueError(f"--{flag} is required (or pass --list_models); see --help.")
  get_spec(fv.model)
  jobs = plan_io(fv.input, fv.output)
  restorer = Restorer(fv.model, load_params(fv.model, fv.weights), tile=fv.tile or None,
                      tile_overlap=fv.tile_overlap)
  bar = tqdm(jobs, desc="restore", unit="image", disable=len(jobs) < 2, dynamic_ncols=True)
  for src, dst in bar:
    start = time.time()
    restore_file(restorer, src, dst)
    tqdm.write(f"{src} -> {dst} ({time.time() - start:.1f} s)")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """In-process entry (tests, notebooks): main(["--model=...", ...]) parses `argv` on a fresh
  flag set, so it can be called repeatedly next to other CLIs' flags."""
  fv = console.parse_flags(define_flags, argv or [], prog="jaxmilab-restore")
  return restore_main(fv)


def _app_main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  run_cli(lambda: restore_main(flags.FLAGS))


def run() -> None:
  """Console-script entry point (jaxmilab-restore)."""
  define_flags()
  app.run(_app_main)


def run_cli(main_fn: Callable[[], int]) -> None:
  """Exits with main_fn()'s status; bad input (ValueError, FileNotFoundError) exits with its
  one-line message (it says what to do) instead of a traceback. Shared with jaxmilab.evaluate."""
  try:
    sys.exit(main_fn())
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  run()
