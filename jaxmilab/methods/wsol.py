"""What the WSOL methods (cam, bcam, bagcams) share under the wsolevaluation protocol.

Config keys (`CONFIG_DEFAULTS`, read through `WSOLMethod.options`), the backbone
(`build_backbone`, `apply_backbone`, ImageNet `preprocess`), the streaming protocol evaluator
(`WSOLMethod.evaluator`: MaxBoxAccV2, top1_loc, gt_known_loc and, with masks, PxAP / pIoU from
jaxmilab.evaluation.wsol) and the map post-processing: CAMs (`cam_maps`), separable resizes
(OpenCV's bicubic kernel, cv2.INTER_CUBIC with a = -0.75 as wsolevaluation's `cv2.resize`, or
torch's bilinear) and per-image min-max normalisation (NaN / constant -> 0).

Batches (jaxmilab/data/wsol_synthetic.py, wsol_folders.py): "image" uint8 [B, H, W, 3],
"label" int32 [B]; eval batches add "boxes" int32 [B, M, 4] (x0, y0, x1, y1 inclusive,
padded), "num_boxes" int32 [B] and optionally "mask" bool [B, H, W] and "ignore" bool [B, H, W].
`paper`-preset networks refuse to train from random weights (the protocol fine-tunes ImageNet
weights) unless `config.method.allow_random_init=True` (`WSOLMethod.check_initialisation`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import config_options
from jaxmilab import registry
from jaxmilab.convert import torchvision_wsol
from jaxmilab.evaluation import wsol as wsol_metrics
from jaxmilab.methods import base
from jaxmilab.models import common as model_common
from jaxmilab.models import layers as model_layers
from jaxmilab.models import wsol_backbones

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # wsolevaluation data_loaders.py
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Every config.method key the WSOL methods share (cam uses them as they are, bcam and bagcams
# add their own; config_lib fills the missing ones; read through WSOLMethod.options).
CONFIG_DEFAULTS = dict(
    init_from="",  # ImageNet / released weights (convert/torchvision_wsol.py) or a run
    allow_random_init=False,  # let a `paper` network train from random weights
    cam_curve_interval=0.01,  # step of the score thresholds of the protocol curves
    iou_thresholds=(30, 50, 70),  # MaxBoxAccV2 IoU thresholds (%)
    multi_contour=True,  # MaxBoxAccV2: boxes of all contours, not only the largest
)


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
    ws = [
        ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
    ]
    ws.append(1.0 - sum(ws))
    for k, w in enumerate(ws):
      m[i, min(max(i0 - 1 + k, 0), in_size - 1)] += w
  return m.astype(np.float32)


def resize_maps(maps: jax.Array, size: tuple[int, int], kind: str) -> jax.Array:
  """[B, h, w] -> [B, H, W] by separable cv2-cubic ("cubic") or torch-bilinear ("bilinear",
  F.interpolate with align_corners=False)."""
  if kind == "cubic":
    fn = cubic_resize_matrix
  else:
    fn = functools.partial(model_layers.resize_matrix, align_corners=False)
  rh = jnp.asarray(fn(int(size[0]), int(maps.shape[1])))  # [H, h]
  rw = jnp.asarray(fn(int(size[1]), int(maps.shape[2])))  # [W, w]
  return jnp.einsum(
      "Hh,bhw,Ww->bHW", rh, maps.astype(jnp.float32), rw, precision=jax.lax.Precision.HIGHEST
  )


def normalize_minmax(maps: jax.Array) -> jax.Array:
  """wsolevaluation `normalize_scoremap` per image: (x - min) / (max - min);
  NaN or constant -> 0."""
  flat = maps.reshape(maps.shape[0], -1)
  lo = jnp.min(flat, axis=1)[:, None, None]
  hi = jnp.max(flat, axis=1)[:, None, None]
  bad = (hi <= lo) | jnp.isnan(flat).any(axis=1)[:, None, None]
  out = (maps - lo) / jnp.where(bad, 1.0, hi - lo)
  return jnp.where(bad, 0.0, jnp.clip(out, 0.0, 1.0))


def cam_maps(features: jax.Array, kernel: jax.Array, labels: jax.Array) -> jax.Array:
  """CAM of class labels[b]: sum_c kernel[c, labels[b]] * features[b, :, :, c] -> [B, h, w]."""
  weights = jnp.take(kernel.astype(jnp.float32), labels, axis=1).T  # [B, C]
  return jnp.einsum(
      "bhwc,bc->bhw", features.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST
  )


def cam_to_scoremap(cams: jax.Array, size: tuple[int, int]) -> jax.Array:
  """wsolevaluation: cv2.resize(cam, size, INTER_CUBIC) then normalize_scoremap -> [B, H, W]."""
  return normalize_minmax(resize_maps(cams, size, "cubic"))


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 (or [0, 1] float) RGB [B, H, W, 3] -> ImageNet-normalised float32."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - IMAGENET_MEAN) / IMAGENET_STD


# ------------------------------------------------------------------------------- shared parts


def apply_backbone(model, params, model_state, x, *, train: bool, rng=None, **kwargs):
  """model.apply on preprocessed x; in training BatchNorm statistics update and dropout draws
  from `rng`. Returns (outputs, model_state) (the new state in training, else the given one)."""
  rngs = {"dropout": rng} if train and rng is not None else None
  return model_common.apply_with_state(
      model, params, model_state, x, train=train, rngs=rngs, **kwargs
  )


def wsol_summary(
    outputs, scoremap_key: str = "scoremap", *, pred_key: str = "pred", **eval_kwargs
) -> dict[str, float]:
  """Protocol metrics of one kind of scoremap over host arrays holding the batch keys and
  outputs."""
  ev = wsol_metrics.WSOLEvaluator({"": scoremap_key}, pred_key=pred_key, **eval_kwargs)
  ev.update(outputs, outputs)
  return ev.compute()


def build_backbone(config, data_info, init_from: str, **overrides):
  """The config.model backbone with num_classes from the dataset, checked against the network
  the `init_from` weights were converted for."""
  if data_info.num_classes < 2:
    raise ValueError(
        f"WSOL methods need a classification dataset; config.data.name="
        f"{config.data.name!r} gives {data_info.num_classes} classes."
    )
  model_cfg = dict(config.model)
  model_cfg.update(num_classes=data_info.num_classes, **overrides)
  model = registry.get_model(config.model.name)(model_cfg)
  torchvision_wsol.check_model_info(
      init_from, wsol_backbones.arch_of(model), model.large_feature_map
  )
  return model


# ------------------------------------------------------------------------------ base method


class WSOLMethod(base.Method):
  """What the WSOL methods share: config keys, the backbone, the streaming evaluator, init_from."""

  # The config.method keys of the method's module (a subclass names its own declaration).
  DEFAULTS = CONFIG_DEFAULTS
  # Metric prefix -> eval output key (or (prefix, key, kinds) entries, see WSOLEvaluator); the
  # first is reported under the protocol names.
  SCOREMAPS = {"": "scoremap"}
  # Metric name -> eval output key of one number per example, reported as its mean.
  EXAMPLE_MEANS: dict[str, str] = {}

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = m = self.options()
    self.eval_kwargs = dict(
        cam_curve_interval=float(m.cam_curve_interval),
        iou_thresholds=tuple(m.iou_thresholds),
        multi_contour=bool(m.multi_contour),
    )

  def options(self) -> config_options.Options:
    """config.method read through DEFAULTS, now (a test or notebook may change the config)."""
    return config_options.options(self.config.method, self.DEFAULTS)

  def check_initialisation(self) -> None:
    """The protocol fine-tunes ImageNet (or released) weights: refuse random `paper` networks.

    Called when the training loss is traced, so `--mode=eval` of a trained run is not affected.
    """
    m = self.options()
    model = wsol_backbones.model_options(self.config.model, self.data_info.num_classes)
    if model.preset == "paper" and not m.init_from and not m.allow_random_init:
      raise ValueError(
          "config.model.preset='paper' trains the protocol network, which starts from "
          "ImageNet weights, but config.method.init_from is empty. Import them with "
          "`python -m jaxmilab.convert.torchvision_wsol` and pass --config.method.init_from, "
          "or set --config.method.allow_random_init=True to train from random weights."
      )

  def evaluator(self) -> wsol_metrics.WSOLEvaluator:
    return wsol_metrics.WSOLEvaluator(
        self.SCOREMAPS, example_means=self.EXAMPLE_MEANS, **self.eval_kwargs
    )
