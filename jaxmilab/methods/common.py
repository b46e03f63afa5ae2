"""Pieces shared by the restoration recipes (dcpt, restoration, maskdcpt)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from jaxmilab.evaluation import restoration as restoration_metrics


def to_uint8(x: np.ndarray) -> np.ndarray:
  """BasicSR's tensor2img: round(clip(x, 0, 1) * 255)."""
  return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def restoration_summary(outputs: Mapping[str, np.ndarray], class_names: tuple[str, ...],
                        restored_key: str = "restored") -> dict[str, float]:
  """PSNR / SSIM of the degraded input and of the restored output, overall and per type.

  Keys: psnr_input, psnr, ssim_input, ssim, and "<metric>/<type>" per degradation type,
  on uint8-rounded RGB images (BasicSR protocol).
  """
  valid = outputs["valid"].astype(bool)
  gt, lq, out = (to_uint8(outputs[k][valid]) for k in ("gt", "lq", restored_key))
  labels = outputs["label"][valid]
  per_image = {
      "psnr_input": np.array([restoration_metrics.psnr(a, b) for a, b in zip(lq, gt)]),
      "psnr": np.array([restoration_metrics.psnr(a, b) for a, b in zip(out, gt)]),
      "ssim_input": np.array([restoration_metrics.ssim(a, b) for a, b in zip(lq, gt)]),
      "ssim": np.array([restoration_metrics.ssim(a, b) for a, b in zip(out, gt)]),
  }
  # PSNR of identical images is inf (BasicSR); cap at 100 dB so averages stay finite.
  per_image = {k: np.minimum(v, 100.0) for k, v in per_image.items()}
  summary = {k: float(v.mean()) for k, v in per_image.items()}
  for index, name in enumerate(class_names):
    sel = labels == index
    if sel.any():
      for k, v in per_image.items():
        summary[f"{k}/{name}"] = float(v[sel].mean())
  return summary


def image_grid(outputs: Mapping[str, np.ndarray], keys=("lq", "restored", "gt"),
               max_rows: int = 6) -> np.ndarray:
  """Rows of examples (one per degradation type first), columns = keys; [H, W, 3] in [0, 1]."""
  valid = np.flatnonzero(outputs["valid"])
  labels = outputs["label"][valid]
  rows = [valid[labels == c][0] for c in np.unique(labels)][:max_rows]
  pad = 2
  tiles = []
  for i in rows:
    row = [np.pad(np.clip(outputs[k][i], 0, 1), ((pad, pad), (pad, pad), (0, 0)), constant_values=1.0)
           for k in keys]
    tiles.append(np.concatenate(row, axis=1))
  return np.concatenate(tiles, axis=0)
