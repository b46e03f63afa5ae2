"""CAM (Zhou et al. 2016) under the wsolevaluation protocol: classification training + CAM maps.

Training: cross-entropy on the backbone's logits (the 10x learning rate of the classifier
group is `config.optimizer.lr_multipliers`, see configs/cam.py). Evaluation: the CAM of the
ground-truth class k, `sum_c W[c, k] F_c` (no bias, no ReLU), resized to the image size with
OpenCV's bicubic kernel (cv2.INTER_CUBIC, a = -0.75, as wsolevaluation's `cv2.resize`) and
min-max normalised per image (NaN / constant -> 0). The scoremaps go through
jaxmilab.evaluation.wsol (MaxBoxAccV2, top1_loc, gt_known_loc and, with masks, PxAP / pIoU).

The batches, the config keys, the backbone and the map post-processing are shared with `bcam`
and `bagcams` (jaxmilab/methods/wsol.py). `paper`-preset networks refuse to train from random
weights (the protocol fine-tunes ImageNet weights) unless `config.method.allow_random_init=True`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxmilab.methods import wsol

# cam's config.method keys: the shared WSOL ones (config_lib fills the missing ones).
CONFIG_DEFAULTS = dict(wsol.CONFIG_DEFAULTS)


class Method(wsol.WSOLMethod):
  """Classification training; eval = CAM scoremaps of the ground-truth class."""

  DEFAULTS = CONFIG_DEFAULTS

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.model = wsol.build_backbone(config, data_info, self.opts.init_from)

  def init_variables(self, rng, batch):
    x = wsol.preprocess(batch["image"])
    return dict(self.model.init({"params": rng, "dropout": rng}, x, train=False))

  def apply(self, params, model_state, images, *, train: bool, rng=None, **kwargs):
    """Runs the backbone; returns (outputs, new model_state)."""
    return wsol.apply_backbone(
        self.model, params, model_state, wsol.preprocess(images), train=train, rng=rng, **kwargs
    )

  def loss(self, params, model_state, batch, rng):
    self.check_initialisation()
    out, model_state = self.apply(params, model_state, batch["image"], train=True, rng=rng)
    logits = out["logits"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, ({"ce": loss, "accuracy": accuracy}, model_state)

  def cam_scoremaps(self, out, batch) -> jax.Array:
    """[B, H, W] CAM scoremaps in [0, 1] from the backbone outputs."""
    cams = wsol.cam_maps(out["features"], out["classifier_kernel"], batch["label"])  # [B, h, w]
    return wsol.cam_to_scoremap(cams, batch["image"].shape[1:3])

  def eval_step(self, params, model_state, batch):
    out, _ = self.apply(params, model_state, batch["image"], train=False)
    return {"scoremap": self.cam_scoremaps(out, batch), "pred": jnp.argmax(out["logits"], -1)}
