"""Segmentation fine-tuning of a (MACL / PCL pre-trained, or scratch) 2-D U-Net, pooled Dice.

The official stevezs315/MACL train_supervised.py (and positional_cl's): pixel-wise
cross-entropy (nn.CrossEntropyLoss, mean over pixels) of the U-Net's logits against the
slice labels; Adam lr 5e-4, cosine to 5e-6, weight decay 1e-5 (configs/macl_finetune.py).
torch.optim.Adam's weight_decay is a coupled L2 term (wd * p added to the gradient before
the Adam moments), which optax's adam lacks: `l2_weight` adds it to the loss here.
Without `init_from` this is the scratch baseline.

`init_from` = a MACL / PCL pre-training run (workdir or checkpoint folder): as the official
loader (it keeps the keys of `share_encoder` and `online_decoder`; only the encoder and the
decoder blocks that the pre-training ran, 1-2, were ever trained there), the encoder and
decoder blocks 1..`init_decoder_blocks` (2) are copied, parameters and BatchNorm
statistics; the other decoder blocks, the head and the projectors stay as initialised here.
A run of this method (a previous fine-tuning) is loaded whole. The copied parts must match
this model's (paths and shapes, `methods.base.merge_variables(strict=True, parts=...)`): a
difference is one error naming the first mismatching arrays (the official loader skips them
silently).

Evaluation: argmax predictions on every test slice, `jaxmilab.evaluation.segmentation
.DiceEvaluator` (per foreground class Dice = 2|P n G| / (|P| + |G|), counts pooled over all
test slices; "dice" the mean over foreground classes, in percent; the official
SegmentationMetric pools the same way), and HD95 / ASD per class in pixels as the released
validate() (medpy per slice, 0 for a slice missing the class; `segmentation
.SurfaceDistanceEvaluator`; "hd95_present" / "asd_present" skip those slices). The eval
picture: image | ground truth | prediction for a few test slices.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from jaxmilab import config_options
from jaxmilab import registry
from jaxmilab.convert import mapping
from jaxmilab.evaluation import segmentation
from jaxmilab.methods import base

CONFIG_DEFAULTS = dict(
    init_from="",  # a MACL / PCL pre-training run; "" = scratch
    init_decoder_blocks=2,  # decoder blocks taken from a pre-training run (MACL pre-trains 1-2)
    l2_weight=0.0,  # coupled L2 (torch.optim.Adam weight_decay): loss += l2/2 sum p^2
    surface_metrics=True,  # also HD95 / ASD per class (released validate(); pixels)
    eval_examples=4,
)  # test slices kept for the eval picture


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean pixel-wise softmax cross-entropy of [B, H, W, K] logits and int [B, H, W] labels."""
  return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  )


def pretrained_parts(loaded_params: dict[str, Any], decoder_blocks: int) -> dict[str, Any] | None:
  """{"encoder": ..., "decoder": {"block_1".."block_n"}} of a MACL / PCL run's "backbone"
  subtree (any collection), or None if `loaded_params` is not from a pre-training run."""
  if "backbone" not in loaded_params:
    return None
  backbone = loaded_params["backbone"]
  parts = {}
  if "encoder" in backbone:
    parts["encoder"] = backbone["encoder"]
  blocks = {
      k: v
      for k, v in backbone.get("decoder", {}).items()
      if k.startswith("block_") and int(k.split("_")[1]) <= decoder_blocks
  }
  if blocks:
    parts["decoder"] = blocks
  return parts


class Method(base.Method):
  """Cross-entropy segmentation on medical_seg batches; pooled Dice evaluation."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = config_options.options(config.method, CONFIG_DEFAULTS, component="macl_finetune")
    self.num_classes = int(data_info.num_classes)
    if self.num_classes < 2:
      raise ValueError(
          f"macl_finetune needs labelled data with >= 2 classes (config.data.name="
          f"'medical_seg'); the dataset reports num_classes={self.num_classes}."
      )
    model_config = ml_collections.ConfigDict(config.model.to_dict())
    declared = int(model_config.get("num_classes") or 0)  # 0 / None / absent: from the data
    if declared and declared != self.num_classes:
      raise ValueError(
          f"config.model.num_classes={declared} but the data has {self.num_classes} "
          f"classes; set it to 0 (= from the data) or {self.num_classes}."
      )
    model_config.num_classes = self.num_classes
    self.net = registry.get_model(config.model.name)(model_config)
    self.decoder_blocks = int(self.opts.init_decoder_blocks)
    self.eval_examples = int(self.opts.eval_examples)
    self.l2_weight = float(self.opts.l2_weight)

  def init_variables(self, rng, batch):
    return dict(self.net.init({"params": rng}, batch["image"], train=False))

  def loss(self, params, model_state, batch, rng):
    del rng
    logits, updates = self.net.apply(
        {"params": params, **model_state},
        batch["image"],
        train=True,
        mutable=list(model_state.keys()),
    )
    ce = cross_entropy(logits, batch["labels"])
    accuracy = jnp.mean((jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32))
    loss = ce
    if self.l2_weight:  # torch Adam's weight_decay adds wd * p to every gradient
      loss = loss + 0.5 * self.l2_weight * sum(
          jnp.sum(jnp.square(p)) for p in jax.tree_util.tree_leaves(params)
      )
    return loss, ({"ce": ce, "pixel_accuracy": accuracy}, dict(updates))

  def eval_step(self, params, model_state, batch):
    logits = self.net.apply({"params": params, **model_state}, batch["image"], train=False)
    return {"prediction": jnp.argmax(logits, axis=-1).astype(jnp.int32)}

  def evaluator(self) -> segmentation.MACLFinetuneEvaluator:
    return segmentation.MACLFinetuneEvaluator(
        self.num_classes, self.eval_examples, bool(self.opts.surface_metrics)
    )

  def init_from(self, variables, loaded):
    parts = pretrained_parts(loaded["params"], self.decoder_blocks)
    if parts is None:  # a segmentation run: everything that matches
      return base.merge_variables(variables, loaded)
    chosen = {"params": parts}
    for collection in variables:
      source = loaded.get(collection)
      if collection != "params" and source is not None:
        chosen[collection] = pretrained_parts(source, self.decoder_blocks)
    chosen = {c: tree for c, tree in chosen.items() if tree}
    named = []  # the parts merged (and compared strictly) in each collection
    for c, tree in chosen.items():
      named += [(c, "encoder")] if "encoder" in tree else []
      named += [(c, "decoder", block) for block in tree.get("decoder", {})]
    copied = sorted(mapping.flatten(chosen))
    if not any(p.startswith("params/encoder") for p in copied):
      raise ValueError("init_from: the pre-training run has no backbone encoder parameters.")
    merged = base.merge_variables(
        variables,
        chosen,
        strict=True,
        parts=named,
        source=f"init_from={self.opts.init_from} (backbone encoder, decoder blocks "
        f"1-{self.decoder_blocks})",
        model=f"config.model {self.config.model.get('name')}",
        hint="Pre-train and fine-tune the same config.model (width, depth, input channels).",
        limit=4,
    )
    logging.info(
        "init_from: copied %d arrays (encoder and decoder blocks 1-%d): %s",
        len(copied),
        self.decoder_blocks,
        ", ".join(sorted({"/".join(p.split("/")[:3]) for p in copied})),
    )
    return merged
