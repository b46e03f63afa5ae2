"""Real colour photographs shipped inside the scikit-image wheel (no network, no download).

Only files present in the installed `skimage/data/` folder are used; scikit-image
fetches its other sample images with pooch, which we never call. Synthetic images
(colorwheel, logo, checkerboard ...) and greyscale ones are left out. The stereo pair's
right image is left out too: it nearly duplicates the left one.
"""

from __future__ import annotations

import os

import numpy as np

from jaxmilab.data import images
from jaxmilab.data.base import DataError

# Name (as in `skimage.data.<name>()`) -> file inside the skimage/data package folder.
PHOTO_FILES = {
    "astronaut": "astronaut.png",  # 512x512
    "chelsea": "chelsea.png",  # 300x451
    "coffee": "coffee.png",  # 400x600
    "hubble_deep_field": "hubble_deep_field.jpg",  # 872x1000
    "immunohistochemistry": "ihc.png",  # 512x512
    "motorcycle": "motorcycle_left.png",  # 500x741 (stereo_motorcycle()[0])
    "retina": "retina.jpg",  # 1411x1411
    "rocket": "rocket.jpg",  # 427x640
}
PHOTOS = tuple(PHOTO_FILES)
# The fixed held-out evaluation photos; never used for training by default.
EVAL_PHOTOS = ("chelsea", "rocket")
TRAIN_PHOTOS = tuple(p for p in PHOTOS if p not in EVAL_PHOTOS)


def data_dir() -> str:
  """The installed skimage/data folder (imported lazily: skimage is slow to import)."""
  import skimage.data  # pylint: disable=g-import-not-at-top

  return os.path.dirname(os.path.abspath(skimage.data.__file__))


def check_names(names, key: str) -> tuple[str, ...]:
  """Validates photo names from config `key`; returns them as a tuple."""
  if isinstance(names, str):
    names = (names,)
  names = tuple(names)
  unknown = [n for n in names if n not in PHOTO_FILES]
  if unknown or not names:
    raise ValueError(
        f"{key}={names!r}: unknown or empty embedded photo names {unknown}. "
        f"Available: {', '.join(PHOTOS)}."
    )
  return names


def path(name: str) -> str:
  """File path of an embedded photo."""
  check_names((name,), "photo")
  return os.path.join(data_dir(), PHOTO_FILES[name])


def read(
    name: str, *, min_size: int | None = None, key: str = "config.data.patch_size"
) -> np.ndarray:
  """Embedded photo `name` as uint8 RGB [H, W, 3]."""
  file = path(name)
  if not os.path.isfile(file):
    raise DataError(
        f"Embedded photo {name!r} is missing at {file!r}: reinstall scikit-image "
        f"(pip install --force-reinstall scikit-image)."
    )
  return images.read_image(file, min_size=min_size, key=key)


def load(name: str) -> np.ndarray:
  """Embedded photo `name` as float32 RGB [H, W, 3] in [0, 1]."""
  return images.to_float(read(name))
