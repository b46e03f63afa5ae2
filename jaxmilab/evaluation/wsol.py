"""WSOL metrics with clovaai/wsolevaluation semantics: MaxBoxAcc(V2), top-1 / GT-known loc, PxAP,
pIoU.

Re-implements evaluation.py of clovaai/wsolevaluation (Choe et al., CVPR 2020) on
host numpy arrays: scoremaps are [H, W] floats in [0, 1] (min-max normalized CAMs
resized to the evaluation size), boxes are inclusive pixel boxes [x0, y0, x1, y1]
in scoremap pixels. The top-1 loc / GT-known / pIoU conventions follow the forks
that report them (zh460045050/BagCAMs libs/evaluation.py and libs/solver.py).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from jaxmilab.evaluation import base as evaluation_base


def cam_thresholds(cam_curve_interval: float) -> np.ndarray:
  """Score thresholds [0, step, 2 step, ...) < 1, exactly `np.arange(0, 1, interval)` as the
  official code."""
  if not 0 < cam_curve_interval < 1:
    raise ValueError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval}.")
  return np.arange(0, 1, cam_curve_interval)


def check_scoremap(scoremap, name: str = "scoremap") -> np.ndarray:
  """Returns the scoremap as float64 [H, W]; raises on wrong rank, NaN or values outside [0, 1]."""
  scoremap = np.asarray(scoremap)
  if scoremap.ndim != 2:
    raise ValueError(f"{name} must be a 2-D [H, W] array; it has shape {scoremap.shape}.")
  if not (
      np.issubdtype(scoremap.dtype, np.floating)
      or np.issubdtype(scoremap.dtype, np.integer)
      or scoremap.dtype == np.bool_
  ):
    raise TypeError(f"{name} must be a float array in [0, 1]; it has dtype {scoremap.dtype}.")
  # The official code requires float64 (np.float); float32 CAMs reach it through
  # `.astype(np.float)`, so widening here reproduces its uint8 quantization.
  scoremap = scoremap.astype(np.float64)
  if np.isnan(scoremap).any():
    raise ValueError(f"{name} must not contain NaN (normalize constant / NaN CAMs to zeros first).")
  if scoremap.size and (scoremap.min() < 0 or scoremap.max() > 1):
    raise ValueError(
        f"{name} must be in range [0, 1]; its min is {scoremap.min()} and max {scoremap.max()} "
        "(min-max normalize the CAM first)."
    )
  return scoremap


def check_boxes(boxes, name: str = "gt_boxes") -> np.ndarray:
  """Returns boxes as int64 [N, 4] (x0, y0, x1, y1), raising on wrong shape, negatives or
  x1 < x0."""
  arr = np.asarray(boxes)
  if arr.ndim == 1 and arr.shape[0] == 4:
    arr = arr[None]
  if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
    raise ValueError(
        f"{name} must be an [N, 4] array of (x0, y0, x1, y1) boxes with N >= 1; "
        f"it has shape {arr.shape}."
    )
  if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
    raise TypeError(f"{name} must hold integers; it has dtype {arr.dtype}.")
  if np.issubdtype(arr.dtype, np.floating) and (
      not np.isfinite(arr).all() or (arr != np.round(arr)).any()
  ):
    raise ValueError(
        f"{name} must hold integer pixel coordinates (wsolevaluation truncates resized boxes "
        f"with int()); got {arr.tolist()}."
    )
  arr = arr.astype(np.int64)
  if (arr < 0).any():
    raise ValueError(f"{name} coordinates must be non-negative; got {arr.tolist()}.")
  if (arr[:, 2] < arr[:, 0]).any() or (arr[:, 3] < arr[:, 1]).any():
    raise ValueError(
        f"{name} must follow the x0y0x1y1 convention (x1 >= x0, y1 >= y0); got {arr.tolist()}."
    )
  return arr


def iou_matrix(boxes_a, boxes_b) -> np.ndarray:
  """IoU of every pair of inclusive boxes, [A, 4] x [B, 4] -> [A, B]; areas count pixels (+1).

  As `calculate_multiple_iou`: a pair with a non-positive union gets IoU 0.
  """
  a = check_boxes(boxes_a, "boxes_a")[:, None, :]  # [A, 1, 4]
  b = check_boxes(boxes_b, "boxes_b")[None, :, :]  # [1, B, 4]
  iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
  ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
  inter = iw * ih
  area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
  area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
  union = area_a + area_b - inter
  ok = union > 0
  return np.where(ok, inter / np.where(ok, union, 1), 0.0)


def _boxes_at_pixel_threshold(image: np.ndarray, thresh: int, multi_contour: bool) -> np.ndarray:
  """Boxes of the contours of {uint8 score > thresh}; [[0, 0, 0, 0]] when there is none."""
  height, width = image.shape
  _, binary = cv2.threshold(image, thresh, 255, cv2.THRESH_BINARY)
  contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
  if len(contours) == 0:
    return np.zeros((1, 4), np.int64)
  if not multi_contour:
    contours = [max(contours, key=cv2.contourArea)]  # first of the largest, as Python's max
  boxes = []
  for contour in contours:
    x, y, w, h = cv2.boundingRect(contour)
    # Official convention: x + w (one past the last pixel), clipped to the image only.
    boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
  return np.asarray(boxes, np.int64)


def boxes_from_scoremap(
    scoremap, thresholds: Sequence[float], *, multi_contour: bool
) -> list[np.ndarray]:
  """Estimated boxes [K_t, 4] at each score threshold (`compute_bboxes_from_scoremaps`).

  Foreground at threshold t: uint8 score (`(scoremap * 255).astype(uint8)`) > int(t * max uint8
  score). Contours from cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE); all of them, or only the
  largest.
  """
  scoremap = check_scoremap(scoremap)
  image = (scoremap * 255).astype(np.uint8)  # [H, W]
  peak = image.max() if image.size else np.uint8(0)
  cache: dict[int, np.ndarray] = {}
  out = []
  for t in thresholds:
    thresh = int(t * peak)  # the same int as the official `int(threshold * np.max(scoremap_image))`
    if thresh not in cache:  # many thresholds share one integer level; the boxes depend only on it
      cache[thresh] = _boxes_at_pixel_threshold(image, thresh, multi_contour)
    out.append(cache[thresh])
  return out


class BoxEvaluator(evaluation_base.Metric):
  """MaxBoxAcc over a dataset: per IoU threshold, the best (over score thresholds) share of correct
  images.

  `accumulate` one scoremap at a time, then `compute`. The statistics are fixed-size counters
  per score threshold (as wsolevaluation's `num_correct`), so evaluators of several batches or
  hosts combine by `merge` / `merge_across_processes`. MaxBoxAccV2 (Choe et al. 2020) is the
  mean over IoU thresholds {30, 50, 70} with all contours (multi_contour=True); with
  multi_contour=False only the largest contour gives a box (the V1 behaviour, whose
  metric is MaxBoxAcc@50).
  """

  def __init__(
      self,
      cam_curve_interval: float = 0.01,
      iou_thresholds: Sequence[int] = (30, 50, 70),
      multi_contour: bool = True,
      *,
      keep_per_image: bool = False,
  ):
    """keep_per_image stores each image's best IoU and box at every score threshold (for
    `per_image`)."""
    self.cam_thresholds = cam_thresholds(cam_curve_interval)  # [T]
    self.iou_thresholds = tuple(int(t) for t in iou_thresholds)
    if not self.iou_thresholds or any(not 0 < t <= 100 for t in self.iou_thresholds):
      raise ValueError(
          f"iou_thresholds must be percentages in (0, 100]; got {tuple(iou_thresholds)}."
      )
    super().__init__()
    self.multi_contour = bool(multi_contour)
    self.keep_per_image = bool(keep_per_image)
    num_t = len(self.cam_thresholds)
    self.add("count", 0.0)
    self.add("with_class", 0.0)  # images that came with correct_class
    for t in self.iou_thresholds:
      self.add(f"correct@{t}", np.zeros(num_t))
      self.add(f"correct_top1@{t}", np.zeros(num_t))
    self._ious: list[np.ndarray] = []  # per image [T] best IoU (keep_per_image)
    self._boxes: list[np.ndarray] = []  # per image [T, 4] box reaching it (keep_per_image)
    self._classes: list[bool | None] = []

  def accumulate(self, scoremap, gt_boxes, correct_class: bool | None = None) -> None:
    """Adds one image: scoremap [H, W] in [0, 1], gt_boxes [N, 4] int, correct_class = top-1
    prediction right."""
    scoremap = check_scoremap(scoremap)
    gt_boxes = check_boxes(gt_boxes)
    boxes_per_t = boxes_from_scoremap(
        scoremap, self.cam_thresholds, multi_contour=self.multi_contour
    )
    # One IoU matrix per distinct box set (thresholds sharing an integer level share the array).
    best_iou = np.empty(len(boxes_per_t))  # [T]
    best_box = np.empty((len(boxes_per_t), 4), np.int64)  # [T, 4]
    seen: dict[int, tuple[float, np.ndarray]] = {}
    for i, boxes in enumerate(boxes_per_t):
      key = id(boxes)
      if key not in seen:
        per_box = iou_matrix(boxes, gt_boxes).max(axis=1)  # [K]: best over GT boxes
        j = int(np.argmax(per_box))
        seen[key] = (float(per_box[j]), boxes[j])
      best_iou[i], best_box[i] = seen[key]
    for t in self.iou_thresholds:
      hit = best_iou >= t / 100  # the official comparison `>= (_THRESHOLD / 100)`
      self.add(f"correct@{t}", hit)
      self.add(f"correct_top1@{t}", hit & bool(correct_class))
    self.add("with_class", float(correct_class is not None))
    self.add("count", 1.0)
    if self.keep_per_image:
      self._ious.append(best_iou.astype(np.float64))
      self._boxes.append(best_box)
      self._classes.append(None if correct_class is None else bool(correct_class))

  @property
  def count(self) -> int:
    return int(self.sums["count"])

  @property
  def num_with_class(self) -> int:
    return int(self.sums["with_class"])

  @property
  def num_correct(self) -> dict[int, np.ndarray]:
    """Per IoU threshold: [T] number of images whose best IoU reaches it at each score threshold."""
    return {t: self.sums[f"correct@{t}"].astype(np.int64) for t in self.iou_thresholds}

  @property
  def num_correct_top1(self) -> dict[int, np.ndarray]:
    return {t: self.sums[f"correct_top1@{t}"].astype(np.int64) for t in self.iou_thresholds}

  def merge(self, other: "BoxEvaluator") -> "BoxEvaluator":
    if other.keep_per_image or self.keep_per_image:
      raise ValueError("BoxEvaluator.merge: per-image records (keep_per_image) are not merged.")
    return super().merge(other)

  def _check_nonempty(self) -> None:
    if self.count == 0:
      raise RuntimeError(
          "BoxEvaluator: no image was accumulated; call accumulate() before compute()."
      )

  def compute(self) -> dict[str, float]:
    """Percentages: MaxBoxAcc@<t> per IoU threshold, MaxBoxAccV2 (their mean), GT-known, top-1 loc.

    GT-known / gt_known_loc = MaxBoxAcc@50 under this evaluator's contour setting
    (BagCAMs/DA-WSOL report `gt_known[iou_threshold_list.index(50)]` with multi-contour
    boxes, the V2 default). top1_loc (only when every image came with correct_class) is
    max over score thresholds of the share of images with IoU >= 0.5 and a correct top-1
    class; the score threshold is chosen for it separately, as BagCAMs `compute_top1`.
    """
    self._check_nonempty()
    out: dict[str, float] = {}
    accs = []
    for t in self.iou_thresholds:
      acc = float(self.num_correct[t].max() * 100.0 / self.count)
      out[f"MaxBoxAcc@{t}"] = acc
      accs.append(acc)
    out["MaxBoxAccV2"] = float(np.mean(accs))
    if 50 in self.iou_thresholds:
      out["GT-known"] = out["gt_known_loc"] = out["MaxBoxAcc@50"]
    if self.num_with_class not in (0, self.count):
      raise RuntimeError(
          f"BoxEvaluator: correct_class was given for {self.num_with_class} of {self.count} "
          "images; pass it for every image (top-1 loc) or for none."
      )
    if self.num_with_class == self.count:
      for t in self.iou_thresholds:
        out[f"Top1Loc@{t}"] = float(self.num_correct_top1[t].max() * 100.0 / self.count)
      if 50 in self.iou_thresholds:
        out["top1_loc"] = out["Top1Loc@50"]
    return out

  def best_threshold(self, iou_threshold: int = 50) -> float:
    """The score threshold at which MaxBoxAcc@iou_threshold is reached (the first, as np.argmax)."""
    self._check_nonempty()
    if iou_threshold not in self.num_correct:
      raise KeyError(f"iou_threshold {iou_threshold} is not one of {self.iou_thresholds}.")
    return float(self.cam_thresholds[int(np.argmax(self.num_correct[iou_threshold]))])

  def per_image(self, iou_threshold: int = 50) -> dict[str, np.ndarray]:
    """Per image, at the dataset-best score threshold for iou_threshold: best box, its IoU,
    correctness.

    Returns "box" [N, 4] int, "iou" [N], "correct_loc" bool [N], and "correct_class" bool [N]
    and "correct_top1_loc" bool [N] when every image came with correct_class.
    Needs keep_per_image=True.
    """
    self._check_nonempty()
    if not self.keep_per_image:
      raise RuntimeError("BoxEvaluator.per_image needs BoxEvaluator(..., keep_per_image=True).")
    if iou_threshold not in self.num_correct:
      raise KeyError(f"iou_threshold {iou_threshold} is not one of {self.iou_thresholds}.")
    i = int(np.argmax(self.num_correct[iou_threshold]))
    iou = np.array([v[i] for v in self._ious])  # [N]
    out = {
        "box": np.stack([b[i] for b in self._boxes]),  # [N, 4]
        "iou": iou,
        "correct_loc": iou >= iou_threshold / 100,
    }
    if all(c is not None for c in self._classes):
      out["correct_class"] = np.array(self._classes, bool)
      out["correct_top1_loc"] = out["correct_loc"] & out["correct_class"]
    return out


class MaskEvaluator(evaluation_base.Metric):
  """PxAP and pIoU over a dataset from pixel score histograms (wsolevaluation MaskEvaluator).

  The statistics are the two fixed-size histograms (statistic names "true_hist" / "false_hist").
  """

  def __init__(self, cam_curve_interval: float = 0.01):
    super().__init__()
    self.cam_thresholds = cam_thresholds(cam_curve_interval)  # [T]
    # Bins [0, s), [s, 2s), ..., [1 - s, 1), [1, 2), [2, 3] (official right edges).
    self.bin_edges = np.append(self.cam_thresholds, [1.0, 2.0, 3.0])  # [T + 3]
    self.add("true_hist", np.zeros(len(self.cam_thresholds) + 2))
    self.add("false_hist", np.zeros(len(self.cam_thresholds) + 2))

  @property
  def gt_true_score_hist(self) -> np.ndarray:
    return self.sums["true_hist"]

  @property
  def gt_false_score_hist(self) -> np.ndarray:
    return self.sums["false_hist"]

  @property
  def num_pixels(self) -> float:
    return float(self.sums["true_hist"].sum() + self.sums["false_hist"].sum())

  def accumulate(self, scoremap, gt_mask, ignore_mask=None) -> None:
    """Adds one image: scoremap [H, W] in [0, 1], gt_mask bool [H, W], ignore_mask bool [H, W] or
    None.

    Ignored pixels are ignore_mask minus the foreground (official `get_mask`); they count
    neither as positives nor as negatives.
    """
    scoremap = check_scoremap(scoremap)
    gt_mask = self._check_mask(gt_mask, "gt_mask", scoremap.shape)
    if ignore_mask is None:
      negatives = ~gt_mask
    else:
      ignore = self._check_mask(ignore_mask, "ignore_mask", scoremap.shape) & ~gt_mask
      negatives = ~gt_mask & ~ignore
    self.add("true_hist", np.histogram(scoremap[gt_mask], bins=self.bin_edges)[0])
    self.add("false_hist", np.histogram(scoremap[negatives], bins=self.bin_edges)[0])

  @staticmethod
  def _check_mask(mask, name: str, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
      raise ValueError(
          f"{name} has shape {mask.shape} but the scoremap has shape {shape}; they must match."
      )
    if mask.dtype != np.bool_:
      if not np.isin(mask, (0, 1)).all():
        raise ValueError(
            f"{name} must be boolean (or 0/1); it has values {np.unique(mask)[:8].tolist()}."
        )
      mask = mask.astype(bool)
    return mask

  def _curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tp, fp, fn at thresholds >= 2, >= 1, >= 1 - s, ..., >= 0 (descending)."""
    tp = self.gt_true_score_hist[::-1].cumsum()
    fp = self.gt_false_score_hist[::-1].cumsum()
    fn = self.gt_true_score_hist.sum() - tp
    if ((tp + fn) <= 0).all():
      raise RuntimeError(
          "MaskEvaluator: no positive ground-truth pixel in the accumulated masks; "
          "PxAP is undefined."
      )
    if ((tp + fp) <= 0).all():
      raise RuntimeError(
          "MaskEvaluator: no pixel was accumulated (no positive prediction); "
          "call accumulate() first."
      )
    return tp, fp, fn

  def compute(self) -> dict[str, float]:
    """Percentages: PxAP = sum_i P_i (R_i - R_{i-1}) over descending thresholds,
    pIoU = max TP/(TP+FP+FN)."""
    tp, fp, fn = self._curves()
    nonzero = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
      precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    pxap = (precision[1:] * np.diff(recall))[nonzero[1:]].sum() * 100.0
    piou = (
        np.max(tp / (tp + fp + fn)) * 100.0
    )  # BagCAMs: np.max(IoU), IoU = tp / (fp + fn + tp) * 100
    return {"PxAP": float(pxap), "pIoU": float(piou)}


# ------------------------------------------------------------------------- method evaluator


def overlay_grid(examples, keys=("scoremap",)) -> np.ndarray:
  """Rows: image | image with each scoremap in red and the GT boxes in green; [H, W, 3] in [0, 1].

  `examples`: dicts with "image" (uint8 or [0, 1] float [H, W, 3]), the scoremap keys, and
  optionally "boxes" [N, 4].
  """
  rows = []
  for ex in examples:
    image = np.asarray(ex["image"], np.float32)
    image = image / 255.0 if np.asarray(ex["image"]).dtype == np.uint8 else image
    tiles = [image]
    for k in keys:
      s = np.asarray(ex[k], np.float32)[..., None]
      tile = 0.5 * image + 0.5 * np.concatenate([s, 0 * s, 0 * s], -1)
      for x0, y0, x1, y1 in ex.get("boxes", ()):
        tile[y0 : y1 + 1, [x0, x1]] = (0, 1, 0)
        tile[[y0, y1], x0 : x1 + 1] = (0, 1, 0)
      tiles.append(tile)
    rows.append(
        np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=1) for t in tiles], 1)
    )
  return np.clip(np.concatenate(rows, 0), 0, 1)


class WSOLEvaluator(evaluation_base.Evaluator):
  """Streaming protocol metrics of one or more kinds of scoremap (a method's `evaluator()`).

  `scoremaps` maps a metric prefix to an output key, e.g. {"": "scoremap", "cam/": "scoremap_cam"}:
  the first entry is reported under the protocol names (MaxBoxAccV2, MaxBoxAcc@<t>,
  gt_known_loc, top1_loc, PxAP, pIoU), the others with their prefix; "accuracy" (top-1
  classification, from `pred_key`) once. Box metrics are reported when the batches carry
  "boxes" (with "num_boxes"), mask metrics when they carry "mask" (and optionally "ignore").
  `scoremaps` may instead be a sequence of (prefix, output key, kinds) with kinds a subset of
  ("boxes", "masks"): that map is scored with those metrics only, so one prefix can take its
  box metrics from one map and its mask metrics from another (B-CAM as released: boxes from the
  CUB / ILSVRC map, PxAP from the OpenImages map). `example_means` maps a metric name to an
  output key holding one number per example, reported as its mean over the valid examples
  (e.g. an attention's top-k share). Every statistic (box counters per score threshold, mask
  histograms, the accuracy count) is created up front, so hosts that saw different examples
  still merge.
  """

  KINDS = ("boxes", "masks")

  def __init__(
      self,
      scoremaps,
      *,
      cam_curve_interval: float = 0.01,
      iou_thresholds=(30, 50, 70),
      multi_contour: bool = True,
      pred_key: str = "pred",
      max_images: int = 6,
      example_means: dict[str, str] | None = None,
  ):
    super().__init__()
    if isinstance(scoremaps, dict):
      entries = [(prefix, key, self.KINDS) for prefix, key in scoremaps.items()]
    else:
      entries = [(prefix, key, tuple(kinds)) for prefix, key, kinds in scoremaps]
    seen = set()
    for prefix, key, kinds in entries:
      if not kinds or set(kinds) - set(self.KINDS):
        raise ValueError(
            f"WSOLEvaluator: scoremap {key!r} has kinds {kinds}; use a non-empty subset of "
            f"{self.KINDS}."
        )
      for kind in kinds:
        if (prefix, kind) in seen:
          raise ValueError(
              f"WSOLEvaluator: two scoremaps give the {kind} metrics of prefix {prefix!r}."
          )
        seen.add((prefix, kind))
    self.entries = entries
    self.scoremaps = {
        f"{prefix}|{key}": key for prefix, key, _ in entries
    }  # entry id -> output key
    self.pred_key = pred_key
    self.max_images = max_images
    self.example_means = dict(example_means or {})
    self.boxes = {
        f"{p}|{k}": BoxEvaluator(cam_curve_interval, iou_thresholds, multi_contour)
        for p, k, kinds in entries
        if "boxes" in kinds
    }
    self.masks = {
        f"{p}|{k}": MaskEvaluator(cam_curve_interval) for p, k, kinds in entries if "masks" in kinds
    }
    self.add("correct", 0.0)
    self.add("count", 0.0)
    for name in self.example_means:
      self.add(f"mean/{name}", 0.0)
    self._kept: list[dict[str, np.ndarray]] = []

  def update(self, batch, outputs) -> None:
    valid = np.flatnonzero(np.asarray(batch["valid"]).astype(bool))
    if valid.size and "boxes" not in batch and "mask" not in batch:
      raise ValueError(
          "wsol eval: the eval batches carry neither 'boxes' nor 'mask'; the dataset "
          "must provide one of them (see jaxmilab/data/wsol_synthetic.py)."
      )
    correct = np.asarray(outputs[self.pred_key]) == np.asarray(batch["label"])
    for i in valid:
      for entry, key in self.scoremaps.items():
        scoremap = np.asarray(outputs[key][i], np.float64)
        if "boxes" in batch and entry in self.boxes:
          n = int(batch["num_boxes"][i])
          self.boxes[entry].accumulate(
              scoremap, np.asarray(batch["boxes"][i])[:n], correct_class=bool(correct[i])
          )
        if "mask" in batch and entry in self.masks:
          ignore = batch["ignore"][i] if "ignore" in batch else None
          self.masks[entry].accumulate(scoremap, np.asarray(batch["mask"][i]).astype(bool), ignore)
      self.add("correct", float(correct[i]))
      self.add("count", 1.0)
      for name, key in self.example_means.items():
        self.add(f"mean/{name}", float(np.asarray(outputs[key][i])))
      if len(self._kept) < self.max_images and "image" in batch:
        ex = {"image": np.asarray(batch["image"][i])}
        ex.update({key: np.asarray(outputs[key][i]) for key in self.scoremaps.values()})
        if "boxes" in batch:
          ex["boxes"] = np.asarray(batch["boxes"][i])[: int(batch["num_boxes"][i])]
        self._kept.append(ex)

  def _parts(self):
    return [self] + list(self.boxes.values()) + list(self.masks.values())

  def merge(self, other: "WSOLEvaluator") -> "WSOLEvaluator":
    super().merge(other)
    for entry in self.boxes:
      self.boxes[entry].merge(other.boxes[entry])
    for entry in self.masks:
      self.masks[entry].merge(other.masks[entry])
    return self

  def merge_across_processes(self) -> "WSOLEvaluator":
    super().merge_across_processes()
    for part in self._parts()[1:]:
      part.merge_across_processes()
    return self

  def compute(self) -> dict[str, float]:
    if self.sums["count"] == 0:
      raise ValueError("wsol eval: no valid example in the eval set.")
    out: dict[str, float] = {}
    for prefix, key, _ in self.entries:
      entry = f"{prefix}|{key}"
      metrics: dict[str, float] = {}
      if entry in self.boxes and self.boxes[entry].count:
        metrics.update(self.boxes[entry].compute())
        metrics.pop("GT-known", None)
      if entry in self.masks and self.masks[entry].num_pixels:
        metrics.update(self.masks[entry].compute())
      out.update({f"{prefix}{k}": v for k, v in metrics.items()})
    out["accuracy"] = float(self.sums["correct"] / self.sums["count"] * 100.0)
    for name in self.example_means:
      out[name] = float(self.sums[f"mean/{name}"] / self.sums["count"])
    return out

  def images(self) -> np.ndarray | None:
    if not self._kept:
      return None
    return overlay_grid(self._kept, tuple(dict.fromkeys(self.scoremaps.values())))
