"""The official DCPT repository's modes (MILab-PKU/dcpt basicsr/models/): pretrain (DCPTModel),
probe (DCModel: frozen network), joint (DCTModel: L1 on lq + classification, two optimizers) and
transfer (DCDistModel: frozen classifier as an extra loss), and their separate optimizers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmilab.configs import dcpt as dcpt_config
from jaxmilab.data.base import DataInfo
from jaxmilab.methods import dcpt
from jaxmilab.models import dcpt_classifier

TYPES = ("noise", "blur", "haze")


def _method(mode, **method_keys):
  c = dcpt_config.get_config("smoke")
  c.method.mode = mode
  c.method.classifier_learning_rate = 0.0
  for k, v in method_keys.items():
    c.method[k] = v
  return dcpt.Method(c, DataInfo(num_classes=3, class_names=TYPES)), c


def _batch():
  rng = np.random.default_rng(0)
  gt = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  lq = np.clip(gt + rng.normal(0, 0.2, gt.shape), 0, 1).astype(np.float32)
  return {"lq": jnp.asarray(lq), "gt": jnp.asarray(gt), "label": jnp.array([0, 2], jnp.int32)}


def _one_step(mode, weight_decay=0.0, **method_keys):
  method, c = _method(mode, **method_keys)
  c.optimizer.weight_decay = weight_decay
  batch = _batch()
  params = method.init_variables(jax.random.key(0), batch)["params"]
  tx = method.create_optimizer(c.optimizer, 10)
  (loss, (metrics, _)), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(
      params, {}, batch, jax.random.key(1)
  )
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  return method, params, new, loss, metrics, grads, batch


def _moved(a, b):
  return max(
      float(jnp.max(jnp.abs(x - y)))
      for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
  )


def test_probe_freezes_the_network_even_with_weight_decay():
  _, params, new, loss, metrics, _, _ = _one_step("probe", weight_decay=0.1)
  assert _moved(params["backbone"], new["backbone"]) == 0.0
  assert _moved(params["classifier"], new["classifier"]) > 0.0
  assert "l_pix" not in metrics and float(loss) == pytest.approx(float(metrics["l_cls"]))


def test_transfer_freezes_the_classifier_and_its_loss_reaches_the_network():
  method, params, new, loss, metrics, grads, batch = _one_step("transfer")
  assert _moved(params["classifier"], new["classifier"]) == 0.0
  assert _moved(params["backbone"], new["backbone"]) > 0.0

  # The network's gradient is that of L1(net(lq)) + L_cls, not of L1 alone.
  def l1(bp):
    return jnp.mean(jnp.abs(method.backbone.apply({"params": bp}, batch["lq"]) - batch["gt"]))

  g_l1 = jax.grad(l1)(params["backbone"])
  assert _moved(g_l1, grads["backbone"]) > 1e-6
  assert float(loss) == pytest.approx(float(metrics["l_pix"] + metrics["l_cls"]), rel=1e-6)


def test_joint_loss_is_l1_on_lq_plus_classification():
  method, params, new, loss, metrics, _, batch = _one_step("joint")
  restored, feats = method.backbone.apply(
      {"params": params["backbone"]}, batch["lq"], return_decoder_features=True
  )
  logits = method.classifier.apply({"params": params["classifier"]}, feats)
  want = np.mean(np.abs(np.asarray(restored) - np.asarray(batch["gt"]))) + float(
      dcpt_classifier.focal_loss(logits, batch["label"], gamma=0.0)
  )
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert (
      _moved(params["backbone"], new["backbone"]) > 0
      and _moved(params["classifier"], new["classifier"]) > 0
  )


def test_pretrain_pixel_loss_is_on_the_clean_image():
  method, params, _, _, metrics, _, batch = _one_step("pretrain")
  identity = method.backbone.apply({"params": params["backbone"]}, batch["gt"])
  assert float(metrics["l_pix"]) == pytest.approx(
      float(jnp.mean(jnp.abs(identity - batch["gt"]))), rel=1e-5
  )


def test_separate_learning_rates():
  """First Adam step moves each parameter by about its group's learning rate."""
  method, c = _method("joint", classifier_learning_rate=1e-2)
  c.optimizer.learning_rate = 1e-4
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  params = method.init_variables(jax.random.key(0), _batch())["params"]
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  tx = method.create_optimizer(c.optimizer, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
      max(float(jnp.max(jnp.abs(u))) for u in jax.tree_util.tree_leaves(updates["backbone"])),
      1e-4,
      rtol=1e-3,
  )
  np.testing.assert_allclose(
      max(float(jnp.max(jnp.abs(u))) for u in jax.tree_util.tree_leaves(updates["classifier"])),
      1e-2,
      rtol=1e-3,
  )


def test_bad_mode_and_init_from_errors():
  with pytest.raises(ValueError, match="mode"):
    _method("finetune")
  method, _ = _method("probe")
  with pytest.raises(ValueError, match="params/backbone"):
    method.init_from({"params": {"backbone": {}, "classifier": {}}}, {"params": {"classifier": {}}})
