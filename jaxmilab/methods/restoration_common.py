"""Pieces shared by the restoration recipes (dcpt, restoration, maskdcpt)."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import registry
from jaxmilab.evaluation import restoration as restoration_metrics

# The backbones' last convolution (image out) by parameter name: NAFNet `ending`, SwinIR
# `conv_last`, Restormer / PromptIR / TEAFormer `output` (official state-dict names).
OUTPUT_CONVS = ("ending", "conv_last", "output")


def restoration_backbone(config, data_info, method: str):
  """config.model's restoration network, for a method that classifies degradations too
  (dcpt, maskdcpt): refuses data with fewer than 2 degradation types."""
  if data_info.num_classes < 2:
    raise ValueError(
        f"{method} needs at least 2 degradation types; config.data gives {data_info.num_classes}."
    )
  return registry.get_model(config.model.name)(config.model)


def zero_output_conv(backbone_params: dict) -> dict:
  """Zeroes the kernel and bias of the backbone's last convolution.

  Every backbone adds its input back (global residual), so with a zero last conv the
  untrained network is the identity and its restored PSNR starts at the input's: training
  can only move it from there (the "zero-init the last layer of a residual branch" rule of
  Goyal et al. 2017 applied to the whole network). The official DCPT/NAFNet code keeps
  PyTorch's default init, so configs enable this with `config.method.zero_init_output`
  (True for the CPU quickstarts, False for `paper`).
  """
  found = [k for k in OUTPUT_CONVS if k in backbone_params]
  if len(found) != 1:
    raise ValueError(
        f"zero_init_output: expected exactly one of {OUTPUT_CONVS} among the "
        f"backbone's top-level parameters, found {sorted(backbone_params)}."
    )
  out = dict(backbone_params)
  out[found[0]] = jax.tree_util.tree_map(jnp.zeros_like, backbone_params[found[0]])
  return out


def l1_loss(restored: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error in float32 (DCPT's L_pix, MaskDCPT's reconstruction loss)."""
  return jnp.mean(jnp.abs(restored.astype(jnp.float32) - target))


def psnr_loss(restored: jax.Array, target: jax.Array, eps: float = 1e-8) -> jax.Array:
  """NAFNet's PSNRLoss: mean over images of 10 log10(MSE_image + eps), in dB (lower is better).

  megvii-research/NAFNet basicsr/models/losses/losses.py `PSNRLoss` (scale 10 / ln 10, MSE
  over (C, H, W) per image, +1e-8 inside the log, mean over the batch), the pixel loss of its
  GoPro and SIDD options (options/train/GoPro/NAFNet-width64.yml `pixel_opt: PSNRLoss`). Each
  image's gradient is scaled by 1 / its MSE, so a mildly degraded image (blur, JPEG at ~30
  dB) weighs as much as a heavily degraded one, where L1 lets the large errors dominate.
  """
  diff = restored.astype(jnp.float32) - target.astype(jnp.float32)
  mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
  return jnp.mean(10.0 / np.log(10.0) * jnp.log(mse + eps))


# `config.method.pixel_loss` of restoration: name -> loss(restored, target).
PIXEL_LOSSES = {"l1": l1_loss, "psnr": psnr_loss}


def evaluator(method, *, with_accuracy: bool = False) -> restoration_metrics.RestorationEvaluator:
  """The streaming evaluator of a restoration method (per-type PSNR / SSIM[, accuracy]).

  `method.opts.float_metrics` (config.method.float_metrics, declared by each restoration
  method) scores float images instead of uint8-rounded ones
  (jaxmilab.evaluation.restoration.per_image_scores)."""
  return restoration_metrics.RestorationEvaluator(
      method.data_info.class_names,
      with_accuracy=with_accuracy,
      float_images=bool(method.opts.float_metrics),
  )
