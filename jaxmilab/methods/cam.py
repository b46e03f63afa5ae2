"""CAM (Zhou et al. 2016) under the wsolevaluation protocol: classification training + CAM maps.

Training: cross-entropy on the backbone's logits (the 10x learning rate of the classifier
group is `config.optimizer.lr_multipliers`, see configs/cam.py). Evaluation: the CAM of the
ground-truth class k, `sum_c W[c, k] F_c` (no bias, no ReLU), resized to the image size with
OpenCV's bicubic kernel (cv2.INTER_CUBIC, a = -0.75, as wsolevaluation's `cv2.resize`) and
min-max normalised per image (NaN / constant -> 0). The scoremaps go through
jaxmilab.evaluation.wsol (MaxBoxAccV2, top1_loc, gt_known_loc and, with masks, PxAP / pIoU).

Batches (jaxmilab/data/wsol_synthetic.py, wsol_folders.py): "image" uint8 [B, H, W, 3],
"label" int32 [B]; eval batches add "boxes" int32 [B, M, 4] (x0, y0, x1, y1 inclusive,
padded), "num_boxes" int32 [B] and optionally "mask" bool [B, H, W] and "ignore" bool [B, H, W].
The helpers here (resize matrices, normalisation, the WSOL summary) are shared by
`bagcams` and `bcam`.
"""

from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmilab import registry
from jaxmilab.evaluation import wsol as wsol_metrics
from jaxmilab.methods import base

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # wsolevaluation data_loaders.py
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
METHOD_KEYS = ("name", "init_from", "cam_curve_interval", "iou_thresholds", "multi_contour",
               "num_heads", "loss_weights", "inference", "map_mode")


# ------------------------------------------------------------------------- map post-processing


@functools.lru_cache(maxsize=None)
def cubic_resize_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out, in] matrix of cv2.resize INTER_CUBIC along one axis (a = -0.75, replicated border)."""
  a = -0.75
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5
    i0 = int(np.floor(src))
    t = src - i0
    ws = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
          ((a + 2) * t - (a + 3)) * t * t + 1,
          ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1]
    ws.append(1.0 - sum(ws))
    for k, w in enumerate(ws):
      m[i, min(max(i0 - 1 + k, 0), in_size - 1)] += w
  return m.astype(np.float32)


@functools.lru_cache(maxsize=None)
def bilinear_resize_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out, in] matrix of F.interpolate(mode="bilinear", align_corners=False) along one axis."""
  scale = in_size / out_size
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    src = max((i + 0.5) * scale - 0.5, 0.0)  # PyTorch clamps negative source coordinates
    i0 = min(int(np.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    t = src - i0
    m[i, i0] += 1 - t
    m[i, i1] += t
  return m.astype(np.float32)


def resize_maps(maps: jax.Array, size: tuple[int, int], kind: str) -> jax.Array:
  """[B, h, w] -> [B, H, W] by separable cv2-cubic ("cubic") or torch-bilinear ("bilinear")."""
  fn = cubic_resize_matrix if kind == "cubic" else bilinear_resize_matrix
  rh = jnp.asarray(fn(int(size[0]), int(maps.shape[1])))  # [H, h]
  rw = jnp.asarray(fn(int(size[1]), int(maps.shape[2])))  # [W, w]
  return jnp.einsum("Hh,bhw,Ww->bHW", rh, maps.astype(jnp.float32), rw,
                    precision=jax.lax.Precision.HIGHEST)


def normalize_minmax(maps: jax.Array) -> jax.Array:
  """wsolevaluation `normalize_scoremap` per image: (x - min) / (max - min); NaN or constant -> 0."""
  flat = maps.reshape(maps.shape[0], -1)
  lo = jnp.min(flat, axis=1)[:, None, None]
  hi = jnp.max(flat, axis=1)[:, None, None]
  bad = (hi <= lo) | jnp.isnan(flat).any(axis=1)[:, None, None]
  out = (maps - lo) / jnp.where(bad, 1.0, hi - lo)
  return jnp.where(bad, 0.0, jnp.clip(out, 0.0, 1.0))


def cam_maps(features: jax.Array, kernel: jax.Array, labels: jax.Array) -> jax.Array:
  """CAM of class labels[b]: sum_c kernel[c, labels[b]] * features[b, :, :, c] -> [B, h, w]."""
  weights = jnp.take(kernel.astype(jnp.float32), labels, axis=1).T  # [B, C]
  return jnp.einsum("bhwc,bc->bhw", features.astype(jnp.float32), weights,
                    precision=jax.lax.Precision.HIGHEST)


def cam_to_scoremap(cams: jax.Array, size: tuple[int, int]) -> jax.Array:
  """wsolevaluation: cv2.resize(cam, size, INTER_CUBIC) then normalize_scoremap -> [B, H, W]."""
  return normalize_minmax(resize_maps(cams, size, "cubic"))


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (or [0, 1] float) RGB [B, H, W, 3] -> ImageNet-normalised float32."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


# --------------------------------------------------------------------------------- evaluation


def wsol_summary(outputs: Mapping[str, np.ndarray], scoremap_key: str = "scoremap", *,
                 cam_curve_interval: float = 0.01, iou_thresholds=(30, 50, 70),
                 multi_contour: bool = True, pred_key: str = "pred") -> dict[str, float]:
  """Protocol metrics of one kind of scoremap over the valid eval examples.

  Keys: MaxBoxAccV2, MaxBoxAcc@<t>, gt_known_loc, top1_loc, accuracy (top-1 classification),
  and PxAP / pIoU when the batches carry "mask".
  """
  valid = np.flatnonzero(np.asarray(outputs["valid"]).astype(bool))
  if valid.size == 0:
    raise ValueError("wsol eval: no valid example in the eval set.")
  if "boxes" not in outputs and "mask" not in outputs:
    raise ValueError("wsol eval: the eval batches carry neither 'boxes' nor 'mask'; the dataset "
                     "must provide one of them (see jaxmilab/data/wsol_synthetic.py).")
  boxes = (BoxEvaluatorFactory(cam_curve_interval, iou_thresholds, multi_contour)
           if "boxes" in outputs else None)
  masks = wsol_metrics.MaskEvaluator(cam_curve_interval) if "mask" in outputs else None
  correct = outputs[pred_key] == outputs["label"]
  for i in valid:
    scoremap = np.asarray(outputs[scoremap_key][i], np.float64)
    if boxes is not None:
      n = int(outputs["num_boxes"][i])
      boxes.accumulate(scoremap, outputs["boxes"][i][:n], correct_class=bool(correct[i]))
    if masks is not None:
      ignore = outputs["ignore"][i] if "ignore" in outputs else None
      masks.accumulate(scoremap, outputs["mask"][i].astype(bool), ignore)
  out = boxes.compute() if boxes is not None else {}
  out.pop("GT-known", None)
  if masks is not None:
    out.update(masks.compute())
  out["accuracy"] = float(correct[valid].mean() * 100.0)
  return out


def BoxEvaluatorFactory(interval, thresholds, multi_contour):  # pylint: disable=invalid-name
  return wsol_metrics.BoxEvaluator(cam_curve_interval=float(interval),
                                   iou_thresholds=tuple(int(t) for t in thresholds),
                                   multi_contour=bool(multi_contour))


def overlay_grid(outputs: Mapping[str, np.ndarray], keys=("scoremap",), max_rows: int = 6) -> np.ndarray:
  """Rows: image | image with each scoremap in red and the GT boxes in green; [H, W, 3] in [0, 1]."""
  valid = np.flatnonzero(outputs["valid"])[:max_rows]
  rows = []
  for i in valid:
    image = np.asarray(outputs["image"][i], np.float32)
    image = image / 255.0 if outputs["image"].dtype == np.uint8 else image
    tiles = [image]
    for k in keys:
      s = np.asarray(outputs[k][i])[..., None]
      tile = 0.5 * image + 0.5 * np.concatenate([s, 0 * s, 0 * s], -1)
      boxes = outputs["boxes"][i][:int(outputs["num_boxes"][i])] if "boxes" in outputs else ()
      for x0, y0, x1, y1 in boxes:
        tile[y0:y1 + 1, [x0, x1]] = (0, 1, 0)
        tile[[y0, y1], x0:x1 + 1] = (0, 1, 0)
      tiles.append(tile)
    rows.append(np.concatenate([np.pad(t, ((1, 1), (1, 1), (0, 0)), constant_values=1) for t in tiles], 1))
  return np.clip(np.concatenate(rows, 0), 0, 1)


def check_method_keys(config, method: str) -> None:
  unknown = sorted(set(config.method.keys()) - set(METHOD_KEYS))
  if unknown:
    raise ValueError(f"Unknown config.method keys {unknown} for {method!r}; known: {', '.join(METHOD_KEYS)}.")


def build_backbone(config, data_info, **overrides):
  """The config.model backbone with num_classes from the dataset."""
  if data_info.num_classes < 2:
    raise ValueError(f"WSOL methods need a classification dataset; config.data.name="
                     f"{config.data.name!r} gives {data_info.num_classes} classes.")
  model_cfg = dict(config.model)
  model_cfg.update(num_classes=data_info.num_classes, **overrides)
  return registry.get_model(config.model.name)(model_cfg)


# ----------------------------------------------------------------------------------- method


class Method(base.Method):
  """Classification training; eval = CAM scoremaps of the ground-truth class."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    check_method_keys(config, type(self).__module__.rsplit(".", 1)[-1])
    self.model = build_backbone(config, data_info)
    m = config.method
    self.eval_kwargs = dict(cam_curve_interval=float(m.get("cam_curve_interval", 0.01)),
                            iou_thresholds=tuple(m.get("iou_thresholds", (30, 50, 70))),
                            multi_contour=bool(m.get("multi_contour", True)))

  def init_variables(self, rng, batch):
    x = preprocess(batch["image"])
    return dict(self.model.init({"params": rng, "dropout": rng}, x, train=False))

  def apply(self, params, model_state, images, *, train: bool, rng=None, **kwargs):
    """Runs the backbone; returns (outputs, new model_state)."""
    variables = {"params": params, **model_state}
    x = preprocess(images)
    if train and model_state:
      out, new_state = self.model.apply(variables, x, train=True, rngs={"dropout": rng},
                                        mutable=list(model_state), **kwargs)
      return out, dict(new_state)
    rngs = {"dropout": rng} if train else {}
    return self.model.apply(variables, x, train=train, rngs=rngs, **kwargs), model_state

  def loss(self, params, model_state, batch, rng):
    out, model_state = self.apply(params, model_state, batch["image"], train=True, rng=rng)
    logits = out["logits"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"ce": loss, "accuracy": accuracy}, model_state)

  def cam_scoremaps(self, out, batch) -> jax.Array:
    """[B, H, W] CAM scoremaps in [0, 1] from the backbone outputs."""
    cams = cam_maps(out["features"], out["classifier_kernel"], batch["label"])  # [B, h, w]
    return cam_to_scoremap(cams, batch["image"].shape[1:3])

  def eval_step(self, params, model_state, batch):
    out, _ = self.apply(params, model_state, batch["image"], train=False)
    return {"scoremap": self.cam_scoremaps(out, batch), "pred": jnp.argmax(out["logits"], -1)}

  def summarize_eval(self, outputs):
    return wsol_summary(outputs, "scoremap", **self.eval_kwargs)

  def eval_images(self, outputs):
    return overlay_grid(outputs, ("scoremap",))

  def init_from(self, variables, loaded):
    """Keeps loaded arrays with matching paths and shapes; errors if nothing matched."""
    merged = base.merge_matching(variables, loaded)
    same = sum(1 for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(variables)) if a is not b)
    if same == 0:
      raise ValueError("config.method.init_from: no parameter of the checkpoint matches this model "
                       "(path and shape); check config.model (arch, preset, num_classes).")
    return merged
