"""MaskDCPT: masked degradation classification pre-training (arXiv 2510.13282).

One step, one backward pass:
  mask   = random_patch_mask(rng)              half of the p x p patches hidden per image
  r, F   = backbone(lq * mask), masked         the WHOLE network runs sparse: encoder, decoder,
                                               refinement and output conv (models/masking.py),
                                               with no global input residual
  L_cls  = focal(classifier(F, mask), type)    DCPT's classifier on the decoder maps F, reading
                                               visible positions only
  L_pix  = sum(|r - gt| * m) / (C * sum(m))    L1 over visible pixels (m = mask at pixel level)
  loss   = L_pix + cls_weight * L_cls

What is released and what is our reading. MILab-PKU/MaskDCPT releases the masked architectures
(basicsr/archs/mask_{nafnet,swinir,restormer,promptir}_arch.py) but not the training code
(README TODO: "Release the train scripts"). The released masked forwards mask the input, run a
masked LayerNorm in every block and re-mask block outputs in the encoder, the decoder and the
refinement alike (mask_nafnet_arch.py `decoder{i}(x, mask)`, mask_swinir_arch.py
`decode_layers`, `norm(x, x_size, mask)` and `conv_after_body(...) * mask`,
mask_restormer_arch.py `decoder_level*`, `refinement(.., mask)`); none has a mask token. Their
output path has no global input residual and no mean shift (mask_swinir_arch.py:
`x = self.conv_last(res)` with `(x - mean)` and `+ mean` commented out; NAFNet / Restormer /
PromptIR: `ending(x)` / `output(x)` without `+ inp`). So hidden outputs are empty and
reconstruction can only be learned at visible pixels: the L1 over visible pixels, normalised by
their count, is our reading of the unreleased loss. Hidden positions are exactly zero at every
layer here (SparK semantics); the release leaves parameter-only constants there (biases read by
its unmasked 3x3 convs), which never carry hidden input either. The classifier reading visible
positions follows the released k-NN probe (`x[mask]` of the last decoder map).

`config.method.reconstruction`:
  "backbone" (default)  the above, as released.
  "dense_decoder"  ablation (this project's earlier reading): the encoder is masked, the modules
      the backbone declares as `decoder_modules` run dense with the global residual, L1 over all
      pixels: the decoder learns to inpaint the hidden patches.
  "spark"  ablation: a light SparK-style head (masking.ReconstructionHead, mask tokens) over the
      masked backbone's decoder maps reconstructs `head(F) + lq * mask`, L1 over all pixels; the
      head is dropped after pre-training (Tian et al., ICLR 2023).

Public: `Method.forward(params, lq, mask)` runs the masked forward for a [B, H/p, W/p] patch
mask (1 = visible; None = the plain dense forward) and `Method.patch` is p.
Eval (unmasked): the pre-trained network's own dense output (for "backbone" without the global
residual, as it was trained) and the classifier; per-type PSNR/SSIM and accuracy (as dcpt).
Parameters {"backbone", "classifier"} (+ "recon_head" for "spark"); `restoration` with
`init_from` loads the backbone and, since this run did not train the output conv as a residual
head, starts that conv at zero (methods/restoration.py).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxmilab import config_options
from jaxmilab.methods import base
from jaxmilab.methods import restoration_common
from jaxmilab.models import dcpt_classifier
from jaxmilab.models import masking


def classifier_pyramid(feats: Sequence[jax.Array]) -> list[jax.Array]:
  """Decoder maps as the classifier's pyramid: maps of one resolution (SwinIR) are resized like
  the official `downsample=True` mode: in the classifier's fine-to-coarse order, map i is
  subsampled by 2**i (F.interpolate(scale_factor=1/2**i), nearest). Pyramids pass through."""
  feats = list(feats)
  sizes = {tuple(f.shape[1:3]) for f in feats}
  if len(feats) < 2 or len(sizes) > 1:
    return feats
  out = []
  for i, f in enumerate(feats[::-1]):  # fine to coarse
    s = 2**i
    out.append(f[:, ::s, ::s, :])
  return out[::-1]  # forward order again


def _all_visible(x: jax.Array) -> jax.Array:
  """[B, 1, 1] mask of ones: an unmasked forward (any image size)."""
  return jnp.ones((x.shape[0], 1, 1), jnp.float32)


RECONSTRUCTIONS = ("backbone", "dense_decoder", "spark")
# Runs whose backbone output conv was not trained as the residual head fine-tuning uses.
NON_RESIDUAL_HEADS = ("backbone", "spark")

# Every config.method key of maskdcpt (config_lib fills the missing ones; read as self.opts).
CONFIG_DEFAULTS = dict(
    focal_gamma=0.0,  # focal loss gamma; 0 and no alpha = cross-entropy
    cls_weight=1.0,  # L = L_pix + cls_weight * L_cls
    mask_ratio=masking.MASK_RATIO,  # official `mask_ratio = 0.5`; in [0, 1)
    mask_patch_size=0,  # 0 = the backbone's (masking.Maskable.mask_patch_size)
    reconstruction="backbone",  # RECONSTRUCTIONS: the release's whole-network masking; module doc
    recon_width=0,  # "spark" head width; 0 = the finest decoder map's channels
    float_metrics=False,  # PSNR/SSIM on float images instead of uint8-rounded ones
)


def visible_l1_loss(restored: jax.Array, gt: jax.Array, visible: jax.Array) -> jax.Array:
  """L1 over visible pixels: sum(|restored - gt| * m) / (C * sum(m)).

  restored, gt [B, H, W, C]; visible [B, H, W, 1] 0/1 (masking.expand of the patch mask). The
  mean is over every visible pixel of the batch (hidden pixels neither add to it nor count)."""
  m = visible.astype(jnp.float32)
  err = jnp.abs(restored.astype(jnp.float32) - gt.astype(jnp.float32)) * m
  return jnp.sum(err) / (restored.shape[-1] * jnp.maximum(jnp.sum(m), 1.0))


class Method(base.Method):
  """MaskDCPT pre-training: masked network, degradation classifier and reconstruction.

  A sibling of dcpt.Method (not a subclass): it shares the backbone, the classifier and the
  focal loss (models/dcpt_classifier.py) and the restoration evaluator
  (methods/restoration_common.py), and has one optimizer for every part (base.Method's; the
  MaskDCPT training code is not released).
  """

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = m = config_options.options(config.method, CONFIG_DEFAULTS, component="maskdcpt")
    self.backbone = restoration_common.restoration_backbone(config, data_info, "maskdcpt")
    self.gamma = float(m.focal_gamma)
    self.cls_weight = float(m.cls_weight)
    dtype = self.backbone.dtype  # the compute dtype config.model.dtype gave the backbone
    self.classifier = dcpt_classifier.DegradationClassifier(
        num_classes=data_info.num_classes, dtype=dtype
    )
    self.recon_head = masking.ReconstructionHead(
        out_channels=data_info.image_channels, width=int(m.recon_width) or None, dtype=dtype
    )
    self.mask_ratio = float(m.mask_ratio)
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f"config.method.mask_ratio={self.mask_ratio} must be in [0, 1).")
    self.patch = int(m.mask_patch_size) or masking.mask_patch_size(self.backbone)
    self.reconstruction = m.reconstruction
    if self.reconstruction not in RECONSTRUCTIONS:
      raise ValueError(
          f"config.method.reconstruction={self.reconstruction!r}; use one of " f"{RECONSTRUCTIONS}."
      )
    # The encoder/decoder split (read once: a missing interface fails here, not in a trace).
    self.decoder_modules = (
        masking.decoder_modules(self.backbone) if self.reconstruction == "dense_decoder" else ()
    )
    # Released output path (no global residual) for the default; the ablations keep it.
    self.residual = self.reconstruction != "backbone"

  def _grid(self, x: jax.Array) -> tuple[int, int]:
    _, h, w, _ = x.shape
    if h % self.patch or w % self.patch:
      raise ValueError(
          f"maskdcpt: images of {h} x {w} are not multiples of the mask patch "
          f"{self.patch}; set config.data.patch_size (and eval_size) to a multiple "
          f"of it."
      )
    return h // self.patch, w // self.patch

  def init_variables(self, rng, batch):
    backbone_rng, classifier_rng, head_rng = jax.random.split(rng, 3)
    lq = batch["lq"]
    backbone = self.backbone.init(backbone_rng, lq)
    _, feats = self.backbone.apply(backbone, lq, return_decoder_features=True)
    classifier = self.classifier.init(classifier_rng, classifier_pyramid(feats))
    params = {"backbone": backbone["params"], "classifier": classifier["params"]}
    if self.reconstruction == "spark":
      head = self.recon_head.init(head_rng, feats, _all_visible(lq))["params"]
      # Zero last conv: the head starts as "restored = lq * mask" (no random residual).
      params["recon_head"] = dict(head, out=jax.tree_util.tree_map(jnp.zeros_like, head["out"]))
    return {"params": params}

  def forward(self, params, lq, mask=None):
    """(restored [B, H, W, C] float32, logits [B, N] float32); with a [B, H/p, W/p] patch mask
    (1 = visible) the masked pre-training forward, without it the plain dense (eval) forward."""
    variables = {"params": params["backbone"]}
    h, w = lq.shape[1:3]
    run = lambda x: self.backbone.apply(
        variables, x, return_decoder_features=True, residual=self.residual
    )
    if mask is None:
      restored, feats = run(lq)
      visible = _all_visible(lq)
      classifier_mask = None
    else:
      visible = mask
      with masking.patch_masking(mask, (h, w), unmasked=self.decoder_modules):
        restored, feats = run(lq * masking.expand(mask, h, w).astype(lq.dtype))
      # The dense decoder's maps are dense: its classifier reads every position.
      classifier_mask = None if self.decoder_modules else mask
    logits = self.classifier.apply(
        {"params": params["classifier"]}, classifier_pyramid(feats), classifier_mask
    )
    if self.reconstruction == "spark":
      residual = self.recon_head.apply({"params": params["recon_head"]}, feats, visible)
      restored = residual[:, :h, :w, :] + lq * masking.expand(visible, h, w)
    return restored.astype(jnp.float32), logits.astype(jnp.float32)

  def loss(self, params, model_state, batch, rng):
    lq = batch["lq"]
    mask = masking.random_patch_mask(rng, lq.shape[0], self._grid(lq), self.mask_ratio)
    # The trainer pins activations to the batch axes (sharding.batch_sharded_activations).
    restored, logits = self.forward(params, lq, mask)
    if self.reconstruction == "backbone":
      h, w = lq.shape[1:3]
      l_pix = visible_l1_loss(restored, batch["gt"], masking.expand(mask, h, w))
    else:
      l_pix = restoration_common.l1_loss(restored, batch["gt"])
    l_cls = dcpt_classifier.focal_loss(logits, batch["label"], gamma=self.gamma)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    loss = l_pix + self.cls_weight * l_cls
    return loss, ({"l_pix": l_pix, "l_cls": l_cls, "accuracy": accuracy}, model_state)

  def eval_step(self, params, model_state, batch):
    restored, logits = self.forward(params, batch["lq"])
    return {"restored": restored, "pred": jnp.argmax(logits, -1)}

  def evaluator(self):
    return restoration_common.evaluator(self, with_accuracy=True)
