"""CDSP: class-driven scribble promotion for scribble-supervised semantic segmentation (AAAI 2024).

Loss (every weight 1 in the paper; each is `config.method.<term>_weight`, 0 switches a term
off, which gives the scribble-only baseline and the ablation steps):

  L = CE(P, S, ignore 255) + CE_ls(P, Y^, eps 0.1, ignore 255) + L_LoRM + DE(P, D_s) + DE(P, D_c)

* P: the network's logits upsampled bilinearly to the label size (align_corners=True as in
  the released train.py, `method.align_corners`), softmax over classes.
* S: scribbles (class ids, 0 background, 255 unlabeled); Y^: the pseudo-label of an
  image-level WSSS method (255 ignored); CE_ls: PyTorch's label-smoothed cross-entropy
  ((1 - eps) NLL + eps mean_k(-log p_k)), mean over non-ignored pixels (0 when there is none).
* DE: `distance_entropy`; D_s, D_c: distance maps made by the data pipeline
  (jaxmilab/data/scribble_common.py).
* L_LoRM: the localization rectification module on the last trunk features, training only
  (jaxmilab/models/deeplab.py `LoRM`).
* `method.lorm_zeroes_pseudo_ignore` (default True, as released): whenever LoRM runs, the
  pseudo-label's 255 pixels (its ignore regions and the crop / rotation padding) are trained as
  background (class 0) by CE_ls. Released code: models/deeplabV3_lorm.py `LoRM.forward` starts
  with `cam[cam == 255] = 0`, in place on the tensor train.py passes as `label_pesudo_v`
  (`self.model(img_v, label_scribble_v, label_pesudo_v)`), and train.py computes the
  pseudo-label CE (ignore_index=255) on that same tensor afterwards, so nothing is ignored there.
  False = the paper's reading (255 ignored by CE_ls with or without LoRM). Without LoRM
  (`lorm_weight = 0`, the released model types without LoRM) 255 is ignored either way.

Evaluation: class probabilities (single scale for smoke / quickstart; the released
multi-scale sliding-window protocol for `paper`, jaxmilab/evaluation/segmentation_inference.py),
argmax, mIoU from one confusion matrix over the eval set (jaxmilab.evaluation.segmentation),
streamed by `jaxmilab.evaluation.segmentation.CDSPEvaluator`.

Batches: train {"image" uint8 [B, H, W, 3], "scribble" uint8 [B, H, W], "pseudo" uint8,
"dist_scribble" float32, "dist_contour" float32}; eval {"image", "gt" uint8 (255 = ignore),
"valid"}.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import config_options
from jaxmilab import registry
from jaxmilab.evaluation import segmentation
from jaxmilab.evaluation import segmentation_inference
from jaxmilab.methods import base
from jaxmilab.models import deeplab

IGNORE = 255
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # released train.py / evaluate.py
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CONFIG_DEFAULTS = dict(
    init_from="",
    scribble_weight=1.0,
    pseudo_weight=1.0,
    label_smoothing=0.1,
    scribble_entropy_weight=1.0,
    contour_entropy_weight=1.0,
    lorm_weight=1.0,
    align_corners=True,
    lorm_zeroes_pseudo_ignore=True,
    eval_scales=(1.0,),
    eval_flip=False,
    eval_crop_size=0,
    eval_stride_rate=2 / 3,
    eval_images=4,
)


# --------------------------------------------------------------------------------- the losses


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE,
) -> jax.Array:
  """torch.nn.CrossEntropyLoss(ignore_index, label_smoothing) on [B, H, W, K] logits (mean)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0).astype(jnp.int32)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  per_pixel = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)


def _distance_entropy(plogp: jax.Array, dist: jax.Array) -> jax.Array:
  weighted = dist.astype(jnp.float32) * jnp.sum(plogp, axis=-1)  # D(x) sum_k p_k log p_k
  count = jnp.count_nonzero(weighted)
  return -jnp.sum(weighted) / jnp.maximum(count, 1).astype(jnp.float32)


def distance_entropy(probs: jax.Array, dist: jax.Array) -> jax.Array:
  """-sum_x D(x) sum_k p_k log p_k / #{x : D(x) H(x) != 0}, over every pixel of the batch.

  probs [B, H, W, K] softmax probabilities, dist [B, H, W] >= 0; 0 log 0 = 0 (with a zero
  gradient there); 0 when no pixel counts. (Released loss.py `DistanceMapMinEntropy`.)
  """
  probs = probs.astype(jnp.float32)
  positive = probs > 0
  plogp = jnp.where(positive, probs * jnp.log(jnp.where(positive, probs, 1.0)), 0.0)
  return _distance_entropy(plogp, dist)


def distance_entropy_from_logits(logits: jax.Array, dist: jax.Array) -> jax.Array:
  """`distance_entropy(softmax(logits), dist)` computed stably from logits."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return _distance_entropy(jnp.exp(logp) * logp, dist)


def pseudo_label_target(pseudo: jax.Array, zero_ignore: bool) -> jax.Array:
  """The pseudo-label CE_ls trains on: 255 -> 0 when `zero_ignore` (the released LoRM's in-place
  `cam[cam == 255] = 0`, module docstring), else unchanged (255 ignored)."""
  return jnp.where(pseudo == IGNORE, 0, pseudo).astype(pseudo.dtype) if zero_ignore else pseudo


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 RGB -> ImageNet-normalised float32 (the released code's mean / std)."""
  return (images.astype(jnp.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


# ----------------------------------------------------------------------------------- method


class Method(base.Method):
  """CDSP training on DeepLab (config.model.name = "deeplab")."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = config_options.options(config.method, CONFIG_DEFAULTS, component="cdsp")
    if data_info.num_classes < 2:
      raise ValueError(
          f"cdsp needs a segmentation dataset with >= 2 classes; config.data.name="
          f"{config.data.name!r} gives {data_info.num_classes}."
      )
    model_cfg = dict(config.model)
    model_cfg["num_classes"] = data_info.num_classes
    if float(self.opts.lorm_weight) <= 0:  # no LoRM loss: the model needs no LoRM layer
      model_cfg["lorm"] = False
    self.model = registry.get_model(config.model.name)(model_cfg)
    self.num_classes = data_info.num_classes

  def init_variables(self, rng, batch):
    x = preprocess(batch["image"])
    return dict(self.model.init({"params": rng, "dropout": rng}, x, train=False))

  def loss(self, params, model_state, batch, rng):
    o = self.opts
    x = preprocess(batch["image"])
    use_lorm = float(o["lorm_weight"]) > 0
    out, new_state = self.model.apply(
        {"params": params, **model_state},
        x,
        train=True,
        lorm_fg=batch["pseudo"] if use_lorm else None,
        rngs={"dropout": rng},
        mutable=list(model_state),
    )
    size = batch["scribble"].shape[1:3]
    logits = deeplab.resize_bilinear(out["logits"], size, align_corners=bool(o["align_corners"]))
    pseudo = pseudo_label_target(batch["pseudo"], use_lorm and bool(o["lorm_zeroes_pseudo_ignore"]))
    terms = {
        "ce_scribble": cross_entropy(logits, batch["scribble"]),
        "ce_pseudo": cross_entropy(logits, pseudo, label_smoothing=float(o["label_smoothing"])),
        "de_scribble": distance_entropy_from_logits(logits, batch["dist_scribble"]),
        "de_contour": distance_entropy_from_logits(logits, batch["dist_contour"]),
    }
    weights = {
        "ce_scribble": o["scribble_weight"],
        "ce_pseudo": o["pseudo_weight"],
        "de_scribble": o["scribble_entropy_weight"],
        "de_contour": o["contour_entropy_weight"],
    }
    if use_lorm:
      terms["lorm"] = out["lorm_loss"]
      weights["lorm"] = o["lorm_weight"]
    total = sum(float(weights[k]) * v for k, v in terms.items() if float(weights[k]) != 0.0)
    labelled = batch["scribble"] != IGNORE
    correct = (jnp.argmax(logits, -1) == batch["scribble"]) & labelled
    metrics = dict(terms, scribble_accuracy=jnp.sum(correct) / jnp.maximum(jnp.sum(labelled), 1))
    return total, (metrics, dict(new_state))

  def probabilities(self, params, model_state, images: jax.Array) -> jax.Array:
    """[B, H, W, K] class probabilities with the configured inference protocol."""
    align = bool(self.opts["align_corners"])

    def net(x):
      logits = self.model.apply({"params": params, **model_state}, x, train=False)["logits"]
      return jax.nn.softmax(
          deeplab.resize_bilinear(logits, x.shape[1:3], align_corners=align), axis=-1
      )

    o = self.opts
    return segmentation_inference.predict_probs(
        net,
        preprocess(images),
        scales=tuple(float(s) for s in o["eval_scales"]),
        flip=bool(o["eval_flip"]),
        crop_size=int(o["eval_crop_size"]),
        stride_rate=float(o["eval_stride_rate"]),
    )

  def eval_step(self, params, model_state, batch):
    probs = self.probabilities(params, model_state, batch["image"])
    return {"pred": jnp.argmax(probs, axis=-1).astype(jnp.int32)}

  def evaluator(self) -> segmentation.CDSPEvaluator:
    return segmentation.CDSPEvaluator(self.num_classes, IGNORE, int(self.opts["eval_images"]))

  def init_from(self, variables, loaded):
    """A torchvision ResNet or released-CDSP `.pth` (strict), or a jaxmilab run (matching arrays).

    A `.pth` goes through `deeplab.variables_from_torch_params`; every file weight must fit the
    model (path and shape) and every trunk weight of the model must be in the file, the whole
    model when the file has a head; otherwise one line names the first differences (e.g. a
    ResNet-50 file for depth 101).
    """
    tree = loaded.get("params", {}).get("backbone", {})
    if not _from_torch_file(tree):
      # A jaxmilab run: the trainer refuses a merge that kept nothing.
      return base.merge_variables(variables, loaded)
    from_file = deeplab.variables_from_torch_params(tree)
    has_head = any(k != "backbone" for collection in from_file.values() for k in collection)
    return base.merge_variables(
        variables,
        from_file,
        strict=True,
        parts=None if has_head else [(c, "backbone") for c in from_file],
        source=f"config.method.init_from={self.opts.init_from or '<PyTorch file>'}",
        model=f"config.model {self.config.model.get('name')}",
        hint="The PyTorch file does not fit config.model (arch / depth / preset).",
        limit=4,
    )


def _from_torch_file(tree: Any) -> bool:
  """A PyTorch state dict as jaxmilab.convert reads a .pth (BN running stats still in params)."""
  return (
      isinstance(tree, Mapping)
      and "layer1_0" in tree
      and isinstance(tree.get("bn1"), Mapping)
      and "running_mean" in tree["bn1"]
  )
