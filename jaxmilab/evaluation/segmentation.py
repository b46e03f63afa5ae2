"""Semantic-segmentation metrics, streamed over the eval set.

* `SegmentationEvaluator` — mIoU as in the CDSP paper's ScribbleSup tables (and the
  VOC / mmseg convention): one confusion matrix over the whole set, per class
  IoU = TP / (TP + FP + FN), mIoU the mean over the classes whose union is non-zero.
* `DiceEvaluator` — MACL's pooled Dice: per foreground class 1..K-1,
  Dice = 2 |P ∩ G| / (|P| + |G|) with the counts summed over every slice of the test set
  (not a mean of per-slice Dice), "dice" the mean over foreground classes.

Both take int arrays [H, W] or [B, H, W] and return percentages.
"""

from __future__ import annotations

import numpy as np

from jaxmilab.evaluation.base import Metric, ratio


def confusion_matrix(pred, gt, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
  """[K, K] int64 counts, rows = ground truth, columns = prediction; ignored gt pixels skipped."""
  pred = np.asarray(pred).astype(np.int64).ravel()
  gt = np.asarray(gt).astype(np.int64).ravel()
  if pred.shape != gt.shape:
    raise ValueError(f"pred and gt must have the same shape; got {np.shape(pred)} vs {np.shape(gt)}.")
  keep = (gt >= 0) & (gt < num_classes)
  if ignore_index is not None:
    keep &= gt != ignore_index
  bad = pred[keep]
  if bad.size and (bad.min() < 0 or bad.max() >= num_classes):
    raise ValueError(f"Predictions must be class indices in [0, {num_classes}); got values in "
                     f"[{bad.min()}, {bad.max()}].")
  return np.bincount(gt[keep] * num_classes + pred[keep],
                     minlength=num_classes * num_classes).reshape(num_classes, num_classes)


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
    out = {"mIoU": float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
           "pixel_accuracy": float(ratio(tp.sum(), cm.sum(), 100.0))}
    out.update({f"IoU/{k}": float(v) for k, v in enumerate(iou) if union[k] > 0})
    return out


class DiceEvaluator(Metric):
  """Dice per foreground class with |P ∩ G|, |P| and |G| pooled over every slice."""

  def __init__(self, num_classes: int):
    super().__init__()
    if num_classes < 2:
      raise ValueError(f"DiceEvaluator needs a background and >= 1 foreground class; got {num_classes}.")
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
    dice = ratio(2 * self.sums["intersection"], self.sums["pred_count"] + self.sums["gt_count"], 100.0)
    fg = dice[1:]
    out = {"dice": float(np.nanmean(fg)) if np.any(np.isfinite(fg)) else float("nan")}
    out.update({f"dice/{k}": float(dice[k]) for k in range(1, self.num_classes)})
    return out
