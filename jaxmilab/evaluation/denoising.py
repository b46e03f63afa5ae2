"""Streaming PSNR / SSIM of multi-frame denoising (OPD, jaxmilab/methods/opd.py).

* `DenoisingEvaluator` — f(x_1) ("psnr", "ssim") and the noisy frame x_1 ("psnr_input",
  "ssim_input") against "clean", scored on each image's true h x w window with the BasicSR
  protocol of `jaxmilab.evaluation.restoration` (RGB, uint8), overall and per eval set.
* `image_grid` — its picture: rows of examples (one per label first), columns = keys.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxmilab.evaluation import restoration
from jaxmilab.evaluation.base import Evaluator


def image_grid(
    outputs: Mapping[str, np.ndarray], keys=("lq", "restored", "gt"), max_rows: int = 6
) -> np.ndarray:
  """Rows of examples (one per degradation type first), columns = keys; [H, W, 3] in [0, 1]."""
  valid = np.flatnonzero(outputs["valid"])
  labels = outputs["label"][valid]
  rows = [valid[labels == c][0] for c in np.unique(labels)][:max_rows]
  pad = 2
  tiles = []
  for i in rows:
    row = [
        np.pad(np.clip(outputs[k][i], 0, 1), ((pad, pad), (pad, pad), (0, 0)), constant_values=1.0)
        for k in keys
    ]
    tiles.append(np.concatenate(row, axis=1))
  return np.concatenate(tiles, axis=0)


class DenoisingEvaluator(Evaluator):
  """Streaming PSNR / SSIM of f(x_1) ("psnr", "ssim") and of x_1 ("psnr_input", ...) vs clean.

  Statistics: per eval set, the image count and the sums of the four per-image scores
  (PSNR capped at 100 dB so identical images keep averages finite, as BasicSR gives inf).
  Keys: overall means, and "<metric>/<set>" per set when there are several sets.
  """

  METRICS = ("psnr", "ssim", "psnr_input", "ssim_input")

  def __init__(self, class_names: tuple[str, ...] = (), max_images: int = 6):
    super().__init__()
    self.class_names = tuple(class_names)
    self.max_images = max_images
    size = max(1, len(self.class_names))
    for name in ("count",) + self.METRICS:
      self.add(name, np.zeros(size))
    self._kept: list[dict[str, np.ndarray]] = []
    self._kept_labels: set[int] = set()

  def update(self, batch, outputs):
    restored = np.asarray(outputs["restored"])
    for i in np.flatnonzero(np.asarray(batch["valid"]).astype(bool)):
      h, w = int(batch["height"][i]), int(batch["width"][i])
      label = int(batch["label"][i]) if len(self.class_names) > 1 else 0
      clean = restoration.to_uint8(batch["clean"][i, :h, :w])
      scores = np.zeros((len(self.METRICS), self.sums["count"].size))
      for row, image in ((0, restored[i, :h, :w]), (2, batch["noisy"][i, 0, :h, :w])):
        image = restoration.to_uint8(image)
        scores[row, label] = min(restoration.psnr(image, clean), 100.0)
        scores[row + 1, label] = restoration.ssim(image, clean)
      for name, row in zip(self.METRICS, scores):
        self.add(name, row)
      self.add("count", np.eye(self.sums["count"].size)[label])
      if len(self._kept) < self.max_images and label not in self._kept_labels:
        self._kept_labels.add(label)
        # Only the true h x w window: eval images are reflect-padded to one shape, and the
        # padding is not part of the image (it is not scored either).
        self._kept.append(
            {
                "lq": np.asarray(batch["noisy"][i, 0, :h, :w]),
                "restored": restored[i, :h, :w],
                "gt": np.asarray(batch["clean"][i, :h, :w]),
            }
        )

  def compute(self) -> dict[str, float]:
    count = self.sums["count"]
    if count.sum() == 0:
      raise ValueError("OPD eval: no valid example in the eval set.")
    out = {k: float(self.sums[k].sum() / count.sum()) for k in self.METRICS}
    if len(self.class_names) > 1:
      for index, name in enumerate(self.class_names):
        if count[index] > 0:
          out.update(
              {f"{k}/{name}": float(self.sums[k][index] / count[index]) for k in self.METRICS}
          )
    return out

  def images(self) -> np.ndarray | None:
    if not self._kept:
      return None
    h = min(k["gt"].shape[0] for k in self._kept)  # true sizes differ: crop to the smallest
    w = min(k["gt"].shape[1] for k in self._kept)
    grid = {key: np.stack([k[key][:h, :w] for k in self._kept]) for key in ("lq", "restored", "gt")}
    grid.update(valid=np.ones(len(self._kept), bool), label=np.arange(len(self._kept)))
    image = image_grid(grid)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
