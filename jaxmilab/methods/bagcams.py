"""BagCAMs (Zhu et al., ECCV 2022): post-hoc localization maps from a trained WSOL classifier.

Nothing is trained by BagCAMs itself. This method is the `cam` training recipe (so a run can
train its base model); applied post hoc to a trained or imported model it runs with no
training step at all:

  python -m jaxmilab.main --mode=eval --config=configs/bagcams.py:resnet50_cub \
      --config.method.init_from=/runs/imported --workdir=/runs/bagcams_eval

which only reads the weights (parameters and BatchNorm statistics stay as loaded). Its
evaluation scores BagCAMs maps under the protocol names (MaxBoxAccV2, PxAP, ...) and the
plain CAM maps of the same network under "cam/<name>" for comparison.

Split points: ResNet50 layer3 is the official `target_layer`; VGG16 conv5_3 (the input of
conv6) and InceptionV3 Mixed_6e (the input of the SPG head) are our choice (ASSUMPTION), not
taken from the released code.

With the network split as F = f_low(x) (ResNet50 layer3, VGG16 conv5_3, InceptionV3 Mixed_6e)
and logits y = f_high(F) (official libs/cams/bagcams.py, target_layer "layer3"):
  G = d log(y_k) / dF, backward through f_high with every ReLU guided (relu(g) * 1[x > 0]);
      y_k is the raw logit of the ground-truth class. As released (`BagCAMs.backward`:
      `self.logits.log().backward(gradient=one_hot)`), the seed 1/y_k enters at the logits,
      BEFORE the guided ReLUs clamp: for y_k < 0 the seed is negative and the ReLUs keep the
      other channels than for y_k > 0 (torch's log backward is grad / y even where log(y) is
      NaN). `config.method.gradient_order="divide_after"` is our earlier reading (seed 1, G
      divided by y_k afterwards; equal to the release for y_k > 0 only). Eval reports the
      share of images with y_k <= 0 as "gt_logit_nonpositive" (%);
  A_c = (1 / HW) sum_m (1 + G_c(m) F_c(m))        (regional localizers' bagging weights);
  M(n) = sum_c ReLU(A_c G_c(n) F_c(n)), bilinear upsample to the image (align_corners=False),
  min-max; then the protocol's bicubic resize to the image size and min-max (NaN -> 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmilab.methods import cam
from jaxmilab.methods import wsol

# `cam` training: the same config.method keys, plus the order of BagCAMs' backward.
CONFIG_DEFAULTS = dict(
    cam.CONFIG_DEFAULTS,
    gradient_order="release",  # GRADIENT_ORDERS (module docstring)
)
GRADIENT_ORDERS = ("release", "divide_after")


def bagcams_from_gradients(features: jax.Array, grads: jax.Array) -> jax.Array:
  """The BagCAMs formula at feature resolution: F, G [B, h, w, C] -> M [B, h, w]."""
  gf = features.astype(jnp.float32) * grads.astype(jnp.float32)  # [B, h, w, C]
  weights = jnp.mean(1.0 + gf, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
  return jnp.sum(jax.nn.relu(weights * gf), axis=-1)


def guided_gradients(
    model, variables, low: jax.Array, labels: jax.Array, order: str = "release"
) -> jax.Array:
  """G = d log(y_k) / dF through f_high with guided ReLUs (BatchNorm in inference mode).

  order "release": the seed 1/y_k is back-propagated through the guided ReLUs (official
  libs/cams/bagcams.py `backward`: `logits.log().backward(one_hot)`); "divide_after": seed 1,
  then G / y_k (differs from the release where y_k < 0). y_k = 0 gives inf / NaN, as released
  (the scoremap's NaN check maps it to 0).
  """
  if order not in GRADIENT_ORDERS:
    raise ValueError(f"config.method.gradient_order={order!r}: use one of {GRADIENT_ORDERS}.")
  guided = model.clone(guided=True)
  index = jnp.arange(labels.shape[0])

  def class_logits(f):
    logits = guided.apply(variables, None, train=False, low_features=f)["logits"]
    return logits[index, labels]  # [B]

  y_k, vjp = jax.vjp(class_logits, low)
  if order == "release":  # d log(y)/dy = 1/y is the seed: it passes the guided ReLUs
    (grad,) = vjp(1.0 / y_k)  # per example: examples are independent at inference
    return grad
  (grad_y,) = vjp(jnp.ones_like(y_k))
  return grad_y / y_k[:, None, None, None]


def gt_logits(out, labels: jax.Array) -> jax.Array:
  """The ground-truth class's raw logit y_k per example [B] (its sign decides the backward)."""
  return out["logits"][jnp.arange(labels.shape[0]), labels].astype(jnp.float32)


def bagcams_scoremaps(
    model,
    variables,
    low: jax.Array,
    labels: jax.Array,
    size: tuple[int, int],
    order: str = "release",
) -> jax.Array:
  """[B, H, W] BagCAMs scoremaps in [0, 1] from the split-point features `low`."""
  grads = guided_gradients(model, variables, low, labels, order)
  maps = bagcams_from_gradients(low, grads)  # [B, h, w]
  maps = wsol.normalize_minmax(wsol.resize_maps(maps, size, "bilinear"))
  # The protocol's cv2.resize to the image size is the identity here (already that size).
  return wsol.normalize_minmax(maps)


class Method(cam.Method):
  """`cam` training; eval with BagCAMs maps (protocol names) and CAM maps ("cam/" names)."""

  DEFAULTS = CONFIG_DEFAULTS
  SCOREMAPS = {"": "scoremap", "cam/": "scoremap_cam"}
  # Per-example values the evaluator averages: the share of images whose y_k <= 0 (%).
  EXAMPLE_MEANS = {"gt_logit_nonpositive": "gt_logit_nonpositive"}

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.gradient_order = self.opts.gradient_order
    if self.gradient_order not in GRADIENT_ORDERS:
      raise ValueError(
          f"config.method.gradient_order={self.gradient_order!r}: use one of " f"{GRADIENT_ORDERS}."
      )

  def eval_step(self, params, model_state, batch):
    out, _ = self.apply(params, model_state, batch["image"], train=False)
    variables = {"params": params, **model_state}
    scoremap = bagcams_scoremaps(
        self.model,
        variables,
        jax.lax.stop_gradient(out["low"]),
        batch["label"],
        batch["image"].shape[1:3],
        self.gradient_order,
    )
    y_k = gt_logits(out, batch["label"])
    return {
        "scoremap": scoremap,
        "scoremap_cam": self.cam_scoremaps(out, batch),
        "gt_logit_nonpositive": (y_k <= 0).astype(jnp.float32) * 100.0,
        "pred": jnp.argmax(out["logits"], -1),
    }
