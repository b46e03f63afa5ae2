"""Every (method, backbone) pair trains: 3 optimizer steps with finite loss and gradient norm
and a loss that moves; gradients (not only outputs) match the PyTorch transcriptions.

The training matrix is restoration / dcpt / maskdcpt x NAFNet, SwinIR, Restormer, PromptIR,
TEAFormer (official and DCPT presets). One compiled step per case on 16 px batches of two; the
default suite runs a representative subset (one per method, covering the Restormer-family
norm that once had a NaN gradient at 0) and the full matrix is `slow`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmilab import registry
from jaxmilab.configs import dcpt as dcpt_config
from jaxmilab.data.base import DataInfo

BACKBONES = {  # preset -> model name
    "nafnet_tiny": "nafnet",
    "swinir_tiny": "swinir",
    "swinir_dcpt_tiny": "swinir",
    "restormer_tiny": "restormer",
    "restormer_dcpt_tiny": "restormer",
    "promptir_tiny": "promptir",
    "promptir_dcpt_tiny": "promptir",
    "teaformer_tiny": "teaformer",
}
METHODS = ("restoration", "dcpt", "maskdcpt", "maskdcpt:spark")  # maskdcpt's two reconstructions
# Default suite: a masked SwinIR (window attention under the mask); the Restormer-family NaN
# gradient (L2 norm at 0) is guarded in the default suite by test_gradients_match_torch
# [restormer_dcpt_tiny]; the rest of the matrix (dcpt x restormer_dcpt_tiny included) is slow.
DEFAULT = {("maskdcpt", "swinir_dcpt_tiny")}
CASES = [
    pytest.param(m, b, marks=() if (m, b) in DEFAULT else pytest.mark.slow)
    for m in METHODS
    for b in BACKBONES
    if m != "maskdcpt:spark" or b in ("nafnet_tiny", "swinir_dcpt_tiny")
]
TYPES = ("noise", "blur", "haze")


def _config(method: str, preset: str, zero_init: bool):
  c = dcpt_config.get_config("smoke")
  method, _, reconstruction = method.partition(":")
  c.method.name = method
  if method == "restoration":
    del c.method.focal_gamma, c.method.cls_weight, c.method.mode, c.method.classifier_learning_rate
    c.method.zero_init_output = zero_init
  if method == "maskdcpt":
    del c.method.mode, c.method.classifier_learning_rate  # dcpt's: MaskDCPT is its pretrain step
    c.method.mask_ratio = 0.5
    # 16 px images: NAFNet-tiny's own patch (16) would leave a 1 x 1 grid; 8 divides its stride.
    c.method.mask_patch_size = 8 if BACKBONES[preset] == "nafnet" else 0
    c.method.recon_width = 0
    c.method.reconstruction = reconstruction or "backbone"
  c.model.name = BACKBONES[preset]
  c.model.preset = preset
  if preset == "teaformer_tiny":
    c.model.implementation = "xla"
  return c


def _batch(seed=0, n=2, size=16):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32)
  lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
  return {
      "lq": jnp.asarray(lq),
      "gt": jnp.asarray(gt),
      "label": jnp.arange(n, dtype=jnp.int32) % len(TYPES),
  }


def train_three_steps(method_name: str, preset: str, zero_init: bool = False):
  """(losses [3], grad norms [3]) of three Adam steps of `method_name` on one fixed batch."""
  config = _config(method_name, preset, zero_init)
  method = registry.get_method(config.method.name)(
      config, DataInfo(num_classes=len(TYPES), class_names=TYPES)
  )
  batch = _batch(size=32 if preset.startswith("teaformer") else 16)  # TEA windows need 32 px
  params = method.init_variables(jax.random.key(0), batch)["params"]
  tx = optax.adam(1e-3)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, _), grads = jax.value_and_grad(method.loss, has_aux=True)(params, {}, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)

  opt_state = tx.init(params)
  losses, norms = [], []
  for i in range(3):
    params, opt_state, loss, norm = step(params, opt_state, jax.random.key(i))
    losses.append(float(loss))
    norms.append(float(norm))
  return np.array(losses), np.array(norms)


@pytest.mark.parametrize("method_name,preset", CASES)
def test_three_steps_finite_and_moving(method_name, preset):
  losses, norms = train_three_steps(method_name, preset)
  assert np.isfinite(losses).all() and np.isfinite(norms).all(), (losses, norms)
  assert (norms > 0).all(), norms
  assert abs(losses[-1] - losses[0]) > 1e-5, losses


def test_zero_init_output_starts_as_identity():
  """zero_init_output: the untrained restorer returns its input (L1 = the input's L1)."""
  config = _config("restoration", "restormer_tiny", zero_init=True)
  method = registry.get_method("restoration")(config, DataInfo(num_classes=3, class_names=TYPES))
  batch = _batch()
  params = method.init_variables(jax.random.key(0), batch)["params"]
  out = method.eval_step(params, {}, batch)["restored"]
  np.testing.assert_allclose(out, batch["lq"], atol=1e-6)
  assert not np.allclose(params["backbone"]["encoder_level1_0"]["attn"]["qkv"]["kernel"], 0)


# ------------------------------------------------------------------ gradient parity with torch
# Gradients of sum(y * r) (r fixed random) with respect to every parameter and to the input,
# through the PyTorch transcriptions (tests/test_backbones.py and tests/test_nafnet.py set up
# the networks and the state-dict -> flax mapping; gradients map like the weights).

GRAD_CASES = [
    pytest.param(p, marks=() if p == "restormer_dcpt_tiny" else pytest.mark.slow)
    for p in (
        "restormer_tiny",
        "restormer_dcpt_tiny",
        "promptir_tiny",
        "swinir_tiny",
        "swinir_dcpt_tiny",
        "nafnet_tiny",
    )
]


def _torch_case(preset):
  """(torch net, input NCHW, torch pad unit or None, flax model, state-dict -> flax mapping)."""
  from tests import test_backbones as tb  # pylint: disable=g-import-not-at-top
  from tests import test_nafnet as tn  # pylint: disable=g-import-not-at-top
  from tests import torch_reference  # pylint: disable=g-import-not-at-top

  pytest.importorskip("torch")
  if preset == "nafnet_tiny":
    from jaxmilab.models import nafnet  # pylint: disable=g-import-not-at-top

    cfg = nafnet.PRESETS[preset]
    net = torch_reference.random_net(
        "nafnet",
        width=cfg["width"],
        enc_blk_nums=cfg["enc_blocks"],
        middle_blk_num=cfg["middle_blocks"],
        dec_blk_nums=cfg["dec_blocks"],
    )
    shape, pad, model, mapping = (
        (2, 3, 12, 20),
        None,
        nafnet.create({"preset": preset}),
        tn._torch_to_flax,
    )
  else:
    name, kwargs, pad, shape = tb.CASES[preset]
    net = torch_reference.random_net(name, **kwargs)
    model, mapping = tb._model(preset), tb._torch_to_flax
  return (
      net.train(),
      np.random.default_rng(1).uniform(0, 1, shape).astype(np.float32),
      pad,
      model,
      mapping,
  )


@pytest.mark.torch
@pytest.mark.parametrize("preset", GRAD_CASES)
def test_gradients_match_torch(preset):
  torch = pytest.importorskip("torch")
  from tests import test_backbones as tb  # pylint: disable=g-import-not-at-top

  net, x, pad, model, mapping = _torch_case(preset)
  h, w = x.shape[2:]
  r = np.random.default_rng(2).normal(size=(x.shape[0], 3, h, w)).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_(True)
  y_t = net(tb.torch_archs.reflect_pad(xt, pad) if pad else xt)
  y_t = y_t[0] if isinstance(y_t, tuple) else y_t
  (y_t[:, :, :h, :w] * torch.from_numpy(r)).sum().backward()
  grads_t = mapping({k: p.grad for k, p in net.named_parameters() if p.grad is not None})
  params = mapping(dict(net.state_dict()))

  def loss(p, v):
    return jnp.sum(model.apply({"params": p}, v) * jnp.asarray(r.transpose(0, 2, 3, 1)))

  g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(
      params, jnp.asarray(x.transpose(0, 2, 3, 1))
  )
  np.testing.assert_allclose(
      np.asarray(g_x),
      xt.grad.numpy().transpose(0, 2, 3, 1),
      atol=2e-4 * float(np.abs(xt.grad.numpy()).max()),
      rtol=0,
  )
  flat_t = {
      jax.tree_util.keystr(k): np.asarray(v)
      for k, v in jax.tree_util.tree_leaves_with_path(grads_t)
  }
  flat = {
      jax.tree_util.keystr(k): np.asarray(v)
      for k, v in jax.tree_util.tree_leaves_with_path(g_params)
  }
  assert set(flat_t) <= set(flat) and len(flat_t) > 10, sorted(set(flat_t) ^ set(flat))[:5]
  for k, g_t in flat_t.items():
    assert np.isfinite(flat[k]).all(), k
    np.testing.assert_allclose(
        flat[k],
        g_t,
        atol=1e-3 * max(float(np.abs(g_t).max()), 1e-3),
        rtol=1e-3,
        err_msg=f"{preset} {k}",
    )
