"""Supervised restoration: a pixel loss between net(lq) and gt, optionally from a DCPT run.

The loss is L1 (DCPT's fine-tuning, `pixel_loss="l1"`) or NAFNet's PSNR loss
(`pixel_loss="psnr"`, `restoration_common.psnr_loss`).

`config.method.init_from` names a run (workdir, checkpoints/ or checkpoints/<step>/) of
`dcpt`, `maskdcpt` or `restoration`; its backbone parameters are loaded, every key
must match (the classifier of a pre-training run is dropped).
"""

from __future__ import annotations

import json

from etils import epath
import jax.numpy as jnp

from jaxmilab import config_options
from jaxmilab import registry
from jaxmilab.methods import base
from jaxmilab.methods import restoration_common

# Every config.method key of restoration (config_lib fills the missing ones; read as self.opts).
CONFIG_DEFAULTS = dict(
    init_from="",  # a dcpt / maskdcpt / restoration run whose backbone starts this one
    zero_init_output=False,  # zero the last conv at init (identity start;
    # restoration_common.zero_output_conv) and after loading a run that did not train it
    # (MaskDCPT spark)
    zero_output_after_init_from=False,  # zero the loaded output conv too, whatever the run trained:
    # fine-tuning starts from the identity with the pre-trained body
    float_metrics=False,  # PSNR/SSIM on float images instead of uint8-rounded ones
    pixel_loss="l1",  # "l1" | "psnr" (NAFNet's PSNRLoss; restoration_common.psnr_loss)
)


def run_config(path: str) -> dict | None:
  """The config.json of the run that `path` (a workdir, its checkpoints/ or checkpoints/<step>/)
  belongs to, or None (an official weights file, or a run without one)."""
  p = epath.Path(path)
  for folder in (p, p.parent, p.parent.parent):
    candidate = folder / "config.json"
    try:
      if candidate.exists():
        return json.loads(candidate.read_text())
    except (OSError, ValueError):
      return None
  return None


def output_conv_is_residual_head(init_from: str) -> bool:
  """False when init_from is a MaskDCPT run whose reconstruction did not train the backbone's
  output conv as a residual head (maskdcpt.NON_RESIDUAL_HEADS); True otherwise."""
  config = run_config(init_from) if init_from else None
  method = (config or {}).get("method") or {}
  if method.get("name") != "maskdcpt":
    return True
  from jaxmilab.methods import maskdcpt  # pylint: disable=g-import-not-at-top

  return method.get("reconstruction", "backbone") not in maskdcpt.NON_RESIDUAL_HEADS


class Method(base.Method):
  """Plain supervised restoration with a pixel loss (L1 or PSNR)."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = config_options.options(config.method, CONFIG_DEFAULTS, component="restoration")
    self.backbone = registry.get_model(config.model.name)(config.model)
    if self.opts.pixel_loss not in restoration_common.PIXEL_LOSSES:
      raise config_options.ConfigError(
          f"config.method.pixel_loss={self.opts.pixel_loss!r}: use one of "
          f"{tuple(restoration_common.PIXEL_LOSSES)}."
      )

  def init_variables(self, rng, batch):
    params = self.backbone.init(rng, batch["lq"])["params"]
    if self.opts.zero_init_output:
      params = restoration_common.zero_output_conv(params)
    return {"params": {"backbone": params}}

  def loss(self, params, model_state, batch, rng):
    del rng
    restored = self.backbone.apply({"params": params["backbone"]}, batch["lq"])
    name = self.opts.pixel_loss
    loss = restoration_common.PIXEL_LOSSES[name](restored, batch["gt"])
    return loss, ({"l1" if name == "l1" else "psnr_loss": loss}, model_state)

  def eval_step(self, params, model_state, batch):
    restored = self.backbone.apply({"params": params["backbone"]}, batch["lq"])
    return {"restored": restored.astype(jnp.float32)}

  def evaluator(self):
    return restoration_common.evaluator(self)

  def init_from(self, variables, loaded):
    fresh = variables["params"]["backbone"]
    source = loaded.get("params", {}).get("backbone")
    if source is None:
      raise ValueError(
          "init_from: the checkpoint has no params/backbone; it must come from a "
          "dcpt, maskdcpt or restoration run of the same model."
      )
    backbone = base.merge_variables(
        fresh,
        source,
        strict=True,
        source=f"init_from={self.opts.init_from} (params/backbone)",
        model=f"config.model {self.config.model.get('name')}, {self.config.model.get('preset')}",
        hint="Pre-train and fine-tune the same config.model (name and preset).",
    )
    if (
        self.opts.zero_output_after_init_from
        or "recon_head" in loaded["params"]
        or not output_conv_is_residual_head(self.opts.init_from)
    ):
      # A MaskDCPT run did not train the backbone's output conv as the residual head this run
      # uses: "spark" never trained it (its own head reconstructed), and the released
      # whole-network masking ("backbone") trains it without the global residual, to output the
      # image itself (methods/maskdcpt.py). Keep the pre-trained body, start the head at zero
      # (the identity). A dcpt or dense_decoder run trained it as a residual head, and it is kept
      # unless zero_output_after_init_from asks for the identity start anyway.
      backbone = restoration_common.zero_output_conv(backbone)
    out = dict(variables)
    out["params"] = dict(variables["params"], backbone=backbone)
    return out
