"""MaskDCPT: masked degradation classification pre-training (arXiv 2510.13282).

One step, one backward pass (restoration.md; the official training code is not released):
  mask  = random_patch_mask(rng)               half of the p x p patches hidden per image
  feats = encoder(lq * mask)                   the backbone without its head, masked SparK-style
                                               after every conv / linear / norm (models/masking.py)
  L_cls = focal(classifier(feats), type)       DCPT's classifier (gamma 0 = cross-entropy)
  L_pix = |recon_head(feats, mask) + lq * mask - gt|_1   reconstruct the clean image
  loss  = L_pix + cls_weight * L_cls
"Encoder" = the backbone up to its decoder features (`return_decoder_features=True`; its own
head, e.g. NAFNet's `ending` conv, is not used). The reconstruction decoder is a light SparK-
style head (masking.ReconstructionHead: mask tokens, coarse-to-fine convs) on all decoder maps,
so coarse levels can fill the hidden 16 px patches; a conv head on the finest map alone could
only fill a patch's border. Parameters {"backbone", "classifier", "recon_head"}; `restoration`
with `init_from` loads the backbone.
Eval (unmasked): restored = recon_head(encoder(lq), all visible) + lq, the network trained to
restore; per-type PSNR/SSIM input vs restored and classifier accuracy (as dcpt).

config.method keys: focal_gamma (0), cls_weight (1), mask_ratio (0.5), mask_patch_size (0 =
the backbone's: 16 NAFNet, the window for SwinIR, 8 Restormer/PromptIR), recon_width (0 = the
finest decoder map's channels).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxmilab import sharding as sharding_lib
from jaxmilab.methods import dcpt
from jaxmilab.models import dcpt_classifier
from jaxmilab.models import masking

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def classifier_pyramid(feats: Sequence[jax.Array]) -> list[jax.Array]:
  """Decoder maps as the classifier's pyramid: maps of one resolution (SwinIR) are resized like
  the official `downsample=True` mode: in the classifier's fine-to-coarse order, map i is
  subsampled by 2**i (F.interpolate(scale_factor=1/2**i), nearest). Pyramids pass through."""
  feats = list(feats)
  sizes = {tuple(f.shape[1:3]) for f in feats}
  if len(feats) < 2 or len(sizes) > 1:
    return feats
  out = []
  for i, f in enumerate(feats[::-1]):                             # fine to coarse
    s = 2 ** i
    out.append(f[:, ::s, ::s, :])
  return out[::-1]                                                # forward order again


def _constrain_to_batch(next_fun, args, kwargs, context):
  """Interceptor: conv / norm output maps stay split over the batch axes (FSDP activations)."""
  y = next_fun(*args, **kwargs)
  if (context.method_name == "__call__" and getattr(y, "ndim", 0) == 4
      and isinstance(context.module, (nn.Conv,) + masking.NORM_TYPES)):
    y = jax.lax.with_sharding_constraint(y, P(sharding_lib.BATCH_AXES))
  return y


@contextlib.contextmanager
def batch_sharded_activations() -> Iterator[None]:
  """Pins activations to batch sharding when a mesh is set (`jax.set_mesh`), else a no-op.

  With parameters sharded over ("data", "fsdp") and no activation constraint, XLA's SPMD
  partitioner propagates the parameters' channel sharding into the activations and reshards
  them back ("involuntary full rematerialization"); FSDP wants activations split by example
  and weights all-gathered per layer.
  """
  axes = set(jax.sharding.get_abstract_mesh().axis_names)
  if not set(sharding_lib.BATCH_AXES) <= axes:
    yield
    return
  with nn.intercept_methods(_constrain_to_batch):
    yield


def _all_visible(x: jax.Array) -> jax.Array:
  """[B, 1, 1] mask of ones: an unmasked forward (any image size)."""
  return jnp.ones((x.shape[0], 1, 1), jnp.float32)


class Method(dcpt.Method):
  """MaskDCPT pre-training: masked encoder, degradation classifier and reconstruction head."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    m = config.method
    dtype = _DTYPES[config.model.get("dtype") or "float32"]
    self.classifier = dcpt_classifier.DegradationClassifier(num_classes=data_info.num_classes,
                                                            dtype=dtype)
    self.recon_head = masking.ReconstructionHead(
        out_channels=data_info.image_channels, width=int(m.get("recon_width", 0)) or None,
        dtype=dtype)
    self.mask_ratio = float(m.get("mask_ratio", masking.MASK_RATIO))
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f"config.method.mask_ratio={self.mask_ratio} must be in [0, 1).")
    self.patch = int(m.get("mask_patch_size", 0)) or masking.mask_patch_size(self.backbone)

  def _grid(self, x: jax.Array) -> tuple[int, int]:
    _, h, w, _ = x.shape
    if h % self.patch or w % self.patch:
      raise ValueError(f"maskdcpt: images of {h} x {w} are not multiples of the mask patch "
                       f"{self.patch}; set config.data.patch_size (and eval_size) to a multiple "
                       f"of it.")
    return h // self.patch, w // self.patch

  def init_variables(self, rng, batch):
    backbone_rng, classifier_rng, head_rng = jax.random.split(rng, 3)
    lq = batch["lq"]
    backbone = self.backbone.init(backbone_rng, lq)
    _, feats = self.backbone.apply(backbone, lq, return_decoder_features=True)
    classifier = self.classifier.init(classifier_rng, classifier_pyramid(feats))
    head = self.recon_head.init(head_rng, feats, _all_visible(lq))
    return {"params": {"backbone": backbone["params"], "classifier": classifier["params"],
                       "recon_head": head["params"]}}

  def encode(self, params, lq, mask=None):
    """Decoder maps of the backbone on lq; with a [B, h, w] patch mask, the masked encoder."""
    variables = {"params": params["backbone"]}
    if mask is None:
      _, feats = self.backbone.apply(variables, lq, return_decoder_features=True)
      return feats
    h, w = lq.shape[1:3]
    with masking.patch_masking(mask, (h, w)):
      _, feats = self.backbone.apply(variables, lq * masking.expand(mask, h, w).astype(lq.dtype),
                                     return_decoder_features=True)
    return feats

  def heads(self, params, lq, feats, mask):
    """(restored [B, H, W, C] float32, logits [B, N] float32) from the encoder's maps."""
    h, w = lq.shape[1:3]
    logits = self.classifier.apply({"params": params["classifier"]}, classifier_pyramid(feats))
    residual = self.recon_head.apply({"params": params["recon_head"]}, feats, mask)
    restored = residual[:, :h, :w, :].astype(jnp.float32) + lq * masking.expand(mask, h, w)
    return restored, logits.astype(jnp.float32)

  def loss(self, params, model_state, batch, rng):
    lq = batch["lq"]
    mask = masking.random_patch_mask(rng, lq.shape[0], self._grid(lq), self.mask_ratio)
    with batch_sharded_activations():
      feats = self.encode(params, lq, mask)
      restored, logits = self.heads(params, lq, feats, mask)
    l_pix = jnp.mean(jnp.abs(restored - batch["gt"]))
    l_cls = dcpt_classifier.focal_loss(logits, batch["label"], gamma=self.gamma)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    loss = l_pix + self.cls_weight * l_cls
    return loss, ({"l_pix": l_pix, "l_cls": l_cls, "accuracy": accuracy}, model_state)

  def eval_step(self, params, model_state, batch):
    lq = batch["lq"]
    restored, logits = self.heads(params, lq, self.encode(params, lq), _all_visible(lq))
    return {"restored": restored, "pred": jnp.argmax(logits, -1)}
