"""Reading and checking image files: Pillow decode to RGB, clear errors naming the file.

Every reader raises `jaxmilab.data.base.DataError` naming the file and what to do
when a file is missing, cannot be decoded, or is smaller than a requested size.
"""

from __future__ import annotations

import collections
import os
import threading
import zlib
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

from jaxmilab.data.base import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# Pillow raises these for unreadable / truncated / hostile files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _missing(path: str) -> DataError:
  return DataError(
      f"Image {path!r} does not exist. Check the data folder (config.data.root) "
      f"or remove the entry that names it."
  )


def _corrupt(path: str, err: BaseException) -> DataError:
  return DataError(
      f"Cannot decode image {path!r} ({type(err).__name__}: {err}). The file is "
      f"corrupt or not an image: re-export it (PNG or JPEG) or delete it."
  )


def image_size(path: str) -> tuple[int, int]:
  """(height, width) from the file header only (cheap: no pixel decode)."""
  if not os.path.isfile(path):
    raise _missing(path)
  try:
    with Image.open(path) as im:
      width, height = im.size
  except _DECODE_ERRORS as e:
    raise _corrupt(path, e) from e
  return height, width


def check_min_size(
    path: str, size: tuple[int, int], min_size: int | None, key: str = "config.data.patch_size"
) -> None:
  """Raises DataError if `size` (h, w) is smaller than `min_size` (set by config `key`)."""
  if min_size is not None and (size[0] < min_size or size[1] < min_size):
    raise DataError(
        f"Image {path!r} is {size[0]}x{size[1]} pixels, smaller than the {min_size}x{min_size} "
        f"crop set by {key}. Remove the image, replace it by a larger one, or lower {key}."
    )


def _to_rgb_uint8(im: Image.Image) -> np.ndarray:
  """Any Pillow mode -> uint8 [H, W, 3]; 16-bit greyscale is rescaled, not clipped."""
  if im.mode.startswith("I;16"):
    arr = np.asarray(im, dtype=np.float64) / 65535.0
    arr = np.round(arr * 255.0).astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1)
  if im.mode != "RGB":
    im = im.convert("RGB")  # L, LA, P, RGBA (alpha dropped), CMYK, YCbCr ...
  return np.asarray(im, dtype=np.uint8)


def read_image(
    path: str, *, min_size: int | None = None, key: str = "config.data.patch_size"
) -> np.ndarray:
  """Decodes `path` to uint8 RGB [H, W, 3]; DataError if missing, corrupt or too small.

  The EXIF orientation tag is applied (PIL.ImageOps.exif_transpose): a phone photo comes out
  upright, as viewers display it, not as its sensor stored it.
  """
  if not os.path.isfile(path):
    raise _missing(path)
  try:
    with Image.open(path) as im:
      im.load()  # Forces the full decode so truncated files fail here, naming the file.
      arr = _to_rgb_uint8(ImageOps.exif_transpose(im))
  except _DECODE_ERRORS as e:
    raise _corrupt(path, e) from e
  check_min_size(path, arr.shape[:2], min_size, key)
  return np.ascontiguousarray(arr)  # [H, W, 3] uint8


def load_image(
    path: str, *, min_size: int | None = None, key: str = "config.data.patch_size"
) -> np.ndarray:
  """Decodes `path` to float32 RGB [H, W, 3] in [0, 1] (see `read_image` for the checks)."""
  return to_float(read_image(path, min_size=min_size, key=key))


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 in [0, 1]."""
  return image.astype(np.float32) / np.float32(255.0)


def list_images(folder: str, *, what: str = "image folder") -> list[str]:
  """Sorted image file names (not paths) directly inside `folder`; DataError if none."""
  if not os.path.isdir(folder):
    raise DataError(
        f"The {what} {folder!r} does not exist or is not a folder. Create it or fix "
        f"the path in the config."
    )
  names = sorted(
      n
      for n in os.listdir(folder)
      if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
  )
  if not names:
    raise DataError(
        f"The {what} {folder!r} holds no images (extensions "
        f"{', '.join(IMAGE_EXTENSIONS)}). Put the images there or fix the path in the config."
    )
  return names


def split_held_out(
    names: Sequence[str], fraction: float, *, where: str
) -> tuple[list[str], list[str]]:
  """Fixed (train, eval) split of file names by a hash of each name.

  The eval part is the ceil(fraction * n) names with the smallest CRC32, so it does not
  depend on the order of listing, seeds or process count, and a file keeps its side when
  others are added. Both sides get at least one file (DataError if there are fewer than 2).
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"config.data.eval_fraction must be in (0, 1), got {fraction}.")
  names = sorted(names)
  if len(names) < 2:
    raise DataError(
        f"{where} has {len(names)} image(s): cannot hold out an eval split. Add images "
        f"or give a separate eval folder (config.data.eval_root)."
    )
  n_eval = min(len(names) - 1, max(1, int(np.ceil(fraction * len(names)))))
  ranked = sorted(names, key=lambda n: (zlib.crc32(n.encode("utf-8")), n))
  held = set(ranked[:n_eval])
  return [n for n in names if n not in held], [n for n in names if n in held]


class CachedReader:
  """`read_image` with a small FIFO cache of decoded images, safe across grain read threads.

  The cache is dropped when pickled (grain worker processes start with an empty one).
  """

  def __init__(self, capacity: int = 16):
    self.capacity = int(capacity)
    self._cache: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def __call__(self, path: str) -> np.ndarray:
    with self._lock:
      hit = self._cache.get(path)
    if hit is not None:
      return hit
    image = read_image(path)  # [H, W, 3] uint8
    if self.capacity > 0:
      with self._lock:
        self._cache[path] = image
        while len(self._cache) > self.capacity:
          self._cache.popitem(last=False)
    return image

  def __getstate__(self):
    return {"capacity": self.capacity}

  def __setstate__(self, state):
    self.__init__(state["capacity"])
