"""DCPT: degradation classification pre-training (ICLR 2025, arXiv 2501.15510), and the
official repository's other degradation-classification modes (MILab-PKU/dcpt basicsr/models/).

`config.method.mode` (L_cls = focal(classifier(decoder_feats(lq)), type), gamma 0 = CE;
feats are read fine to coarse, as the official hooks reversed):

  pretrain  DCPTModel (degradation_classification_pretrain_model.py), the paper's step:
            loss = |net(gt) - gt|_1 + cls_weight * L_cls; network and classifier train.
  probe     DCModel (degradation_classification_model.py): the network is frozen (e.g. loaded
            with `init_from`), only the classifier trains on L_cls: how well a backbone's
            decoder features tell degradations apart.
  joint     DCTModel (degradation_classification_direct_train_model.py): restoration and
            classification trained together from the start, loss = |net(lq) - gt|_1 +
            cls_weight * L_cls, with separate optimizers `optim_g` / `optim_dc`.
  transfer  DCDistModel (degradation_classification_distillation_model.py): fine-tuning with a
            frozen, pre-trained classifier as an extra loss on the network's own features:
            loss = |net(lq) - gt|_1 + cls_weight * L_cls, only the network trains (the official
            code also clips the gradient: config.optimizer.grad_clip_norm).

Separate optimizers (`create_optimizer`): optax.multi_transform over {"backbone",
"classifier"}; the classifier uses `config.method.classifier_learning_rate` (0 = the
network's) with the rest of config.optimizer, and a frozen part gets `optax.set_to_zero`
(its parameters never move, weight decay included).
Parameters: {"backbone": ..., "classifier": ...}; `restoration` with `init_from` fine-tunes
the backbone; `init_from` here loads both parts (probe / transfer start from a pretrain run).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxmilab import config_options
from jaxmilab import optimizers
from jaxmilab.methods import base
from jaxmilab.methods import restoration_common
from jaxmilab.models import dcpt_classifier

MODES = ("pretrain", "probe", "joint", "transfer")
FROZEN = {"pretrain": (), "probe": ("backbone",), "joint": (), "transfer": ("classifier",)}

# Every config.method key of dcpt (config_lib fills the missing ones; read as self.opts).
CONFIG_DEFAULTS = dict(
    mode="pretrain",  # MODES, module docstring
    focal_gamma=0.0,  # focal loss gamma; 0 and no alpha = cross-entropy (official)
    cls_weight=1.0,  # L = L_pix + cls_weight * L_cls
    classifier_learning_rate=0.0,  # 0 = config.optimizer.learning_rate
    init_from="",  # a run whose params (backbone, classifier) start this one
    float_metrics=False,  # PSNR/SSIM on float images instead of uint8-rounded ones
)


class Method(base.Method):
  """DCPT pre-training of a restoration backbone with a degradation classifier."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = config_options.options(config.method, CONFIG_DEFAULTS, component="dcpt")
    self.backbone = restoration_common.restoration_backbone(config, data_info, "dcpt")
    self.classifier = dcpt_classifier.DegradationClassifier(num_classes=data_info.num_classes)
    self.gamma = float(self.opts.focal_gamma)
    self.cls_weight = float(self.opts.cls_weight)
    self.mode = self.opts.mode
    if self.mode not in MODES:
      raise ValueError(f"config.method.mode={self.mode!r}; use one of {MODES}.")

  def init_variables(self, rng, batch):
    backbone_rng, classifier_rng = jax.random.split(rng)
    backbone = self.backbone.init(backbone_rng, batch["lq"])
    _, feats = self.backbone.apply(backbone, batch["lq"], return_decoder_features=True)
    classifier = self.classifier.init(classifier_rng, feats)
    return {"params": {"backbone": backbone["params"], "classifier": classifier["params"]}}

  def _frozen(self, params):
    """params with the mode's frozen parts behind stop_gradient (their gradient is zero)."""
    return {k: jax.lax.stop_gradient(v) if k in FROZEN[self.mode] else v for k, v in params.items()}

  def forward(self, params, lq):
    """(restored [B, H, W, C], logits [B, N] float32) of the dense network and its classifier
    (the same call as maskdcpt.Method.forward without a mask)."""
    restored, feats = self.backbone.apply(
        {"params": params["backbone"]}, lq, return_decoder_features=True
    )
    logits = self.classifier.apply({"params": params["classifier"]}, feats)
    return restored, logits.astype(jnp.float32)

  def loss(self, params, model_state, batch, rng):
    del rng
    params = self._frozen(params)
    restored, logits = self.forward(params, batch["lq"])
    l_cls = dcpt_classifier.focal_loss(logits, batch["label"], gamma=self.gamma)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    metrics = {"l_cls": l_cls, "accuracy": accuracy}
    if self.mode == "probe":
      return l_cls, (metrics, model_state)
    if self.mode == "pretrain":
      # The clean image through the same network: it stays an identity-like restorer.
      restored = self.backbone.apply({"params": params["backbone"]}, batch["gt"])
    l_pix = restoration_common.l1_loss(restored, batch["gt"])
    metrics["l_pix"] = l_pix
    return l_pix + self.cls_weight * l_cls, (metrics, model_state)

  def eval_step(self, params, model_state, batch):
    restored, logits = self.forward(params, batch["lq"])
    return {"restored": restored.astype(jnp.float32), "pred": jnp.argmax(logits, -1)}

  def create_optimizer(self, optimizer_config, total_steps: int) -> optax.GradientTransformation:
    """Separate optimizers for network and classifier (official optim_g / optim_dc); frozen
    parts get set_to_zero. The classifier's learning rate: config.method.classifier_learning_rate.
    """
    tx_g = optimizers.create(optimizer_config, total_steps)
    lr_dc = float(self.opts.classifier_learning_rate)
    if lr_dc:
      dc_config = optimizer_config.copy_and_resolve_references()
      with dc_config.unlocked():
        dc_config.learning_rate = lr_dc
      tx_dc = optimizers.create(dc_config, total_steps)
    else:
      tx_dc = optimizers.create(optimizer_config, total_steps)
    transforms = {"backbone": tx_g, "classifier": tx_dc, "frozen": optax.set_to_zero()}
    frozen = FROZEN[self.mode]

    def labels(params):
      # Everything but the classifier is the network.
      return {
          k: jax.tree_util.tree_map(
              lambda _, k=k: "frozen"
              if k in frozen
              else ("classifier" if k == "classifier" else "backbone"),
              v,
          )
          for k, v in params.items()
      }

    return optax.multi_transform(transforms, labels)

  def init_from(self, variables, loaded):
    """Loads every part the checkpoint has (backbone, classifier) where path and shape match;
    a probe or transfer run must find the part it freezes."""
    source = loaded.get("params", {})
    for part in FROZEN[self.mode]:
      if part not in source:
        raise ValueError(
            f"init_from: mode {self.mode!r} freezes the {part}, but the checkpoint "
            f"has no params/{part}; start from a dcpt (pretrain) run."
        )
    return base.merge_variables(variables, loaded)

  def evaluator(self):
    return restoration_common.evaluator(self, with_accuracy=True)
