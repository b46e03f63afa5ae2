"""DCPT: degradation classification pre-training (ICLR 2025, arXiv 2501.15510).

One step, one backward pass (restoration.md):
  L_pix = |net(gt) - gt|_1                      keeps the net an identity-like restorer
  L_cls = focal(classifier(decoder_feats(lq)), type)   gamma 0 = cross-entropy
  loss  = L_pix + cls_weight * L_cls
Parameters: {"backbone": ..., "classifier": ...}; `restoration` fine-tunes the backbone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxmilab import registry
from jaxmilab.methods import base
from jaxmilab.methods import common
from jaxmilab.models import dcpt_classifier


class Method(base.Method):
  """DCPT pre-training of a restoration backbone with a degradation classifier."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    if data_info.num_classes < 2:
      raise ValueError(f"dcpt needs at least 2 degradation types; config.data gives {data_info.num_classes}.")
    self.backbone = registry.get_model(config.model.name)(config.model)
    self.classifier = dcpt_classifier.DegradationClassifier(num_classes=data_info.num_classes)
    self.gamma = float(config.method.get("focal_gamma", 0.0))
    self.cls_weight = float(config.method.get("cls_weight", 1.0))

  def init_variables(self, rng, batch):
    backbone_rng, classifier_rng = jax.random.split(rng)
    backbone = self.backbone.init(backbone_rng, batch["lq"])
    _, feats = self.backbone.apply(backbone, batch["lq"], return_decoder_features=True)
    classifier = self.classifier.init(classifier_rng, feats)
    return {"params": {"backbone": backbone["params"], "classifier": classifier["params"]}}

  def _classify(self, params, lq):
    restored, feats = self.backbone.apply({"params": params["backbone"]}, lq, return_decoder_features=True)
    logits = self.classifier.apply({"params": params["classifier"]}, feats)
    return restored, logits.astype(jnp.float32)

  def loss(self, params, model_state, batch, rng):
    del rng
    identity = self.backbone.apply({"params": params["backbone"]}, batch["gt"])
    l_pix = jnp.mean(jnp.abs(identity.astype(jnp.float32) - batch["gt"]))
    _, logits = self._classify(params, batch["lq"])
    l_cls = dcpt_classifier.focal_loss(logits, batch["label"], gamma=self.gamma)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    loss = l_pix + self.cls_weight * l_cls
    return loss, ({"l_pix": l_pix, "l_cls": l_cls, "accuracy": accuracy}, model_state)

  def eval_step(self, params, model_state, batch):
    restored, logits = self._classify(params, batch["lq"])
    return {"restored": restored.astype(jnp.float32), "pred": jnp.argmax(logits, -1)}

  def summarize_eval(self, outputs):
    summary = common.restoration_summary(outputs, self.data_info.class_names)
    valid = outputs["valid"].astype(bool)
    correct = outputs["pred"][valid] == outputs["label"][valid]
    summary["accuracy"] = float(correct.mean())
    for index, name in enumerate(self.data_info.class_names):
      sel = outputs["label"][valid] == index
      if sel.any():
        summary[f"accuracy/{name}"] = float(correct[sel].mean())
    return summary

  def eval_images(self, outputs):
    return common.image_grid(outputs)

