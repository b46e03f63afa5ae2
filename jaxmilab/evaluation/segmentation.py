"""Semantic-segmentation metrics, streamed over the eval set.

* `SegmentationEvaluator` — mIoU as in the CDSP paper's ScribbleSup tables (and the
  VOC / mmseg convention): one confusion matrix over the whole set, per class
  IoU = TP / (TP + FP + FN), mIoU the mean over the classes whose union is non-zero.
* `DiceEvaluator` — MACL's pooled Dice: per foreground class 1..K-1,
  Dice = 2 |P ∩ G| / (|P| + |G|) with the counts summed over every slice of the test set
  (not a mean of per-slice Dice), "dice" the mean over foreground classes.

* `SurfaceDistanceEvaluator` — MACL's HD95 / ASD per foreground class, per slice, as the
  released validate() of stevezs315/MACL train_supervised.py computes them: medpy's
  `metric.binary.hd95` (95th percentile of the symmetric surface distances) and
  `metric.binary.asd` (mean distance from the predicted surface to the ground-truth surface,
  one direction), in pixels (no voxel spacing), surfaces = mask XOR its erosion with the
  4-neighbourhood (connectivity 1); a slice where the class is missing from the ground truth
  or from the prediction counts as 0 and is averaged in (released); "hd95_present" /
  "asd_present" average only the slices where both contain the class.
  `surface_distances`, `hd95` and `asd` are the per-mask functions. The released code means
  per eval batch, then over batches; here over slices (the same when batches are equal).

The first two take int arrays [H, W] or [B, H, W] and return percentages.

Two method evaluators (`Evaluator`s fed `update(batch, outputs)`, each keeping a few examples
for `images()`):

* `CDSPEvaluator` — CDSP's: `SegmentationEvaluator` over the valid examples' "pred" vs "gt";
  picture rows image | ground truth | prediction in VOC colours (`voc_palette`).
* `MACLFinetuneEvaluator` — MACL fine-tuning's: `DiceEvaluator` (and, with `surface`, the
  HD95 / ASD sums of `surface_statistics`) over the valid slices' "prediction" vs "labels".
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from scipy import ndimage

from jaxmilab.evaluation.base import Evaluator, Metric, ratio


def confusion_matrix(pred, gt, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
  """[K, K] int64 counts, rows = ground truth, columns = prediction; ignored gt pixels skipped."""
  pred = np.asarray(pred).astype(np.int64).ravel()
  gt = np.asarray(gt).astype(np.int64).ravel()
  if pred.shape != gt.shape:
    raise ValueError(
        f"pred and gt must have the same shape; got {np.shape(pred)} vs {np.shape(gt)}."
    )
  keep = (gt >= 0) & (gt < num_classes)
  if ignore_index is not None:
    keep &= gt != ignore_index
  bad = pred[keep]
  if bad.size and (bad.min() < 0 or bad.max() >= num_classes):
    raise ValueError(
        f"Predictions must be class indices in [0, {num_classes}); got values in "
        f"[{bad.min()}, {bad.max()}]."
    )
  return np.bincount(
      gt[keep] * num_classes + pred[keep], minlength=num_classes * num_classes
  ).reshape(num_classes, num_classes)


class SegmentationEvaluator(Metric):
  """mIoU from one confusion matrix over the whole set; `accumulate` per batch."""

  def __init__(self, num_classes: int, ignore_index: int = 255):
    super().__init__()
    if num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    self.num_classes = num_classes
    self.ignore_index = ignore_index
    self.add("confusion", np.zeros((num_classes, num_classes)))

  def accumulate(self, pred, gt) -> None:
    self.add("confusion", confusion_matrix(pred, gt, self.num_classes, self.ignore_index))

  def compute(self) -> dict[str, float]:
    cm = self.sums["confusion"]
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = ratio(tp, union, 100.0)
    out = {
        "mIoU": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        "pixel_accuracy": float(ratio(tp.sum(), cm.sum(), 100.0)),
    }
    out.update({f"IoU/{k}": float(v) for k, v in enumerate(iou) if union[k] > 0})
    return out


class DiceEvaluator(Metric):
  """Dice per foreground class with |P ∩ G|, |P| and |G| pooled over every slice."""

  def __init__(self, num_classes: int):
    super().__init__()
    if num_classes < 2:
      raise ValueError(
          f"DiceEvaluator needs a background and >= 1 foreground class; got {num_classes}."
      )
    self.num_classes = num_classes
    self.add("intersection", np.zeros(num_classes))
    self.add("pred_count", np.zeros(num_classes))
    self.add("gt_count", np.zeros(num_classes))

  def accumulate(self, pred, gt) -> None:
    cm = confusion_matrix(pred, gt, self.num_classes)
    self.add("intersection", np.diag(cm))
    self.add("pred_count", cm.sum(0))
    self.add("gt_count", cm.sum(1))

  def compute(self) -> dict[str, float]:
    dice = ratio(
        2 * self.sums["intersection"], self.sums["pred_count"] + self.sums["gt_count"], 100.0
    )
    fg = dice[1:]
    out = {"dice": float(np.nanmean(fg)) if np.any(np.isfinite(fg)) else float("nan")}
    out.update({f"dice/{k}": float(dice[k]) for k in range(1, self.num_classes)})
    return out


def surface_distances(result, reference, spacing=None, connectivity: int = 1) -> np.ndarray:
  """Distances from every surface pixel of binary `result` to the nearest surface pixel of
  binary `reference` (medpy.metric.binary's __surface_distances); both must be non-empty."""
  result = np.atleast_1d(np.asarray(result, bool))
  reference = np.atleast_1d(np.asarray(reference, bool))
  if result.shape != reference.shape:
    raise ValueError(f"Masks must have the same shape; got {result.shape} vs {reference.shape}.")
  if not result.any() or not reference.any():
    raise ValueError(
        "surface_distances needs two non-empty masks (HD95 / ASD are undefined for "
        "an empty one)."
    )
  footprint = ndimage.generate_binary_structure(result.ndim, connectivity)
  result_border = result ^ ndimage.binary_erosion(result, structure=footprint, iterations=1)
  reference_border = reference ^ ndimage.binary_erosion(
      reference, structure=footprint, iterations=1
  )
  distance = ndimage.distance_transform_edt(~reference_border, sampling=spacing)
  return distance[result_border]


def hd95(result, reference, spacing=None, connectivity: int = 1) -> float:
  """95th percentile of both directions' surface distances (medpy.metric.binary.hd95)."""
  both = np.hstack(
      (
          surface_distances(result, reference, spacing, connectivity),
          surface_distances(reference, result, spacing, connectivity),
      )
  )
  return float(np.percentile(both, 95))


def asd(result, reference, spacing=None, connectivity: int = 1) -> float:
  """Mean distance from result's surface to reference's (medpy.metric.binary.asd; one way)."""
  return float(surface_distances(result, reference, spacing, connectivity).mean())


SURFACE_NAMES = ("hd95", "asd")


def surface_statistics(pred, gt, num_classes: int, spacing=None) -> dict[str, np.ndarray]:
  """The sums SurfaceDistanceEvaluator adds for int [H, W] / [B, H, W] slices: per foreground
  class the sums of HD95 and ASD over the slices where pred and gt both hold the class, the
  number of such slices ("surface/present") and of all slices ("surface/slices")."""
  pred, gt = np.asarray(pred), np.asarray(gt)
  if pred.shape != gt.shape or pred.ndim not in (2, 3):
    raise ValueError(
        f"pred and gt must both be [H, W] or [B, H, W]; got {pred.shape} vs {gt.shape}."
    )
  if pred.ndim == 2:
    pred, gt = pred[None], gt[None]
  out = {f"surface/{name}_sum": np.zeros(num_classes - 1) for name in SURFACE_NAMES}
  out["surface/present"] = np.zeros(num_classes - 1)
  out["surface/slices"] = np.full(num_classes - 1, float(len(pred)))
  for p, g in zip(pred, gt):
    for k in range(1, num_classes):
      pk, gk = p == k, g == k
      if not (pk.any() and gk.any()):
        continue  # released: 0 for this slice and class
      out["surface/hd95_sum"][k - 1] += hd95(pk, gk, spacing)
      out["surface/asd_sum"][k - 1] += asd(pk, gk, spacing)
      out["surface/present"][k - 1] += 1
  return out


def surface_results(sums: dict[str, np.ndarray]) -> dict[str, float]:
  """ "hd95", "asd" (released: missing-class slices count 0, mean over classes of the per-slice
  means), "hd95/k", "asd/k" per class, and "hd95_present", "asd_present" (mean over the slices
  that hold the class in both)."""
  mean = lambda x: float(np.nanmean(x)) if np.any(np.isfinite(x)) else float("nan")
  out = {}
  for name in SURFACE_NAMES:
    total = sums[f"surface/{name}_sum"]
    released = ratio(total, sums["surface/slices"])
    out[name] = mean(released)
    out[f"{name}_present"] = mean(ratio(total, sums["surface/present"]))
    out.update({f"{name}/{k + 1}": float(v) for k, v in enumerate(released)})
  return out


class SurfaceDistanceEvaluator(Metric):
  """HD95 / ASD per foreground class, per 2-D slice, averaged over slices (module doc)."""

  def __init__(self, num_classes: int, spacing=None):
    super().__init__()
    if num_classes < 2:
      raise ValueError(
          f"SurfaceDistanceEvaluator needs a background and >= 1 foreground class; "
          f"got {num_classes}."
      )
    self.num_classes, self.spacing = num_classes, spacing
    for name, value in surface_statistics(
        np.zeros((0, 1, 1)), np.zeros((0, 1, 1)), num_classes
    ).items():
      self.add(name, value)

  def accumulate(self, pred, gt) -> None:
    for name, value in surface_statistics(pred, gt, self.num_classes, self.spacing).items():
      self.add(name, value)

  def compute(self) -> dict[str, float]:
    return surface_results(self.sums)


# ------------------------------------------------------------------------- method evaluators


def voc_palette(n: int = 256) -> np.ndarray:
  """[n, 3] uint8 PASCAL VOC colour map (bit-interleaved class index)."""
  palette = np.zeros((n, 3), np.uint8)
  for i in range(n):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    palette[i] = (r, g, b)
  return palette


class CDSPEvaluator(Evaluator):
  """mIoU over the eval set (one confusion matrix) + a few kept examples for a picture."""

  def __init__(self, num_classes: int, ignore_index: int = 255, keep: int = 4):
    super().__init__()
    self.seg = SegmentationEvaluator(num_classes, ignore_index)
    self.sums = self.seg.sums  # one statistics dict: merging and the cross-host sum see it
    self.keep = int(keep)
    self.kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

  def update(self, batch: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    valid = np.asarray(batch["valid"]).astype(bool)
    if not valid.any():
      return
    pred, gt = np.asarray(outputs["pred"])[valid], np.asarray(batch["gt"])[valid]
    self.seg.accumulate(pred, gt)
    for i in np.flatnonzero(valid)[: max(0, self.keep - len(self.kept))]:
      self.kept.append(
          (
              np.asarray(batch["image"][i]),
              np.asarray(batch["gt"][i]),
              np.asarray(outputs["pred"][i]),
          )
      )

  def merge(self, other: "CDSPEvaluator") -> "CDSPEvaluator":
    super().merge(other)
    self.kept.extend(other.kept[: max(0, self.keep - len(self.kept))])
    return self

  def merge_across_processes(self) -> "CDSPEvaluator":
    super().merge_across_processes()
    self.seg.sums = self.sums
    return self

  def compute(self) -> dict[str, float]:
    self.seg.sums = self.sums
    return self.seg.compute()

  def images(self) -> np.ndarray | None:
    """Rows of image | ground truth | prediction (VOC colours; white = label 255, ignored)."""
    if not self.kept:
      return None
    palette = voc_palette().astype(np.float32) / 255.0
    palette[255] = 1.0
    rows = []
    for image, gt, pred in self.kept:
      tiles = [image.astype(np.float32) / 255.0, palette[gt], palette[np.clip(pred, 0, 255)]]
      rows.append(
          np.concatenate(
              [np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=1.0) for t in tiles], 1
          )
      )
    return np.concatenate(rows, 0)


_PALETTE = (
    np.array(
        [
            [0, 0, 0],
            [230, 25, 75],
            [60, 180, 75],
            [255, 225, 25],
            [0, 130, 200],
            [245, 130, 48],
            [145, 30, 180],
            [70, 240, 240],
            [240, 50, 230],
        ],
        np.float32,
    )
    / 255
)


class MACLFinetuneEvaluator(Evaluator, DiceEvaluator):
  """DiceEvaluator fed from (batch, outputs), keeping a few slices for the eval picture; with
  `surface`, also HD95 / ASD (surface_statistics, summed into the same sums)."""

  def __init__(self, num_classes: int, keep: int = 4, surface: bool = True):
    super().__init__(num_classes)
    self.keep = int(keep)
    self.surface = bool(surface)
    self.kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if self.surface:
      empty = np.zeros((0, 1, 1), np.int32)
      for name, value in surface_statistics(empty, empty, num_classes).items():
        self.add(name, value)

  def update(self, batch, outputs):
    valid = np.asarray(batch["valid"], bool)
    pred = np.asarray(outputs["prediction"])[valid]
    gt = np.asarray(batch["labels"])[valid]
    if pred.size:
      self.accumulate(pred, gt)
      if self.surface:
        for name, value in surface_statistics(pred, gt, self.num_classes).items():
          self.add(name, value)
    images = np.asarray(batch["image"])[valid]
    for i in range(min(len(pred), self.keep - len(self.kept))):
      self.kept.append((images[i], gt[i], pred[i]))

  def compute(self):
    out = super().compute()
    if self.surface:
      out.update(surface_results(self.sums))
    return out

  def images(self):
    if not self.kept:
      return None
    rows = []
    for image, gt, pred in self.kept:
      x = image[..., 0]
      x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
      colour = lambda lab: _PALETTE[np.asarray(lab) % len(_PALETTE)]
      rows.append(
          np.concatenate([np.repeat(x[..., None], 3, -1), colour(gt), colour(pred)], axis=1)
      )
    return np.concatenate(rows, axis=0)
