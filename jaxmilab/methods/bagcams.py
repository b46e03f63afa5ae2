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
      y_k is the raw logit of the ground-truth class, so G = (d y_k / dF) / y_k;
  A_c = (1 / HW) sum_m (1 + G_c(m) F_c(m))        (regional localizers' bagging weights);
  M(n) = sum_c ReLU(A_c G_c(n) F_c(n)), bilinear upsample to the image (align_corners=False),
  min-max; then the protocol's bicubic resize to the image size and min-max (NaN -> 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmilab.methods import cam

CONFIG_DEFAULTS = cam.CONFIG_DEFAULTS  # `cam` training: the same config.method keys


def bagcams_from_gradients(features: jax.Array, grads: jax.Array) -> jax.Array:
  """The BagCAMs formula at feature resolution: F, G [B, h, w, C] -> M [B, h, w]."""
  gf = features.astype(jnp.float32) * grads.astype(jnp.float32)  # [B, h, w, C]
  weights = jnp.mean(1.0 + gf, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
  return jnp.sum(jax.nn.relu(weights * gf), axis=-1)


def guided_gradients(model, variables, low: jax.Array, labels: jax.Array) -> jax.Array:
  """G = d log(y_k) / dF through f_high with guided ReLUs (BatchNorm in inference mode)."""
  guided = model.clone(guided=True)
  index = jnp.arange(labels.shape[0])

  def class_logits(f):
    logits = guided.apply(variables, None, train=False, low_features=f)["logits"]
    return logits[index, labels]  # [B]

  y_k, vjp = jax.vjp(class_logits, low)
  (grad_y,) = vjp(jnp.ones_like(y_k))  # per example: examples are independent at inference
  return grad_y / y_k[:, None, None, None]  # d log(y_k) = d y_k / y_k


def bagcams_scoremaps(model, variables, low: jax.Array, labels: jax.Array,
                      size: tuple[int, int]) -> jax.Array:
  """[B, H, W] BagCAMs scoremaps in [0, 1] from the split-point features `low`."""
  grads = guided_gradients(model, variables, low, labels)
  maps = bagcams_from_gradients(low, grads)  # [B, h, w]
  maps = cam.normalize_minmax(cam.resize_maps(maps, size, "bilinear"))
  # The protocol's cv2.resize to the image size is the identity here (already that size).
  return cam.normalize_minmax(maps)


class Method(cam.Method):
  """`cam` training; eval with BagCAMs maps (protocol names) and CAM maps ("cam/" names)."""

  SCOREMAPS = {"": "scoremap", "cam/": "scoremap_cam"}

  def eval_step(self, params, model_state, batch):
    out, _ = self.apply(params, model_state, batch["image"], train=False)
    variables = {"params": params, **model_state}
    scoremap = bagcams_scoremaps(self.model, variables, jax.lax.stop_gradient(out["low"]),
                                 batch["label"], batch["image"].shape[1:3])
    return {"scoremap": scoremap, "scoremap_cam": self.cam_scoremaps(out, batch),
            "pred": jnp.argmax(out["logits"], -1)}
