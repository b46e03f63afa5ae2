"""Restormer, PromptIR and SwinIR (official and DCPT variants) against PyTorch transcriptions.

The references are tests/torch_reference/archs.py, transcribed from the official files
(swz30/Restormer, va1shn9v/PromptIR, JingyunLiang/SwinIR, MILab-PKU/dcpt) with the official
module names, so their state dicts have the official keys. Weights are random with every
LayerNorm, bias, temperature and position-bias table moved away from its init
(`torch_reference.randomize`), copied into flax params by jaxmilab.convert.mapping (the rule
each module docstring states), and both sides run an input whose size is not a multiple of the
padding unit, padded the way the official pipeline pads (DCPT's `pre_test`, or SwinIR's
`check_image_size` in forward).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab.convert import mapping
from jaxmilab.models import promptir
from jaxmilab.models import restormer
from jaxmilab.models import swinir
from tests import torch_reference
from tests.torch_reference import archs as torch_archs

_MODULES = {"restormer": restormer, "promptir": promptir, "swinir": swinir}
_U_NET = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
_SWIN = dict(
    img_size=64, embed_dim=12, depths=[2, 2], num_heads=[2, 2], window_size=4, mlp_ratio=2.0
)
# flax preset -> (torch network, its constructor arguments, torch-side reflect padding unit
# (None: the official forward pads itself), NCHW input shape).
CASES = {
    "restormer_tiny": ("restormer", _U_NET, 8, (2, 3, 21, 13)),
    "restormer_dcpt_tiny": ("restormer_dcpt", _U_NET, 8, (2, 3, 21, 13)),
    "promptir_tiny": (
        "promptir",
        dict(_U_NET, prompt_dims=(4, 8, 16), prompt_len=3, prompt_sizes=(10, 4, 3)),
        8,
        (2, 3, 21, 13),
    ),
    "swinir_tiny": ("swinir", _SWIN, None, (2, 3, 13, 10)),
    "swinir_dcpt_tiny": ("swinir_dcpt", _SWIN, 4, (2, 3, 13, 10)),
}


def _model(preset: str):
  return _MODULES[preset.split("_")[0]].create({"preset": preset})


def _torch_to_flax(state_dict) -> dict:
  """Official PyTorch keys -> flax params by jaxmilab.convert.mapping (the rule each module
  docstring states; tests/test_convert.py checks it on checkpoint files too)."""
  params, _ = mapping.convert_state_dict({k: v.detach().numpy() for k, v in state_dict.items()})
  return jax.tree.map(jnp.asarray, params)


def _shapes(tree) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in leaves}


@pytest.fixture(scope="module", params=list(CASES))
def parity(request):
  """(preset, torch output, torch features, flax output, flax features), NHWC numpy."""
  torch = pytest.importorskip("torch")
  preset = request.param
  name, kwargs, pad, shape = CASES[preset]
  torch.manual_seed(0)
  net = torch_archs.build(name, **kwargs).eval()
  torch_reference.randomize(net)
  x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
  with torch.no_grad():
    xt = torch.from_numpy(x)
    xt = torch_archs.reflect_pad(xt, pad) if pad else xt
    y_t, feats_t = net(xt, return_decoder_features=True)
  h, w = shape[2:]
  y_t = y_t[:, :, :h, :w].numpy().transpose(0, 2, 3, 1)
  feats_t = [f.numpy().transpose(0, 2, 3, 1) for f in feats_t]

  model = _model(preset)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  params = _torch_to_flax(net.state_dict())
  expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), x_nhwc)["params"]
  assert _shapes(params) == _shapes(expected)
  apply = jax.jit(lambda p, v: model.apply({"params": p}, v, return_decoder_features=True))
  y, feats = apply(params, x_nhwc)
  # Not a degenerate case: the network changes its input by far more than the tolerance.
  assert np.abs(y_t - x.transpose(0, 2, 3, 1)).max() > 0.05
  return preset, y_t, feats_t, np.asarray(y), [np.asarray(f) for f in feats]


@pytest.mark.torch
def test_output_matches_torch(parity):
  preset, y_t, _, y, _ = parity
  assert y.shape == y_t.shape, preset
  np.testing.assert_allclose(y, y_t, atol=1e-4, rtol=0, err_msg=preset)


@pytest.mark.torch
def test_decoder_features_match_torch(parity):
  preset, _, feats_t, _, feats = parity
  assert [f.shape for f in feats] == [f.shape for f in feats_t], preset
  for f, f_t in zip(feats, feats_t):
    np.testing.assert_allclose(f, f_t, atol=1e-4, rtol=0, err_msg=preset)


@pytest.mark.torch
def test_bilinear_resize_matches_torch():
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).normal(size=(2, 3, 7, 10)).astype(np.float32)  # NCHW
  for size in ((7, 10), (12, 8), (3, 2), (9, 23), (5, 5)):
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size, mode="bilinear")
    got = promptir.resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), *size)
    np.testing.assert_allclose(np.asarray(got), ref.numpy().transpose(0, 2, 3, 1), atol=1e-5)


# --------------------------------------------------------------------------------------------
# Shapes and configs (no torch, no compile).


@pytest.mark.parametrize(
    "preset,expected",
    [
        # Documented: 21x13 pads to 24x16; [4d @ /4, 2d @ /2, 2d @ 1] with dim 8.
        ("restormer_tiny", [(2, 6, 4, 32), (2, 12, 8, 16), (2, 24, 16, 16)]),
        ("promptir_tiny", [(2, 6, 4, 32), (2, 12, 8, 16), (2, 24, 16, 16)]),
        # 21x13 pads to 24x16 (window 4); outputs of the last len(depths) - len(depths)//2 RSTBs.
        ("swinir_tiny", [(2, 24, 16, 12)]),
    ],
)
def test_decoder_feature_shapes(preset, expected):
  model = _model(preset)
  x = jnp.zeros((2, 21, 13, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  y, feats = jax.eval_shape(
      lambda v, a: model.apply(v, a, return_decoder_features=True), variables, x
  )
  assert y.shape == x.shape
  assert [f.shape for f in feats] == expected


def test_swinir_full_preset_has_three_decoder_features_and_official_size():
  model = swinir.create({"preset": "swinir"})
  x = jnp.zeros((1, 20, 20, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  _, feats = jax.eval_shape(
      lambda v, a: model.apply(v, a, return_decoder_features=True), variables, x
  )
  assert [f.shape for f in feats] == [(1, 24, 24, 180)] * 3
  # Hand count, E = 180, 36 blocks: LN 4E, qkv E*3E+3E, proj E*E+E, bias table 15*15*6,
  # fc1 E*2E+2E, fc2 2E*E+E; 6 RSTB convs 9E*E+E; conv_first 27E+E; patch/final LN 4E;
  # conv_after_body 9E*E+E; conv_last 9E*3+3.
  e = 180
  block = 4 * e + 3 * e * e + 3 * e + e * e + e + 225 * 6 + 2 * e * e + 2 * e + 2 * e * e + e
  total = 36 * block + 7 * (9 * e * e + e) + 28 * e + 4 * e + 27 * e + 3
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables))
  assert count == total


def test_dtype_bfloat16_keeps_float32_params():
  model = restormer.create({"preset": "restormer_tiny", "dtype": "bfloat16"})
  x = jnp.zeros((1, 8, 8, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  _, feats = jax.eval_shape(
      lambda v, a: model.apply(v, a, return_decoder_features=True), variables, x
  )
  assert {f.dtype for f in feats} == {jnp.dtype(jnp.bfloat16)}


def test_presets_override_and_bad_configs():
  m = restormer.create({"preset": "restormer_dcpt", "dim": 16})
  assert (m.dim, m.attention, m.layernorm_eps, m.layernorm_type) == (16, "relu", 1e-6, "BiasFree")
  assert restormer.create({"preset": "restormer"}).attention == "softmax"
  s = swinir.create({"preset": "swinir_dcpt"})
  assert (s.relative_position_bias, s.shift_mask, s.dcpt_layer_names) == (False, False, True)
  assert promptir.create({"preset": "promptir_dcpt"}).layernorm_type == "WithBias"
  with pytest.raises(ValueError, match="unknown key"):
    restormer.create({"preset": "restormer", "widht": 3})
  with pytest.raises(ValueError, match="not a swinir preset"):
    swinir.create({"preset": "swinir_large"})
  with pytest.raises(ValueError, match="heads"):
    restormer.create({"preset": "restormer_tiny", "heads": (1, 3, 2, 4)})
  with pytest.raises(ValueError, match="noise_level"):
    promptir.create({"preset": "promptir_tiny", "prompt_dims": (5, 8, 16)})
  with pytest.raises(ValueError, match="NHWC"):
    _model("swinir_tiny").init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 8, 8)))


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize(
    "preset", ["restormer", "restormer_dcpt", "promptir", "promptir_dcpt", "swinir", "swinir_dcpt"]
)
def test_official_size_matches_torch(preset):
  """The full official presets (20-40 s each on CPU) against the official-size torch nets."""
  torch = pytest.importorskip("torch")
  pad = {"restormer": 8, "promptir": 8, "swinir": None}[preset.split("_")[0]]
  if preset == "swinir_dcpt":
    pad = 8
  torch.manual_seed(0)
  net = torch_archs.build(preset).eval()
  torch_reference.randomize(net)
  shape = (1, 3, 37, 29)
  x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
  with torch.no_grad():
    xt = torch.from_numpy(x)
    y_t = net(torch_archs.reflect_pad(xt, pad) if pad else xt)[:, :, :37, :29]
  model = _model(preset)
  y = jax.jit(model.apply)(
      {"params": _torch_to_flax(net.state_dict())}, jnp.asarray(x.transpose(0, 2, 3, 1))
  )
  np.testing.assert_allclose(np.asarray(y), y_t.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------
# models/common.py: the one config path of every backbone, and apply_with_state.


def test_common_create_follows_fields_preset_and_explicit_keys():
  from jaxmilab.models import common  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from typing import Any, Sequence  # pylint: disable=g-import-not-at-top

  checked = []

  class Toy(nn.Module):
    width: int
    levels: Sequence[int] = (1, 2)
    scale: float = 1.0
    gated: bool = False
    mode: str = "a"
    dtype: Any = jnp.float32

    def check_config(self):
      checked.append(self.width)
      if self.mode not in ("a", "b"):
        raise ValueError(f"config.model.mode={self.mode!r}")

  presets = {"small": dict(width=4, levels=[3, 4], scale=2)}
  m = common.create(
      Toy,
      presets,
      {"name": "toy", "preset": "small", "width": 8.0, "gated": None, "dtype": "bfloat16"},
  )
  # explicit > preset > field default; lists become tuples, numbers the declared type.
  assert (m.width, m.levels, m.scale, m.gated, m.mode, m.dtype) == (
      8,
      (3, 4),
      2.0,
      False,
      "a",
      jnp.bfloat16,
  )
  assert isinstance(m.scale, float) and checked == [8]
  # A key set to None is "not set", even when it is not a field (another model's key).
  assert common.create(Toy, presets, {"width": 2, "enc_blocks": None}).width == 2
  assert set(common.config_defaults(Toy, unset=True, preset=None)) == {
      "preset",
      "width",
      "levels",
      "scale",
      "gated",
      "mode",
      "dtype",
  }
  for config, message in (
      ({"width": 2, "widht": 3}, r"unknown key\(s\) \['widht'\]"),
      ({"preset": "large"}, "not a toy preset"),
      ({"levels": (1,)}, r"missing \['width'\]"),
      ({"width": 2, "dtype": "float16"}, "config.model.dtype='float16'"),
      ({"width": 2.5}, "config.model.width=2.5 does not fit"),
      ({"width": 2, "levels": 3}, "config.model.levels=3 does not fit"),
      ({"width": 2, "mode": "c"}, "config.model.mode='c'"),
  ):
    with pytest.raises(ValueError, match=message):
      common.create(Toy, presets, config)


def test_common_create_converts_by_the_resolved_field_types():
  """typing.get_type_hints, not the annotation strings: tuple[int, ...], tuple[int, int] and
  Optional fields convert from config lists; a declared non-field key reaches `prepare`."""
  from jaxmilab.models import common  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Toy(nn.Module):
    sizes: tuple[int, ...] = (1,)
    pair: tuple[int, int] = (1, 1)
    rates: tuple[float, ...] | None = None

  m = common.create(Toy, None, {"sizes": [2.0, 3], "pair": [4, 5], "rates": [1, 2]})
  assert (m.sizes, m.pair, m.rates) == ((2, 3), (4, 5), (1.0, 2.0))
  assert isinstance(m.rates[0], float)
  with pytest.raises(ValueError, match=r"config.model.pair=\[1\] does not fit"):
    common.create(Toy, None, {"pair": [1]})
  # A key left at its declared value is not set; `prepare` turns a non-field key into fields.
  defaults = common.config_defaults(Toy, sizes=(), levels=2)
  assert defaults == dict(levels=2, sizes=(), pair=(1, 1), rates=None)

  def prepare(settings):
    settings["sizes"] = settings.get("sizes") or (7,) * settings.pop("levels")
    return settings

  assert common.create(Toy, None, {"sizes": ()}, defaults=defaults, prepare=prepare).sizes == (7, 7)
  assert common.create(Toy, None, {"levels": 3}, defaults=defaults, prepare=prepare).sizes == (
      7,
      7,
      7,
  )


def test_apply_with_state_updates_batch_stats_only_in_training():
  from jaxmilab.models import common  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool):
      return nn.BatchNorm(use_running_average=not train, momentum=0.5, epsilon=1e-5)(x)

  class NoState(nn.Module):

    @nn.compact
    def __call__(self, x, train: bool):
      return nn.Dropout(0.5, deterministic=not train)(x)

  net = Net()
  x = jnp.arange(8.0).reshape(4, 2) + 1.0  # column means 4, 5
  variables = net.init(jax.random.PRNGKey(0), x, train=False)
  params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
  _, new_state = common.apply_with_state(net, params, state, x, train=True)
  stats = new_state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(np.asarray(stats["mean"]), [2.0, 2.5])  # 0.5 * 0 + 0.5 * mean
  y_eval, same = common.apply_with_state(net, params, new_state, x, train=False)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), same, new_state))
  expected = (np.asarray(x) - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
  np.testing.assert_allclose(np.asarray(y_eval), expected, rtol=1e-5, atol=1e-5)
  # No state: a plain apply, {} back; rngs reach the module (dropout needs its key).
  y, empty = common.apply_with_state(
      NoState(), {}, {}, x, train=True, rngs={"dropout": jax.random.PRNGKey(1)}
  )
  assert empty == {} and set(np.unique(np.asarray(y) == 0)) == {True, False}
