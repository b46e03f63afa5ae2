r"""Restore images with a restoration network and official or jaxmilab weights.

  python -m jaxmilab.restore --model=nafnet_dcpt --weights=dcpt_nafnet_5d.pth \
      --input=photo.png --output=restored.png [--tile=512 --tile_overlap=32]
  python -m jaxmilab.restore --list_models

--weights: a BasicSR `.pth` (`params_ema`, else `params`, else a bare state dict; read without
running pickled code and without torch), a `.safetensors` file, or an orbax checkpoint of a
jaxmilab run (workdir, its checkpoints/ or checkpoints/<step>/; the backbone is used).
--model may be left out when --weights is a jaxmilab workdir: its config.json names the network.
--input / --output: one image and an output file (or an existing folder), or a folder of
images and an output folder (PNG files named like the inputs; a progress bar counts them).
Nothing a user owns is overwritten by mistake: an output that is an input (or the input folder)
is refused, and inputs that share a name stem (c.jpg, c.png) get distinct outputs (c_jpg.png,
c_png.png). A single output file is written in the format its extension names (.png, .jpg /
.jpeg, .tif / .tiff, .webp, .bmp, .ppm). Alpha is carried through (the network restores the
colour channels; formats without alpha, JPEG and BMP, drop it and say so), 16-bit images come
out 16-bit (PNG / TIFF; JPEG says it wrote 8 bits), greyscale comes out greyscale (restored as
RGB, then ITU-R 601 luma). Folders: --skip_existing skips outputs that exist, and
--continue_on_error goes on past an unreadable image; a closing line counts the restored,
skipped and failed images. Photos are read upright (EXIF orientation applied). 8-bit output =
round(clip(y, 0, 1) * 255), BasicSR's `tensor2img`; 16-bit: round(clip(y, 0, 1) * 65535).

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
  reflect_pad: int | None = None  # pad the input (bottom/right, reflect) to this multiple


_DCPT = "MILab-PKU/dcpt options/all_in_one/test/test_{}_5d.yml (pretrained_models/dcpt_{}_5d.pth)"
MODELS: dict[str, ModelSpec] = {
    # DCPT's NAFNetBaseline: width 64, enc [1,1,1,28], middle 1, dec [1,1,1,1], window_size 16.
    "nafnet_dcpt": ModelSpec(
        {"name": "nafnet", "preset": "nafnet_dcpt"},
        _DCPT.format("NAFNet", "nafnet"),
        reflect_pad=16,
    ),
    # megvii-research/NAFNet options/test/SIDD/NAFNet-width64.yml.
    "nafnet_sidd": ModelSpec(
        {
            "name": "nafnet",
            "width": 64,
            "enc_blocks": (2, 2, 4, 8),
            "middle_blocks": 12,
            "dec_blocks": (2, 2, 2, 2),
        },
        "megvii-research/NAFNet NAFNet-SIDD-width64.pth",
    ),
    # megvii-research/NAFNet options/test/GoPro/NAFNet-width64.yml (its test-time local
    # converter, NAFNetLocal / TLC, is not implemented: global pooling over the whole image).
    "nafnet_gopro": ModelSpec(
        {"name": "nafnet", "preset": "nafnet_dcpt"},
        "megvii-research/NAFNet NAFNet-GoPro-width64.pth (without TLC)",
    ),
    "swinir": ModelSpec(
        {"name": "swinir", "preset": "swinir"},
        "JingyunLiang/SwinIR color_dn (e.g. 005_colorDN_DFWB_s128w8_SwinIR-M_noise25.pth)",
    ),
    "swinir_dcpt": ModelSpec(
        {"name": "swinir", "preset": "swinir_dcpt"}, _DCPT.format("SwinIR", "swinir")
    ),
    "restormer": ModelSpec(
        {"name": "restormer", "preset": "restormer"},
        "swz30/Restormer denoising models (BiasFree LayerNorm)",
    ),
    "restormer_dcpt": ModelSpec(
        {"name": "restormer", "preset": "restormer_dcpt"}, _DCPT.format("Restormer", "restormer")
    ),
    "promptir": ModelSpec(
        {"name": "promptir", "preset": "promptir"},
        "va1shn9v/PromptIR (net.* keys of its Lightning checkpoint)",
    ),
    "promptir_dcpt": ModelSpec(
        {"name": "promptir", "preset": "promptir_dcpt"}, _DCPT.format("PromptIR", "promptir")
    ),
    # Small presets for quickstarts and tests (jaxmilab's own runs, random weights).
    "nafnet_small": ModelSpec({"name": "nafnet", "preset": "nafnet_small"}, "jaxmilab preset"),
    "nafnet_tiny": ModelSpec({"name": "nafnet", "preset": "nafnet_tiny"}, "jaxmilab test preset"),
    "nafnet_dcpt_tiny": ModelSpec(
        {"name": "nafnet", "preset": "nafnet_tiny"},
        "jaxmilab test preset, DCPT padding",
        reflect_pad=4,
    ),
}
MODELS.update(
    {
        preset: ModelSpec({"name": preset.split("_")[0], "preset": preset}, "jaxmilab test preset")
        for preset in (
            "swinir_tiny",
            "swinir_dcpt_tiny",
            "restormer_tiny",
            "restormer_dcpt_tiny",
            "promptir_tiny",
            "promptir_dcpt_tiny",
        )
    }
)


def get_spec(name: str) -> ModelSpec:
  if name not in MODELS:
    raise ValueError(
        f"--model={name!r} is not a known model; choose one of {sorted(MODELS)} "
        f"(python -m jaxmilab.restore --list_models)."
    )
  return MODELS[name]


def _workdir_config(weights: str) -> tuple[str, dict[str, Any]] | None:
  """(path, config) of the config.json of the jaxmilab run `weights` points into (the workdir,
  its checkpoints/ or a checkpoints/<step>/ folder), if any."""
  import json  # pylint: disable=g-import-not-at-top

  folder = os.path.abspath(os.path.expanduser(weights))
  for _ in range(3):
    path = os.path.join(folder, "config.json")
    if os.path.isfile(path):
      try:
        with open(path, encoding="utf-8") as f:
          return path, json.load(f)
      except ValueError:
        return None
    folder = os.path.dirname(folder)
  return None


def model_from_workdir(weights: str) -> tuple[str, ModelSpec]:
  """The network a jaxmilab workdir's config.json names: a --list_models name when one has the
  same config.model (the one named like the preset first), else that config.model itself."""
  found = _workdir_config(weights) if os.path.isdir(weights) else None
  if found is None:
    raise ValueError(
        f"--model is required: --weights={weights!r} is not a jaxmilab workdir "
        f"with a config.json (see --list_models)."
    )
  path, config = found
  model = {k: v for k, v in (config.get("model") or {}).items() if v is not None}
  if not model.get("name"):
    raise ValueError(f"--model is required: {path} names no config.model.name.")
  matches = [n for n, s in MODELS.items() if s.model == model]
  matches.sort(key=lambda n: n != model.get("preset"))
  if matches:
    return matches[0], MODELS[matches[0]]
  label = f"{model['name']}" + (f" ({model['preset']})" if model.get("preset") else "")
  return label, ModelSpec(model, f"config.model of {path}")


def _likely_models(params: Any, exclude: str) -> list[str]:
  """--list_models names whose network has exactly the parameter paths and shapes of `params`.

  Abstract shapes only (no compute); a network family is only searched when its smallest member
  has the same top-level module names (numbers stripped), so a mismatch costs seconds.
  """
  import re  # pylint: disable=g-import-not-at-top
  from jaxmilab import convert  # pylint: disable=g-import-not-at-top
  from jaxmilab.convert import mapping  # pylint: disable=g-import-not-at-top

  def shapes(model):
    try:
      expected, _ = convert.expected_params(model)
    except Exception:  # pylint: disable=broad-except
      return None
    return {k: tuple(v.shape) for k, v in mapping.flatten(expected).items()}

  def signature(flat):
    return {re.sub(r"[_\d]+$", "", k.split("/")[0]) for k in flat}

  got = {k: tuple(np.shape(v)) for k, v in mapping.flatten(params).items()}
  families: dict[str, list[str]] = {}
  for name, spec in MODELS.items():
    families.setdefault(spec.model["name"], []).append(name)
  names, seen = [], []
  for members in families.values():
    probe = min(members, key=lambda n: ("tiny" not in n, len(n)))
    probe_shapes = shapes(MODELS[probe].model)
    if probe_shapes is None or signature(probe_shapes) != signature(got):
      continue
    for name in members:
      spec = MODELS[name]
      if name == exclude or spec.model in seen:
        continue
      seen.append(spec.model)
      if (probe_shapes if name == probe else shapes(spec.model)) == got:
        names.append(name)
  return names


def _mismatch(error: Exception, params: Any, name: str, weights: str) -> ValueError:
  """A one-line CheckpointMismatchError: counts, the first few keys, the likely --model."""
  lines = str(error).splitlines()
  head = lines[0].split(". Check that")[0]
  parts = [head]
  for line in lines[1:]:
    label, _, items = line.strip().partition(": ")
    keys = [i.strip() for i in items.split("; ") if i.strip()]
    shown = ", ".join(keys[:3]) + (f", ... ({len(keys) - 3} more)" if len(keys) > 3 else "")
    parts.append(f"{label.split(' (')[0]}: {shown}")
  likely = _likely_models(params, name) if params is not None else []
  hint = (
      f"these weights fit --model={' or --model='.join(likely)}"
      if likely
      else "pass the --model the weights were trained with (python -m jaxmilab.restore "
      "--list_models)"
  )
  return ValueError(f"{'; '.join(parts)}; {hint}.")


def load_params(name: str, weights: str, spec: ModelSpec | None = None) -> Any:
  """Backbone params of model `name` (or `spec`) from a .pth / .safetensors file or an orbax
  checkpoint, checked key by key against the network; a mismatch is one ValueError naming the
  first few missing / unexpected keys and the --list_models names the weights do fit."""
  from jaxmilab import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxmilab import convert  # pylint: disable=g-import-not-at-top
  from jaxmilab.convert import mapping  # pylint: disable=g-import-not-at-top
  from jaxmilab.convert import torch_checkpoint  # pylint: disable=g-import-not-at-top

  spec = spec or get_spec(name)
  if os.path.isdir(weights):
    loaded = checkpoint.load_variables(weights)
    params = loaded.get("params", {}).get("backbone")
    if params is None:
      raise ValueError(
          f"--weights={weights!r}: the orbax checkpoint has no params/backbone; "
          f"pass a run of the dcpt, maskdcpt or restoration method."
      )
    expected, label = convert.expected_params(spec.model)
    try:
      mapping.check_params(params, expected, source=weights, model=f"{name}: {label}")
    except mapping.CheckpointMismatchError as e:
      raise _mismatch(e, params, name, weights) from e
    return params
  if not os.path.exists(weights):
    raise FileNotFoundError(
        f"--weights={weights!r} does not exist: pass a .pth / .safetensors "
        f"file or an orbax checkpoint folder."
    )
  try:
    return convert.load_torch_params(weights, spec.model, label=name)
  except mapping.CheckpointMismatchError as e:
    try:
      params = mapping.convert_state_dict(torch_checkpoint.load_state_dict(weights))[0]
    except Exception:  # pylint: disable=broad-except
      params = None
    raise _mismatch(e, params, name, weights) from e


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


def tiled_apply(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    tile: int,
    overlap: int,
    multiple: int = 1,
) -> np.ndarray:
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
  acc = None  # float32 accumulators: 4K RGB = 100 MB + 33 MB
  wsum = np.zeros((h, w, 1), np.float32)
  for y0 in _starts(h, th, overlap):
    wy = _blend_profile(y0, th, h, overlap)
    for x0 in _starts(w, tw, overlap):
      weight = (wy[:, None] * _blend_profile(x0, tw, w, overlap)[None, :])[..., None]
      weight = weight.astype(np.float32)
      out = np.asarray(fn(image[y0 : y0 + th, x0 : x0 + tw]), np.float32)
      if acc is None:
        acc = np.zeros((h, w, out.shape[-1]), np.float32)
      acc[y0 : y0 + th, x0 : x0 + tw] += weight * out
      wsum[y0 : y0 + th, x0 : x0 + tw] += weight
  return acc / wsum


class Restorer:
  """A named network with loaded params: __call__(image [H, W, C] float in [0, 1]) -> float32
  [H, W, C] (not clipped). Jits one function; it compiles once per input shape."""

  def __init__(
      self,
      name: str,
      params: Any,
      *,
      tile: int | None = None,
      tile_overlap: int = 32,
      spec: ModelSpec | None = None,
  ):
    import jax  # pylint: disable=g-import-not-at-top
    from jaxmilab import registry  # pylint: disable=g-import-not-at-top

    self.name, self.spec = name, spec or get_spec(name)
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
      x = np.pad(x, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect")  # = F.pad 'reflect'
    y = self._apply(self.params, np.asarray(x, np.float32)[None])
    return np.asarray(y)[0, :h, :w]

  def __call__(self, image: np.ndarray) -> np.ndarray:
    if image.ndim != 3:
      raise ValueError(f"Restorer expects an [H, W, C] image, got shape {image.shape}.")
    if self.tile:
      return tiled_apply(self._run, image, self.tile, self.tile_overlap, self.multiple)
    return self._run(image)


# Output formats by extension (Pillow names); formats that hold an alpha channel / 16 bits.
OUTPUT_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".ppm": "PPM",
}
_ALPHA_FORMATS = ("PNG", "TIFF", "WEBP")
_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")


def _is_image(path: str) -> bool:
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top

  return path.lower().endswith(images.IMAGE_EXTENSIONS)


def _same_file(a: str, b: str) -> bool:
  if os.path.exists(a) and os.path.exists(b):
    return os.path.samefile(a, b)
  return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def plan_io(inp: str, out: str) -> list[tuple[str, str]]:
  """[(input image, output file)] for an image or a folder; creates output folders.

  Refuses (ValueError, one line) an output that is an input or the input folder, two outputs
  with one name, and an output extension that names no writable format. Folder inputs that
  share a stem (c.jpg, c.png) are written as <stem>_<ext>.png.
  """
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top

  if os.path.isdir(inp):
    if os.path.isfile(out):
      raise ValueError(f"--input={inp!r} is a folder, so --output={out!r} must be a folder.")
    if _same_file(inp, out):
      raise ValueError(
          f"--output={out!r} is the --input folder: the restored images would "
          f"replace or mix with the originals; pass another --output folder."
      )
    names = images.list_images(inp, what="--input folder")
    stems: dict[str, list[str]] = {}
    for n in names:
      stems.setdefault(os.path.splitext(n)[0].lower(), []).append(n)
    jobs, taken = [], {}
    for n in names:
      stem, ext = os.path.splitext(n)
      clash = len(stems[stem.lower()]) > 1
      dst = os.path.join(out, (f"{stem}_{ext[1:].lower()}" if clash else stem) + ".png")
      key = os.path.normcase(dst).lower()
      if key in taken:
        raise ValueError(
            f"--input={inp!r}: {taken[key]} and {n} would both be written to {dst}; "
            f"rename one of them."
        )
      taken[key] = n
      jobs.append((os.path.join(inp, n), dst))
    inputs = {os.path.normcase(os.path.realpath(src)) for src, _ in jobs}
    for src, dst in jobs:
      if os.path.normcase(os.path.realpath(dst)) in inputs:
        raise ValueError(
            f"--output={out!r}: restoring {src} would overwrite the input {dst}; "
            f"pass another --output folder."
        )
    os.makedirs(out, exist_ok=True)
    return jobs
  if not os.path.isfile(inp):
    raise FileNotFoundError(f"--input={inp!r} is neither an image file nor a folder.")
  suffix = os.path.splitext(out)[1].lower()
  if not os.path.isdir(out) and suffix[1:].isalpha() and suffix not in OUTPUT_FORMATS:
    raise ValueError(
        f"--output={out!r}: cannot write {suffix} files; use one of "
        f"{', '.join(sorted(OUTPUT_FORMATS))}, or a folder name without an extension."
    )
  if os.path.isdir(out) or not _is_image(out):
    dst = os.path.join(out, os.path.splitext(os.path.basename(inp))[0] + ".png")
  else:
    dst = out
  ext = os.path.splitext(dst)[1].lower()
  if ext not in OUTPUT_FORMATS:
    raise ValueError(
        f"--output={out!r}: cannot write {ext} files; use one of "
        f"{', '.join(sorted(OUTPUT_FORMATS))}."
    )
  if _same_file(inp, dst):
    raise ValueError(
        f"--output={out!r} would overwrite the --input image {inp}; pass another "
        f"--output file or folder."
    )
  os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
  return [(inp, dst)]


@dataclasses.dataclass
class Picture:
  """An image as read for restoration: RGB float32 [H, W, 3] in [0, 1] plus what to give back."""

  rgb: np.ndarray
  alpha: np.ndarray | None = None  # float32 [H, W] in [0, 1]
  bits: int = 8  # 8 or 16
  gray: bool = False
  notes: list[str] = dataclasses.field(default_factory=list)


def _png_header(path: str) -> tuple[int, int] | None:
  """(bit depth, colour type) of a PNG file, else None."""
  with open(path, "rb") as f:
    head = f.read(26)
  if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26:
    return None
  return head[24], head[25]


def _read_16bit_colour(path: str) -> np.ndarray | None:
  """uint16 [H, W, 3 or 4] (RGB[A]) of a 16-bit colour PNG / TIFF, which Pillow reads as 8-bit;
  None when no reader for it is installed (opencv or tifffile)."""
  if path.lower().endswith((".tif", ".tiff")):
    try:
      import tifffile  # pylint: disable=g-import-not-at-top
    except ImportError:
      tifffile = None
    if tifffile is not None:
      arr = tifffile.imread(path)
      return arr if arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[-1] in (3, 4) else None
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  if arr is None or arr.dtype != np.uint16 or arr.ndim != 3:
    return None
  return arr[..., [2, 1, 0, 3][: arr.shape[-1]]]  # BGR(A) -> RGB(A)


def read_picture(path: str) -> Picture:
  """Decodes `path` upright (EXIF orientation) into a Picture; DataError naming the file if it
  cannot be read."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import images  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise images._missing(path)  # pylint: disable=protected-access
  try:
    header = _png_header(path)
    with Image.open(path) as im:
      im.load()
      im = ImageOps.exif_transpose(im)
      mode = im.mode
      tiff_bits = getattr(im, "tag_v2", None)
      tiff_bits = tiff_bits.get(258) if tiff_bits is not None else None  # BitsPerSample
      tiff_bits = tiff_bits if isinstance(tiff_bits, tuple) else (tiff_bits,)
      sixteen_colour = mode in ("RGB", "RGBA", "RGBX") and (
          (header is not None and header[0] == 16 and header[1] in (2, 6)) or 16 in tiff_bits
      )
      if sixteen_colour:
        arr = _read_16bit_colour(path)
        if arr is not None:
          alpha = arr[..., 3].astype(np.float32) / 65535.0 if arr.shape[-1] == 4 else None
          return Picture(arr[..., :3].astype(np.float32) / 65535.0, alpha, bits=16)
        notes = [
            "16-bit colour read as 8-bit (pip install opencv-python-headless to keep 16 " "bits)"
        ]
      else:
        notes = []
      if mode.startswith("I;16") or mode == "I":
        gray = np.asarray(im, dtype=np.float32)
        gray = np.clip(gray / 65535.0, 0.0, 1.0)
        return Picture(np.repeat(gray[..., None], 3, axis=-1), None, bits=16, gray=True)
      if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
      elif mode == "P":
        im = im.convert("RGB")
      mode = im.mode
      alpha = None
      if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
      if mode in ("L", "LA", "1", "La"):
        gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        return Picture(np.repeat(gray[..., None], 3, axis=-1), alpha, gray=True, notes=notes)
      if mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        notes.append(f"{mode} converted to RGB")
      rgb = np.asarray(im.convert("RGB"), dtype=np.uint8).astype(np.float32) / 255.0
      return Picture(rgb, alpha, notes=notes)
  except images._DECODE_ERRORS as e:  # pylint: disable=protected-access
    raise images._corrupt(path, e) from e  # pylint: disable=protected-access


def write_picture(path: str, rgb: np.ndarray, picture: Picture) -> list[str]:
  """Writes the restored `rgb` (float, any range) in the format `path`'s extension names, with
  the input's alpha, bit depth and greyscale where that format holds them; returns notes on
  what could not be kept."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  fmt = OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower(), "PNG")
  notes = []
  y = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
  if picture.gray:  # ITU-R 601 luma, as Pillow's RGB -> L
    y = y[..., :1] * 0.299 + y[..., 1:2] * 0.587 + y[..., 2:3] * 0.114
  bits = picture.bits
  if bits == 16 and fmt not in _SIXTEEN_BIT_FORMATS:
    notes.append(f"16-bit input written as 8-bit ({fmt} holds 8 bits)")
    bits = 8
  alpha = picture.alpha
  if alpha is not None and fmt not in _ALPHA_FORMATS:
    notes.append(f"alpha channel dropped ({fmt} has none; write .png or .tif to keep it)")
    alpha = None
  channels = [y] if alpha is None else [y, alpha[..., None].astype(np.float64)]
  y = np.concatenate(channels, axis=-1)
  if bits == 16 and y.shape[-1] > 2:  # 16-bit colour: Pillow cannot write it
    try:
      import cv2  # pylint: disable=g-import-not-at-top
    except ImportError:
      cv2 = None
    if cv2 is not None:
      out = np.round(y * 65535.0).astype(np.uint16)
      order = [2, 1, 0, 3][: out.shape[-1]]
      if not cv2.imwrite(path, np.ascontiguousarray(out[..., order])):
        raise OSError(f"could not write {path}")
      return notes
    notes.append(
        "16-bit colour written as 8-bit (pip install opencv-python-headless to keep 16 " "bits)"
    )
    bits = 8
  if bits == 16:  # greyscale 16-bit (alpha, if any, is dropped: no I;16 + A mode)
    if alpha is not None:
      notes.append("alpha channel of a 16-bit greyscale image dropped")
    Image.fromarray(np.round(y[..., 0] * 65535.0).astype(np.uint16)).save(path, format=fmt)
    return notes
  out = np.round(y * 255.0).astype(np.uint8)  # = BasicSR tensor2img
  mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[out.shape[-1]]
  image = Image.fromarray(out[..., 0] if mode == "L" else out, mode=mode)
  kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
  image.save(path, format=fmt, **kwargs)
  return notes


def restore_file(
    restorer: Restorer, src: str, dst: str, notes: list[str] | None = None
) -> np.ndarray:
  """Reads src, restores its colour channels, writes dst (see `write_picture`); returns the
  restored RGB as uint8 [H, W, 3]. Conversions that lose something are appended to `notes`."""
  from jaxmilab.evaluation import restoration  # pylint: disable=g-import-not-at-top

  picture = read_picture(src)
  y = restorer(picture.rgb)
  written = write_picture(dst, y, picture)
  if notes is not None:
    notes.extend(picture.notes + written)
  return restoration.to_uint8(y)


def list_models() -> str:
  width = max(len(n) for n in MODELS)
  return "\n".join(
      f"{n:<{width}}  {s.model}  [{s.source}]"
      + (f"  reflect-pad {s.reflect_pad}" if s.reflect_pad else "")
      for n, s in MODELS.items()
  )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, *, io: bool = True) -> None:
  """restore's flags on `flag_values` (defined only when run as a program or by main(), so
  importing this module adds none). io=False: only the model flags (shared with evaluate)."""
  fv = {"flag_values": flag_values}
  flags.DEFINE_string(
      "model",
      None,
      "A network name of --list_models (default: the network "
      "named by the config.json of a jaxmilab workdir given as --weights).",
      **fv,
  )
  flags.DEFINE_string(
      "weights",
      None,
      "A .pth / .safetensors file or an orbax checkpoint folder "
      "(a jaxmilab workdir, its checkpoints/ or checkpoints/<step>/).",
      **fv,
  )
  flags.DEFINE_integer("tile", 0, "Tile size in pixels (0: the whole image at once).", **fv)
  flags.DEFINE_integer("tile_overlap", 32, "Overlap of neighbouring tiles in pixels.", **fv)
  if io:
    flags.DEFINE_string("input", None, "An image or a folder of images.", **fv)
    flags.DEFINE_string(
        "output",
        None,
        "An output image (.png, .jpg, .tif, .webp, .bmp: its "
        "format) or folder (PNG files). Never an input.",
        **fv,
    )
    flags.DEFINE_bool("skip_existing", False, "Folders: skip inputs whose output exists.", **fv)
    flags.DEFINE_bool(
        "continue_on_error",
        False,
        "Folders: go on past an image that cannot be "
        "read or restored (counted as failed; exit code 1).",
        **fv,
    )
    flags.DEFINE_bool("list_models", False, "Print the known networks and exit.", **fv)


def resolve_model(model: str | None, weights: str) -> tuple[str, ModelSpec]:
  """(name, spec) of --model, or of the workdir config.json's network when --model is empty."""
  if model:
    return model, get_spec(model)
  return model_from_workdir(weights)


def restore_main(fv: flags.FlagValues) -> int:
  """The CLI on parsed flags: restores every --input image into --output, with a progress bar.

  Returns 0, or 1 when --continue_on_error skipped failed images; a failure without
  --continue_on_error raises (one line: the file and what to do).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  if fv.list_models:
    print(list_models())
    return 0
  for flag in ("weights", "input", "output"):
    if not fv[flag].value:
      raise ValueError(f"--{flag} is required (or pass --list_models); see --help.")
  jobs = plan_io(fv.input, fv.output)  # refusals that protect the inputs come first
  name, spec = resolve_model(fv.model, fv.weights)
  todo = [(src, dst) for src, dst in jobs if not (fv.skip_existing and os.path.exists(dst))]
  skipped = len(jobs) - len(todo)
  if not fv.model:
    print(f"--model={name} (from the config.json of {fv.weights})", flush=True)
  restorer = Restorer(
      name,
      load_params(name, fv.weights, spec),
      tile=fv.tile or None,
      tile_overlap=fv.tile_overlap,
      spec=spec,
  )
  restored, failed = 0, []
  bar = tqdm(todo, desc="restore", unit="image", disable=len(todo) < 2, dynamic_ncols=True)
  for src, dst in bar:
    start = time.time()
    notes: list[str] = []
    try:
      restore_file(restorer, src, dst, notes)
    except (ValueError, OSError) as e:
      if not fv.continue_on_error:
        raise ValueError(
            f"{console.one_line(e)} (--continue_on_error goes on past it; "
            f"{restored} image(s) restored so far)"
        ) from e
      failed.append(src)
      tqdm.write(f"{src}: failed: {console.one_line(e)}")
      continue
    restored += 1
    tqdm.write(
        f"{src} -> {dst} ({time.time() - start:.1f} s)" + (f"; {'; '.join(notes)}" if notes else "")
    )
  if len(jobs) > 1 or skipped or failed:
    line = f"restored {restored}, skipped {skipped} (output exists), failed {len(failed)}"
    if failed:
      line += f" ({', '.join(os.path.basename(f) for f in failed[:5])}"
      line += ", ...)" if len(failed) > 5 else ")"
    print(f"{line} -> {fv.output}", flush=True)
  return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
  """In-process entry (tests, notebooks): main(["--model=...", ...]) parses `argv` on a fresh
  flag set, so it can be called repeatedly next to other CLIs' flags."""
  fv = console.parse_flags(define_flags, argv or [], prog="jaxmilab-restore")
  return restore_main(fv)


def _app_main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  return restore_main(flags.FLAGS)


def run() -> None:
  """Console-script entry point (jaxmilab-restore): one-line errors with exit code 2."""
  define_flags()
  console.run_app(_app_main)


def run_cli(main_fn: Callable[[], int]) -> None:
  """Exits with main_fn()'s status; bad input (ValueError, FileNotFoundError, ...) exits 2 with
  its one-line message (it says what to do) instead of a traceback (--verbosity=1: the
  traceback). Kept for callers of the old entry; the CLIs use console.run_app."""
  try:
    sys.exit(main_fn())
  except console.USER_ERRORS as e:
    console.user_error(e)


if __name__ == "__main__":
  run()
