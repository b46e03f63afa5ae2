"""Supervised restoration: L1 between net(lq) and gt, optionally from a DCPT checkpoint.

`config.method.init_from` names a run (workdir, checkpoints/ or checkpoints/<step>/) of
`dcpt`, `maskdcpt` or `restoration`; its backbone parameters are loaded, every key
must match (the classifier of a pre-training run is dropped).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import registry
from jaxmilab.methods import base
from jaxmilab.methods import common


class Method(base.Method):
  """Plain supervised restoration with an L1 pixel loss."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.backbone = registry.get_model(config.model.name)(config.model)

  def init_variables(self, rng, batch):
    variables = self.backbone.init(rng, batch["lq"])
    return {"params": {"backbone": variables["params"]}}

  def loss(self, params, model_state, batch, rng):
    del rng
    restored = self.backbone.apply({"params": params["backbone"]}, batch["lq"])
    l1 = jnp.mean(jnp.abs(restored.astype(jnp.float32) - batch["gt"]))
    return l1, ({"l1": l1}, model_state)

  def eval_step(self, params, model_state, batch):
    restored = self.backbone.apply({"params": params["backbone"]}, batch["lq"])
    return {"restored": restored.astype(jnp.float32)}

  def summarize_eval(self, outputs):
    return common.restoration_summary(outputs, self.data_info.class_names)

  def eval_images(self, outputs):
    return common.image_grid(outputs)

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
    out = dict(variables)
    out["params"] = dict(variables["params"], backbone=base.merge_matching(fresh, source))
    return out
