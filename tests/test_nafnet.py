"""NAFNet against a PyTorch transcription of the official architecture, plus config checks.

The reference (tests/torch_reference/nafnet.py) follows megvii-research/NAFNet
basicsr/models/archs/NAFNet_arch.py (NAFBlock, LayerNorm2d, SimpleGate, check_image_size zero
padding, global residual); decoder features are the stage outputs that MILab-PKU/dcpt hooks for
its classifier.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab.convert import mapping
from jaxmilab.models import nafnet
from tests import torch_reference


def _torch_to_flax(state_dict) -> dict:
  """Official PyTorch keys -> flax params by jaxmilab.convert.mapping (the rule documented in
  jaxmilab/models/nafnet.py; tests/test_convert.py checks it on checkpoint files too)."""
  params, _ = mapping.convert_state_dict({k: v.detach().numpy() for k, v in state_dict.items()})
  return jax.tree.map(jnp.asarray, params)


def _check_same_tree(ours, converted):
  shapes = lambda t: {
      jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(t)
  }
  assert shapes(ours) == shapes(converted)


def _parity(preset, shape):
  """Runs the torch and flax models with the same weights; returns both outputs."""
  torch = pytest.importorskip("torch")
  cfg = nafnet.PRESETS[preset]
  # randomize: the default init leaves beta / gamma at 0 and LN at identity.
  net = torch_reference.random_net(
      "nafnet",
      width=cfg["width"],
      enc_blk_nums=cfg["enc_blocks"],
      middle_blk_num=cfg["middle_blocks"],
      dec_blk_nums=cfg["dec_blocks"],
  )
  x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)  # NCHW
  with torch.no_grad():
    y_t, feats_t = net(torch.from_numpy(x))
  model = nafnet.create({"preset": preset})
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  fresh = jax.eval_shape(model.init, jax.random.PRNGKey(0), x_nhwc)["params"]
  params = _torch_to_flax(net.state_dict())
  _check_same_tree(fresh, params)
  y, feats = jax.jit(lambda p, v: model.apply({"params": p}, v, return_decoder_features=True))(
      params, x_nhwc
  )
  # Not a degenerate case: the network adds far more than the tolerance to its input.
  assert np.abs(y_t.numpy() - x).max() > 0.1
  return (
      y_t.numpy().transpose(0, 2, 3, 1),
      [f.numpy().transpose(0, 2, 3, 1) for f in feats_t],
      np.asarray(y),
      [np.asarray(f) for f in feats],
  )


@pytest.mark.torch
def test_tiny_matches_torch_with_padding():
  # Tiny preset pads to multiples of 4: 21x27 -> 24x28.
  y_t, feats_t, y, feats = _parity("nafnet_tiny", (1, 3, 21, 27))
  assert y.shape == (1, 21, 27, 3)
  np.testing.assert_allclose(y, y_t, atol=1e-4, rtol=0)
  assert [f.shape for f in feats] == [(1, 12, 14, 16), (1, 24, 28, 8)]
  for f, f_t in zip(feats, feats_t):
    np.testing.assert_allclose(f, f_t, atol=1e-4, rtol=0)


@pytest.mark.torch
def test_small_matches_torch_and_feature_shapes():
  # Small preset (4 levels) pads to multiples of 16: 20x28 -> 32x32.
  y_t, feats_t, y, feats = _parity("nafnet_small", (1, 3, 20, 28))
  np.testing.assert_allclose(y, y_t, atol=1e-4, rtol=0)
  # Documented: feats[k] = [B, Hp/2^(L-1-k), Wp/2^(L-1-k), width*2^(L-1-k)], coarse to fine.
  assert [f.shape for f in feats] == [
      (1, 4, 4, 128),
      (1, 8, 8, 64),
      (1, 16, 16, 32),
      (1, 32, 32, 16),
  ]
  for f, f_t in zip(feats, feats_t):
    np.testing.assert_allclose(f, f_t, atol=1e-4, rtol=0)


def test_dcpt_preset_shapes_and_param_count():
  # NAFNet paper (Table / model zoo): NAFNet-GoPro-width64, enc [1,1,1,28] has 67.89M params.
  model = nafnet.create({"name": "nafnet", "preset": "nafnet_dcpt", "dtype": "bfloat16"})
  x = jnp.zeros((2, 64, 48, 3), jnp.float32)
  (y, feats), variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.PRNGKey(0), x, return_decoder_features=True)
  )
  assert y.shape == (2, 64, 48, 3) and y.dtype == jnp.float32
  assert [f.shape for f in feats] == [
      (2, 8, 6, 512),
      (2, 16, 12, 256),
      (2, 32, 24, 128),
      (2, 64, 48, 64),
  ]
  assert all(f.dtype == jnp.bfloat16 for f in feats)
  leaves = jax.tree_util.tree_leaves(variables["params"])
  assert all(p.dtype == jnp.float32 for p in leaves)
  assert round(sum(p.size for p in leaves) / 1e6, 2) == 67.89


def test_create_validates_config():
  with pytest.raises(ValueError, match="unknown key"):
    nafnet.create({"preset": "nafnet_tiny", "widht": 8})
  with pytest.raises(ValueError, match="preset"):
    nafnet.create({"preset": "nafnet_huge"})
  with pytest.raises(ValueError, match="missing"):
    nafnet.create({"width": 8})
  with pytest.raises(ValueError, match="dtype"):
    nafnet.create({"preset": "nafnet_tiny", "dtype": "float16"})
  import ml_collections  # pylint: disable=g-import-not-at-top

  config = ml_collections.ConfigDict(dict(name="nafnet", preset="nafnet_small", dtype="bfloat16"))
  config.lock()
  assert nafnet.resolve_config(config) == dict(
      width=16,
      enc_blocks=(1, 1, 1, 2),
      middle_blocks=1,
      dec_blocks=(1, 1, 1, 1),
      img_channels=3,
      layernorm_eps=1e-6,
      dtype=jnp.bfloat16,
  )
  model = nafnet.create({"preset": "nafnet_tiny", "width": 4})  # explicit keys override
  assert model.width == 4 and model.enc_blocks == (1, 1)
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 8, 8)))
