"""Multi-frame denoising data (OPD): m noisy frames of each scene, plus its clean image if known.

Training sources (one of):

* default: the real colour photos shipped in the scikit-image wheel
  (`jaxmilab.data.embedded`; chelsea and rocket are held out for eval), with m noisy frames
  per photo synthesized by `config.data.noise` (`jaxmilab.data.noise`).
* `root=/path/to/clean`: every image directly inside that folder (e.g. the ImageNet
  validation set, as in the paper), frames synthesized the same way.
* `frames_root=/path/to/scenes`: real multi-frame data (e.g. repeated OCT B-scans), one
  folder per scene holding at least `num_frames` frames of the same size (the first
  `num_frames` in sorted order are used); an optional `clean_name` file (default
  "clean.png") in a scene folder is its clean reference and is not a frame:

      /path/to/scenes/scene_001/frame_00.png ... frame_07.png [clean.png]
      /path/to/scenes/scene_002/...

  Without a clean reference in every scene the "clean" arrays are zeros and
  `DataInfo.extra["has_clean"]` is False (N2C refuses to train then); evaluation then
  needs `eval_sets` (clean images with synthesized noise).

Synthesized frames are fixed per scene (`fixed_noise=True`, the multi-frame setting: a
dataset of m captures): frame k of scene s is the same noisy image in every epoch, whatever
the crop. Pixel-independent noise is drawn tile by tile (`noise_tile` pixels, seeded by
(seed, s, k, tile)) so only the tiles under a crop are synthesized; text noise is drawn on
the whole image. `fixed_noise=False` draws fresh noise for every crop. Noisy frames are
clipped to [0, 1] and rounded to 8 bits (`clip`, `quantize`), as the official add_noise.py
stores uint8 PNGs (it truncates with np.uint8(...), a -0.5/255 bias; we round). Crops are random
(`crop="random"`) or the top-left corner (`crop="top_left"`, the official dataset.py
`img[:, 0:256, 0:256]`); no flips.

Evaluation: `eval_sets` maps a name to a folder of clean test images (BSD300 / KODAK /
SET14 style) or to "embedded" (the held-out embedded photos); default {"embedded":
"embedded"} for the synthetic sources, or held-out scenes (`eval_fraction`) of
`frames_root` when every scene has a clean reference. Noise is synthesized with fixed
seeds (`eval_seed`, independent of the training seed). Images are centre-cropped to
`eval_size`, or with eval_size 0 kept whole and reflect-padded to the largest eval size
("height" / "width" give the true size; score only that window).

Batches: train {"noisy": f32 [b, m, p, p, C], "clean": f32 [b, p, p, C]}; eval {"noisy":
f32 [b, e, H, W, C] (e = eval_frames, default m), "clean": f32 [b, H, W, C], "label": int32
index of the eval set (names in DataInfo.class_names), "height", "width": int32, "valid"}.

config.data keys (defaults): num_frames (8), noise ("awgn"), noise_params ({}), patch_size
(64), crop ("random"), fixed_noise (True), noise_tile (64), clip (True), quantize (True),
channels (3; 1 = mean of RGB), photos / eval_photos (embedded names), root, frames_root,
clean_name ("clean.png"), eval_sets, eval_fraction (0.1, frames_root only), eval_size (0),
eval_frames (0 = num_frames), eval_batch_size (0 = the training batch size), eval_seed (0),
worker_count (0), cache_size (16).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import grain
import numpy as np

from jaxmilab.data import embedded
from jaxmilab.data import images
from jaxmilab.data import degradations
from jaxmilab.data import transforms
from jaxmilab.data.base import DataError
from jaxmilab.data.base import DataInfo
from jaxmilab.data.base import Datasets

# Every config.data key this dataset reads, with its default (module docstring).
CONFIG_DEFAULTS = dict(
    num_frames=8,
    noise="awgn",
    noise_params={},
    patch_size=64,
    crop="random",
    fixed_noise=True,
    noise_tile=64,
    clip=True,
    quantize=True,
    channels=3,
    photos=(),
    eval_photos=(),  # embedded photo names (default: all / the fixed held-out pair)
    root="",
    frames_root="",
    clean_name="clean.png",
    eval_sets={},  # name -> folder or "embedded" ({} = the source's default)
    eval_fraction=0.1,
    eval_size=0,
    eval_frames=0,
    eval_batch_size=0,
    eval_seed=0,
    worker_count=0,
    cache_size=16,
)
_TRAIN_TAG, _EVAL_TAG = 0x0D1, 0x0D2  # keep training and eval noise streams apart
EMBEDDED = "embedded"


# ------------------------------------------------------------------------------- synthesis


class FrameSynthesizer:
  """Noisy frames of a clean image: fixed per (seed, scene, frame), or fresh per call."""

  def __init__(
      self, name: str, params: dict[str, Any], *, seed: int, tile: int, clip: bool, quantize: bool
  ):
    self.name, self.params = name, dict(params)
    self.seed, self.tile = int(seed), int(tile)
    self.clip, self.quantize = bool(clip), bool(quantize)

  def finish(self, x: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to 8 bits (the official frames are uint8 PNGs)."""
    if self.clip:
      x = np.clip(x, 0.0, 1.0)
    if self.quantize:
      x = np.round(x * 255.0) / 255.0
    return x.astype(np.float32)

  def fresh(self, clean: np.ndarray, rng: np.random.Generator, num: int) -> np.ndarray:
    """num independent noisy versions of float [h, w, C] `clean` -> [num, h, w, C]."""
    return np.stack(
        [
            self.finish(degradations.apply_noise(self.name, clean, rng, self.params))
            for _ in range(num)
        ]
    )

  def fixed(
      self, image: np.ndarray, scene: int, frame: int, top: int, left: int, height: int, width: int
  ) -> np.ndarray:
    """Window [top:+height, left:+width] of frame `frame` of scene `scene`; image uint8
    [H, W, C]."""
    if not degradations.is_pixelwise(self.name):  # spatially extended (text): the whole frame
      rng = np.random.default_rng([self.seed, _TRAIN_TAG, scene, frame])
      noisy = degradations.apply_noise(self.name, images.to_float(image), rng, self.params)
      return self.finish(noisy[top : top + height, left : left + width])
    t = self.tile
    ty0, tx0 = top // t, left // t
    ty1, tx1 = (top + height - 1) // t, (left + width - 1) // t
    region = images.to_float(image[ty0 * t : (ty1 + 1) * t, tx0 * t : (tx1 + 1) * t])
    noisy = np.empty_like(region)
    for ty in range(ty0, ty1 + 1):
      for tx in range(tx0, tx1 + 1):
        rows = slice((ty - ty0) * t, (ty - ty0 + 1) * t)
        cols = slice((tx - tx0) * t, (tx - tx0 + 1) * t)
        rng = np.random.default_rng([self.seed, _TRAIN_TAG, scene, frame, ty, tx])
        noisy[rows, cols] = degradations.apply_noise(
            self.name, region[rows, cols], rng, self.params
        )
    y, x = top - ty0 * t, left - tx0 * t
    return self.finish(noisy[y : y + height, x : x + width])


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
  """RGB [..., 3] -> [..., channels] (1 = mean of R, G, B; exact for greyscale sources)."""
  if channels == 3:
    return x
  return x.mean(axis=-1, keepdims=True).astype(x.dtype)


# --------------------------------------------------------------------------- train records


class SceneSource:
  """Random-access scenes: key -> {"scene": int32, "clean": uint8 [H, W, 3]} (synthetic) or
  {"scene", "frames": uint8 [m, H, W, 3], "clean" (if known)} (real frames)."""

  def __init__(
      self,
      description: str,
      *,
      arrays: Sequence[np.ndarray] = (),
      paths: Sequence[str] = (),
      scenes: Sequence[tuple[tuple[str, ...], str | None]] = (),
      cache_size: int = 16,
  ):
    self.description = description
    self.arrays, self.paths, self.scenes = tuple(arrays), tuple(paths), tuple(scenes)
    self.reader = images.CachedReader(cache_size)

  def __len__(self) -> int:
    return len(self.arrays) or len(self.paths) or len(self.scenes)

  def __getitem__(self, key: int) -> dict[str, Any]:
    key = int(key)
    if self.scenes:
      frame_paths, clean_path = self.scenes[key]
      out = {"scene": np.int32(key), "frames": np.stack([self.reader(p) for p in frame_paths])}
      if clean_path:
        out["clean"] = self.reader(clean_path)
      return out
    image = self.arrays[key] if self.arrays else self.reader(self.paths[key])
    return {"scene": np.int32(key), "clean": image}

  def __repr__(self) -> str:
    # Stable across processes and restarts: grain checks it when restoring the iterator.
    return f"SceneSource({self.description}, scenes={len(self)})"


class MultiFrameCrop(grain.transforms.RandomMap):
  """Crop (random or top-left) -> {"noisy": f32 [m, p, p, C], "clean": f32 [p, p, C]}."""

  def __init__(
      self,
      synthesizer: FrameSynthesizer,
      *,
      num_frames: int,
      patch_size: int,
      crop: str,
      fixed_noise: bool,
      channels: int,
  ):
    self.synth, self.m, self.p = synthesizer, int(num_frames), int(patch_size)
    self.crop, self.fixed_noise, self.channels = crop, bool(fixed_noise), int(channels)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    p = self.p
    if "frames" in element:
      height, width = element["frames"].shape[1:3]
    else:
      height, width = element["clean"].shape[:2]
    if self.crop == "random":
      top, left = int(rng.integers(0, height - p + 1)), int(rng.integers(0, width - p + 1))
    else:
      top, left = 0, 0
    window = (slice(top, top + p), slice(left, left + p))
    if "frames" in element:  # real captures
      noisy = images.to_float(element["frames"][:, window[0], window[1]])  # [m, p, p, 3]
      clean = (
          images.to_float(element["clean"][window])
          if "clean" in element
          else np.zeros((p, p, 3), np.float32)
      )
    else:
      clean = images.to_float(element["clean"][window])  # [p, p, 3]
      if self.fixed_noise:
        scene = int(element["scene"])
        noisy = np.stack(
            [self.synth.fixed(element["clean"], scene, k, top, left, p, p) for k in range(self.m)]
        )
      else:
        noisy = self.synth.fresh(clean, rng, self.m)
    return {
        "noisy": _to_channels(noisy, self.channels),
        "clean": _to_channels(clean, self.channels),
    }


# ----------------------------------------------------------------------------- eval items


class EvalItem:
  """One eval example: the clean image and (for real scenes) its captured frames."""

  def __init__(self, label: int, index: int, clean_path: str, frame_paths: tuple[str, ...] = ()):
    self.label, self.index = int(label), int(index)
    self.clean_path, self.frame_paths = clean_path, tuple(frame_paths)

  def size(self) -> tuple[int, int]:
    return images.image_size(self.clean_path)


def _scene_folders(
    frames_root: str, num_frames: int, clean_name: str, min_size: int
) -> list[tuple[str, tuple[str, ...], str | None]]:
  """(scene name, first num_frames frame paths, clean path or None) per scene folder."""
  if not os.path.isdir(frames_root):
    raise DataError(
        f"config.data.frames_root={frames_root!r} does not exist or is not a folder. "
        f"It must hold one sub-folder of frames per scene."
    )
  scenes = []
  for name in sorted(os.listdir(frames_root)):
    folder = os.path.join(frames_root, name)
    if not os.path.isdir(folder):
      continue
    files = images.list_images(folder, what=f"scene folder (config.data.frames_root) {name!r}")
    clean = os.path.join(folder, clean_name) if clean_name in files else None
    frames = [f for f in files if f != clean_name]
    if len(frames) < num_frames:
      raise DataError(
          f"Scene folder {folder!r} holds {len(frames)} frame(s), fewer than "
          f"config.data.num_frames={num_frames}. Add frames, remove the folder, or "
          f"lower num_frames."
      )
    paths = tuple(os.path.join(folder, f) for f in frames[:num_frames])
    sizes = {images.image_size(p) for p in paths + ((clean,) if clean else ())}
    if len(sizes) != 1:
      raise DataError(
          f"Scene folder {folder!r}: its frames (and {clean_name!r}) have different "
          f"sizes {sorted(sizes)}; all frames of a scene must be registered images of "
          f"one size."
      )
    images.check_min_size(paths[0], sizes.pop(), min_size)
    scenes.append((name, paths, clean))
  if not scenes:
    raise DataError(
        f"config.data.frames_root={frames_root!r} holds no scene sub-folders. Put "
        f"each scene's frames in its own folder."
    )
  return scenes


def _folder_paths(folder: str, names: Sequence[str], min_size: int, key: str) -> tuple[str, ...]:
  """Full paths, after checking every header against `min_size` (naming the file)."""
  paths = tuple(os.path.join(folder, n) for n in names)
  for path in paths:
    images.check_min_size(path, images.image_size(path), min_size, key)
  return paths


def _eval_set_items(eval_sets: Any, eval_photos: Sequence[str]) -> tuple[list[str], list[EvalItem]]:
  """Set names (label order = sorted names) and their items from config.data.eval_sets."""
  names = sorted(eval_sets.keys())
  items = []
  for label, name in enumerate(names):
    folder = eval_sets[name]
    if folder == EMBEDDED:
      paths = [embedded.path(p) for p in eval_photos]
    else:
      folder = os.path.abspath(os.path.expanduser(str(folder)))
      paths = [
          os.path.join(folder, f)
          for f in images.list_images(
              folder, what=f"eval set folder (config.data.eval_sets.{name})"
          )
      ]
    items.extend(EvalItem(label, i, p) for i, p in enumerate(paths))
  return names, items


# --------------------------------------------------------------------------------- create


def create(
    config: Any, *, batch_size: int, seed: int, process_index: int, process_count: int
) -> Datasets:
  """Train iterator and eval batches of multi-frame noisy data (see module doc)."""
  opts, layout = transforms.configure(
      config,
      CONFIG_DEFAULTS,
      "multiframe",
      batch_size=batch_size,
      seed=seed,
      process_index=process_index,
      process_count=process_count,
  )
  m = int(opts.num_frames)
  if m < 2:
    raise ValueError(f"config.data.num_frames={m}: multi-frame training needs at least 2 frames.")
  noise_name = opts.noise
  noise_params = degradations.check_noise_params(noise_name, opts.noise_params)
  patch = int(opts.patch_size)
  crop = opts.crop
  if crop not in ("random", "top_left"):
    raise ValueError(f"config.data.crop={crop!r}: use 'random' or 'top_left'.")
  channels = int(opts.channels)
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels={channels}: use 3 (RGB) or 1 (mean of RGB).")
  eval_size = int(opts.eval_size)
  eval_frames = int(opts.eval_frames) or m
  if not 1 <= eval_frames <= m:
    raise ValueError(
        f"config.data.eval_frames={eval_frames} must be in [1, num_frames={m}] (0 = m)."
    )
  tile = int(opts.noise_tile)
  if tile < 1:
    raise ValueError(f"config.data.noise_tile={tile} must be >= 1.")
  eval_seed = int(opts.eval_seed)
  cache_size = int(opts.cache_size)
  root, frames_root = opts.root, opts.frames_root
  eval_sets = opts.eval_sets
  clean_name = opts.clean_name or "clean.png"
  eval_photos = embedded.check_names(
      opts.eval_photos or embedded.EVAL_PHOTOS, "config.data.eval_photos"
  )
  if root and frames_root:
    raise ValueError(
        "config.data.root (clean images) and config.data.frames_root (real frames) "
        "are exclusive; set one."
    )
  if (root or frames_root) and opts.photos:
    raise ValueError(
        "config.data.photos names embedded photos; it cannot be combined with "
        "config.data.root or frames_root."
    )
  key = "config.data.patch_size"
  has_clean = True
  eval_names: list[str] = []
  eval_items: list[EvalItem] = []

  if frames_root:
    frames_root = os.path.abspath(os.path.expanduser(frames_root))
    scenes = _scene_folders(frames_root, m, clean_name, patch)
    has_clean = all(c is not None for _, _, c in scenes)
    if not eval_sets:
      if not has_clean:
        raise ValueError(
            f"config.data.frames_root={frames_root!r}: not every scene has a clean reference "
            f"{clean_name!r}, so held-out scenes cannot be scored. Set config.data.eval_sets to "
            f"folders of clean images (noise from config.data.noise), e.g. "
            f"{{'embedded': 'embedded'}}, or add {clean_name!r} to every scene."
        )
      train_names, held = images.split_held_out(
          [s[0] for s in scenes],
          float(opts.eval_fraction),
          where=f"config.data.frames_root={frames_root!r}",
      )
      eval_names = ["scenes"]
      eval_items = [
          EvalItem(0, i, c, f) for i, (n, f, c) in enumerate(s for s in scenes if s[0] in held)
      ]
      scenes = [s for s in scenes if s[0] in train_names]
    source = SceneSource(
        f"frames_root={frames_root!r}", scenes=[(f, c) for _, f, c in scenes], cache_size=cache_size
    )
  elif root:
    root = os.path.abspath(os.path.expanduser(root))
    names = images.list_images(root, what="clean image folder (config.data.root)")
    if not eval_sets:
      names, held = images.split_held_out(
          names, float(opts.eval_fraction), where=f"config.data.root={root!r}"
      )
      eval_names = ["held_out"]
      eval_items = [EvalItem(0, i, os.path.join(root, n)) for i, n in enumerate(held)]
    source = SceneSource(
        f"root={root!r}", paths=_folder_paths(root, names, patch, key), cache_size=cache_size
    )
  else:
    photos = opts.photos or tuple(p for p in embedded.PHOTOS if p not in eval_photos)
    photos = embedded.check_names(photos, "config.data.photos")
    if set(photos) & set(eval_photos):
      raise ValueError(
          f"config.data.photos and eval_photos share {sorted(set(photos) & set(eval_photos))}:"
          f" an eval photo must not be trained on. Remove it from one of them."
      )
    source = SceneSource(
        f"embedded={','.join(photos)}", arrays=[embedded.read(p, min_size=patch) for p in photos]
    )
    if not eval_sets:
      eval_sets = {EMBEDDED: EMBEDDED}
  if eval_sets:
    eval_names, eval_items = _eval_set_items(eval_sets, eval_photos)
  if not eval_items:
    raise DataError("The eval sets hold no images; check config.data.eval_sets.")

  synth = FrameSynthesizer(
      noise_name, noise_params, seed=seed, tile=tile, clip=opts.clip, quantize=opts.quantize
  )
  crop_op = MultiFrameCrop(
      synth,
      num_frames=m,
      patch_size=patch,
      crop=crop,
      fixed_noise=opts.fixed_noise,
      channels=channels,
  )
  train = layout.train(source, [crop_op], worker_count=int(opts.worker_count))

  # Eval: every item at one shape (centre crop, or reflect-padded to the largest size).
  sizes = [item.size() for item in eval_items]
  for item, size in zip(eval_items, sizes):
    images.check_min_size(item.clean_path, size, eval_size or None, "config.data.eval_size")
  out_h = eval_size or max(s[0] for s in sizes)
  out_w = eval_size or max(s[1] for s in sizes)

  def make_example(i: int) -> dict[str, np.ndarray]:
    item = eval_items[i]
    clean = images.read_image(item.clean_path)
    if item.frame_paths:
      frames = np.stack([images.read_image(p) for p in item.frame_paths[:eval_frames]])
    else:
      frames = None
    if eval_size:
      clean = transforms.center_crop(clean, eval_size)
      if frames is not None:
        frames = np.stack([transforms.center_crop(f, eval_size) for f in frames])
    clean = images.to_float(clean)  # [h, w, 3]
    if frames is None:
      rng = np.random.default_rng([eval_seed, _EVAL_TAG, item.label, item.index])
      noisy = synth.fresh(clean, rng, eval_frames)  # [e, h, w, 3]
    else:
      noisy = images.to_float(frames)
    h, w = clean.shape[:2]
    pad = ((0, out_h - h), (0, out_w - w), (0, 0))
    clean = np.pad(clean, pad, mode="reflect")
    noisy = np.stack([np.pad(f, pad, mode="reflect") for f in noisy])
    return {
        "noisy": _to_channels(noisy, channels),
        "clean": _to_channels(clean, channels),
        "label": np.int32(item.label),
        "height": np.int32(h),
        "width": np.int32(w),
    }

  info = DataInfo(
      num_classes=len(eval_names),
      class_names=tuple(eval_names),
      image_channels=channels,
      extra={
          "num_frames": m,
          "eval_frames": eval_frames,
          "has_clean": has_clean,
          "noise": noise_name,
          "patch_size": patch,
          "num_eval": len(eval_items),
          "num_train_scenes": len(source),
      },
  )
  return Datasets(train=train, eval_batches=layout.eval(len(eval_items), make_example), info=info)
