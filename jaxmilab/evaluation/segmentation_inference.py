"""Dense-prediction inference for semantic segmentation: single scale, or the multi-scale
sliding-window protocol of the released CDSP evaluate.py, as jit-able JAX functions.

`predict_probs(net, images, scales=..., flip=..., crop_size=..., stride_rate=...)`:

* `net(x)` maps normalised images [N, h, w, 3] to class probabilities [N, h, w, K] at the
  input size (CDSP: softmax of the logits upsampled bilinearly with align_corners=True).
* For each scale s: the image is resized to round(s H) x round(s W) (bilinear, half-pixel,
  as cv2.INTER_LINEAR); with crop_size > 0 it is padded (centred, with 0 = the mean colour
  after normalisation) to at least crop x crop and covered by crop x crop windows at stride
  ceil(crop * stride_rate), the last window flush with the border; each window's
  probabilities (averaged with those of the flipped window when `flip`) are summed and
  divided by the per-pixel window count; the padding is removed and the map resized back to
  H x W. The scales' maps are averaged.
* The released protocol: scales 0.5, 0.75, ..., 2.0, crop 465, stride_rate 2/3, no flip (its
  `net_process` has a flip option that `scale_process` leaves off). It scales each image so
  that its long side is s * 512; here batches have one fixed size (VOC images are padded to
  `eval_pad_size` 512 at the bottom / right by the folder reader), so s scales that canvas:
  the same long side for 512-pixel canvases, with the padding inside the windows.

Shapes are static (scales and windows are Python numbers), so the whole protocol is one
jit-compiled program; all windows of a scale go through the network as one batch.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxmilab.models.deeplab import resize_bilinear

RELEASED_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
  """Start offsets of the sliding windows along one axis (evaluate.py `scale_process`)."""
  grid = int(math.ceil(max(size - crop, 0) / stride)) + 1
  return [min(i * stride + crop, size) - crop for i in range(grid)]


def _net_with_flip(net: Callable[[jax.Array], jax.Array], x: jax.Array, flip: bool) -> jax.Array:
  probs = net(x)
  if flip:
    probs = 0.5 * (probs + net(x[:, :, ::-1])[:, :, ::-1])
  return probs


def sliding_window(
    net: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    crop: int,
    stride_rate: float = 2 / 3,
    flip: bool = False,
) -> jax.Array:
  """Window-averaged probabilities [B, H, W, K] of normalised images x [B, H, W, 3]."""
  b, h, w, _ = x.shape
  pad_h, pad_w = max(crop - h, 0), max(crop - w, 0)
  top, left = pad_h // 2, pad_w // 2
  x = jnp.pad(x, ((0, 0), (top, pad_h - top), (left, pad_w - left), (0, 0)))
  hh, ww = x.shape[1:3]
  stride = int(math.ceil(crop * stride_rate))
  boxes = [
      (y0, x0) for y0 in window_starts(hh, crop, stride) for x0 in window_starts(ww, crop, stride)
  ]
  windows = jnp.concatenate([x[:, y0 : y0 + crop, x0 : x0 + crop] for y0, x0 in boxes], axis=0)
  probs = _net_with_flip(net, windows, flip)  # [n * B, crop, crop, K]
  k = probs.shape[-1]
  total = jnp.zeros((b, hh, ww, k), probs.dtype)
  count = jnp.zeros((1, hh, ww, 1), probs.dtype)
  for i, (y0, x0) in enumerate(boxes):
    total = total.at[:, y0 : y0 + crop, x0 : x0 + crop].add(probs[i * b : (i + 1) * b])
    count = count.at[:, y0 : y0 + crop, x0 : x0 + crop].add(1.0)
  return (total / count)[:, top : top + h, left : left + w]


def predict_probs(
    net: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop_size: int = 0,
    stride_rate: float = 2 / 3,
) -> jax.Array:
  """Class probabilities [B, H, W, K] of normalised images [B, H, W, 3] (module docstring)."""
  h, w = images.shape[1:3]
  out = 0.0
  for s in scales:
    size = (max(1, int(round(s * h))), max(1, int(round(s * w))))
    x = resize_bilinear(images, size, align_corners=False) if size != (h, w) else images
    if crop_size > 0:
      probs = sliding_window(net, x, int(crop_size), stride_rate, flip)
    else:
      probs = _net_with_flip(net, x, flip)
    out = out + resize_bilinear(probs, (h, w), align_corners=False)
  return out / len(scales)
