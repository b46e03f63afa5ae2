"""Supervised restoration: a pixel loss between net(lq) and gt, optionally from a DCPT run.

The loss is L1 (DCPT's fine-tuning, `pixel_loss="l1"`) or NAFNet's PSNR loss
(`pixel_loss="psnr"`, `common.psnr_loss`).

`config.method.init_from` names a run (workdir, checkpoints/ or checkpoints/<step>/) of
`dcpt`, `maskdcpt` or `restoration`; its backbone parameters are loaded, every key
must match (the classifier of a pre-training run is dropped).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import config_options
from jaxmilab import registry
from jaxmilab.methods import base
from jaxmilab.methods import common

# Every config.method key of restoration (config_lib fills the missing ones; read as self.opts).
CONFIG_DEFAULTS = dict(
    init_from="",              # a dcpt / maskdcpt / restoration run whose backbone starts this one
    zero_init_output=False,    # zero the last conv at init (identity start; common.zero_output_conv)
                               # and after loading a run that did not train it (MaskDCPT spark)
    zero_output_after_init_from=False,  # zero the loaded output conv too, whatever the run trained:
                               # fine-tuning starts from the identity with the pre-trained body
    float_metrics=False,       # PSNR/SSIM on float images instead of uint8-rounded ones
    pixel_loss="l1",           # "l1" | "psnr" (NAFNet's PSNRLoss; common.psnr_loss)
)


class Method(base.Method):
  """Plain supervised restoration with a pixel loss (L1 or PSNR)."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = config_options.options(config.method, CONFIG_DEFAULTS, component="restoration")
    self.backbone = registry.get_model(config.model.name)(config.model)
    if self.opts.pixel_loss not in common.PIXEL_LOSSES:
      raise config_options.ConfigError(
          f"config.method.pixel_loss={self.opts.pixel_loss!r}: use one of "
          f"{tuple(common.PIXEL_LOSSES)}.")

  def init_variables(self, rng, batch):
    params = self.backbone.init(rng, batch["lq"])["params"]
    if self.opts.zero_init_output:
      params = common.zero_output_conv(params)
    return {"params": {"backbone": params}}

  def loss(self, params, model_state, batch, rng):
    del rng
    restored = self.backbone.apply({"params": params["backbone"]}, batch["lq"])
    name = self.opts.pixel_loss
    loss = common.PIXEL_LOSSES[name](restored, batch["gt"])
    return loss, ({"l1" if name == "l1" else "psnr_loss": loss}, model_state)

  def eval_step(self, params, model_state, batch):
    restored = self.backbone.apply({"params": params["backbone"]}, batch["lq"])
    return {"restored": restored.astype(jnp.float32)}

  def evaluator(self):
    return common.evaluator(self)

  def init_from(self, variables, loaded):
    fresh = variables["params"]["backbone"]
    source = loaded.get("params", {}).get("backbone")
    if source is None:
      raise ValueError("init_from: the checkpoint has no params/backbone; it must come from a "
                       "dcpt, maskdcpt or restoration run of the same model.")
    flat_fresh = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(fresh)}
    flat_src = {jax.tree_util.keystr(p): np.shape(x) for p, x in jax.tree_util.tree_leaves_with_path(source)}
    missing = sorted(set(flat_fresh) - set(flat_src))
    unexpected = sorted(set(flat_src) - set(flat_fresh))
    wrong = sorted(k for k in set(flat_fresh) & set(flat_src) if flat_fresh[k] != flat_src[k])
    if missing or unexpected or wrong:
      raise ValueError(
          "init_from: the checkpoint's backbone does not match config.model "
          f"({self.config.model.get('name')}). Missing: {missing[:10]}; unexpected: {unexpected[:10]}; "
          f"shape mismatch: {[(k, flat_src[k], flat_fresh[k]) for k in wrong[:10]]}.")
    backbone = base.merge_matching(fresh, source)
    if ((self.opts.zero_init_output and "recon_head" in loaded["params"])
        or self.opts.zero_output_after_init_from):
      # A MaskDCPT "spark" run never trained the backbone's output conv (its own head
      # reconstructed): keep the pre-trained body, start the head at zero (identity). A dcpt or
      # MaskDCPT "backbone" run trained it, and it is kept unless zero_output_after_init_from
      # asks for the identity start anyway (measured: README, "the pre-training effect").
      backbone = common.zero_output_conv(backbone)
    out = dict(variables)
    out["params"] = dict(variables["params"], backbone=backbone)
    return out
