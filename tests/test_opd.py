"""OPD (issue 8): recipes against the paper's formulas, noise statistics, U-Net, data, smoke runs.

References: the OPD paper (L_E, L_A, random coupling; N2N as its special case), the official
add_noise.py noise definitions, and a PyTorch transcription of the official U-Net
(utils/network/unet_dc.py + unet_layers.py) written here.
"""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import registry
from jaxmilab import trainer
from jaxmilab.data import multiframe
from jaxmilab.data import degradations
from jaxmilab.data.base import DataInfo
from jaxmilab.methods import opd
from jaxmilab.models import unet

RECIPES = ("n2c", "n2n", "opd_rc", "opd_al")


def _method(
    recipe: str,
    *,
    alienation_weight: float = 1.0,
    has_clean: bool = True,
    width: int = 4,
    depth: int = 2,
    **method_keys,
):
  config = ml_collections.ConfigDict(
      {
          "method": {
              "name": "opd",
              "recipe": recipe,
              "alienation_weight": alienation_weight,
              **method_keys,
          },
          "model": {"name": "unet", "width": width, "depth": depth},
      }
  )
  info = DataInfo(extra={"has_clean": has_clean})
  return registry.get_method("opd")(config, info)


def _batch(seed=0, b=4, m=3, size=16, channels=3):
  rng = np.random.default_rng(seed)
  clean = rng.random((b, size, size, channels), dtype=np.float32)
  noisy = (clean[:, None] + 0.1 * rng.standard_normal((b, m, size, size, channels))).astype(
      np.float32
  )
  return {"noisy": jnp.asarray(noisy), "clean": jnp.asarray(clean)}


# ------------------------------------------------------------------------------- recipes


class _FixedPairRC(opd.Method):
  """OPD-RC with the coupling pinned to (i, j) for every sample."""

  PAIR = (0, 1)

  def draw_pairs(self, rng, batch_size, m):
    i, j = self.PAIR
    return jnp.full((batch_size,), i), jnp.full((batch_size,), j)


def _loss_and_grads(method, variables, batch, rng):
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  (loss, (metrics, new_state)), grads = jax.value_and_grad(method.loss, has_aux=True)(
      params, state, batch, rng
  )
  return loss, grads, new_state


def test_recipe_is_selected_one_way_and_bad_settings_are_refused():
  for recipe in RECIPES:
    assert _method(recipe).recipe == recipe
  for name in RECIPES:  # the recipe names are no longer registry names
    with pytest.raises(ValueError, match="Unknown method"):
      registry.get_method(name)
  with pytest.raises(ValueError, match="recipe"):
    _method("opd")
  with pytest.raises(ValueError, match="clean"):
    _method("n2c", has_clean=False)
  with pytest.raises(ValueError, match="no lower bound"):
    _method("opd_al", alienation_weight=1.0, alienation_sign="minus")
  with pytest.raises(ValueError, match="alienation_sign"):
    _method("opd_al", alienation_sign="times")
  assert (
      _method("opd_al", alienation_weight=0.9, alienation_sign="minus").alienation_sign == "minus"
  )
  with pytest.raises(ValueError, match="loss"):
    _method("n2n", loss="huber")


def test_opd_rc_with_fixed_pairing_equals_n2n():
  """N2N is OPD-RC with i=1, j=2 (the OPD paper): same loss and gradients on the same batch."""
  batch = _batch()
  n2n = _method("n2n")
  config = ml_collections.ConfigDict(
      {
          "method": {"name": "opd", "recipe": "opd_rc"},
          "model": {"name": "unet", "width": 4, "depth": 2},
      }
  )
  rc = _FixedPairRC(config, DataInfo())
  variables = n2n.init_variables(jax.random.key(0), batch)
  rng = jax.random.key(1)
  loss_n2n, grads_n2n, state_n2n = _loss_and_grads(n2n, variables, batch, rng)
  loss_rc, grads_rc, state_rc = _loss_and_grads(rc, variables, batch, rng)
  np.testing.assert_allclose(loss_rc, loss_n2n, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_rc), jax.tree.leaves(grads_n2n)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  for a, b in zip(jax.tree.leaves(state_rc), jax.tree.leaves(state_n2n)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # A different pairing is a different loss: ||f(x_3) - x_1||^2, computed here by hand.
  _FixedPairRC.PAIR = (2, 0)
  try:
    loss_31, _, _ = _loss_and_grads(rc, variables, batch, rng)
  finally:
    _FixedPairRC.PAIR = (0, 1)
  out = rc.net.apply(variables, batch["noisy"][:, 2], train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(
      loss_31, np.mean((np.asarray(out) - np.asarray(batch["noisy"][:, 0])) ** 2), rtol=1e-5
  )
  assert abs(float(loss_31) - float(loss_n2n)) > 1e-4


def test_random_coupling_is_uniform_and_may_repeat():
  rc = _method("opd_rc")
  i, j = rc.draw_pairs(jax.random.key(3), 20000, 4)
  i, j = np.asarray(i), np.asarray(j)
  np.testing.assert_allclose(np.bincount(i, minlength=4) / i.size, 0.25, atol=0.02)
  np.testing.assert_allclose(np.bincount(j, minlength=4) / j.size, 0.25, atol=0.02)
  np.testing.assert_allclose(np.mean(i == j), 0.25, atol=0.02)  # independent draws, i == j allowed


def _numpy_alienation(f, x, lam):
  """The OPD paper's L_E, L_A with double loops: per-sample (L_E, L_A); ||.||^2 = pixel mean."""
  b, m = f.shape[:2]
  totals = []
  for s in range(b):
    loss_e = sum(np.mean((f[s, j] - x[s, k]) ** 2) for j in range(m) for k in range(m) if k != j)
    loss_e /= m * (m - 1)
    loss_a = sum(np.mean((f[s, j] - f[s, k]) ** 2) for j in range(m) for k in range(j + 1, m))
    loss_a /= m * m
    totals.append((loss_e, loss_a))
  totals = np.asarray(totals, np.float64)
  return totals[:, 0], totals[:, 1]


def _calc_loss_al(output, inputs, balance):
  """numpy transcription of the released utils/loss.py `calc_loss_AL` (sum over the batch)."""
  mse = lambda a, b: np.mean((a - b) ** 2)  # nn.MSELoss(reduction="mean")
  loss_mse, loss_msa = 0.0, 0.0
  m = inputs.shape[1]
  for i in range(inputs.shape[0]):
    for j in range(m):
      for k in range(m):
        if j != k:
          loss_mse += mse(output[i][j], inputs[i][k])
        loss_msa += mse(output[i][j], output[i][k])
  return loss_mse / m / (m - 1) + balance * loss_msa / 2 / m**2


def test_alienation_terms_match_double_loops():
  rng = np.random.default_rng(0)
  f = rng.random((3, 5, 7, 6, 3))
  x = rng.random((3, 5, 7, 6, 3))
  ref_e, ref_a = _numpy_alienation(f, x, 1.0)
  loss_e, loss_a = opd.alienation_terms(jnp.asarray(f, jnp.float32), jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(loss_e, ref_e, rtol=1e-5)
  np.testing.assert_allclose(loss_a, ref_a, rtol=1e-5)
  # The generic pairwise L_E (used for the L1 / masked losses) agrees with the closed form for MSE.
  np.testing.assert_allclose(
      opd.exchange_term("mse", jnp.asarray(f), jnp.asarray(x)), ref_e, rtol=1e-5
  )


class _Affine(nn.Module):
  """f(x) = a * x + c per channel: a stand-in network whose outputs numpy can recompute."""

  @nn.compact
  def __call__(self, x, train=False):
    a = self.param("a", lambda k, s: 1.0 + 0.5 * jax.random.normal(k, s), (x.shape[-1],))
    c = self.param("c", lambda k, s: 0.1 * jax.random.normal(k, s), (x.shape[-1],))
    return x * a + c


def _affine_al(lam, **keys):
  method = _method("opd_al", alienation_weight=lam, **keys)
  method.net = _Affine()
  batch = _batch(seed=1, b=2, m=4, size=8)
  variables = method.net.init(jax.random.key(0), batch["noisy"][:, 0])
  return method, batch, variables


def test_opd_al_loss_and_gradient_match_released_calc_loss_al():
  """L = L_E + w L_A as the released calc_loss_AL (which sums over the batch: ours is its mean)."""
  lam = 0.7
  method, batch, variables = _affine_al(lam)
  x = np.asarray(batch["noisy"], np.float64)
  b = x.shape[0]
  loss_fn = lambda p: method.loss(p, {}, batch, jax.random.key(0))
  (loss, (metrics, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
  a, c = (np.asarray(variables["params"][k], np.float64) for k in ("a", "c"))
  np.testing.assert_allclose(float(loss) * b, _calc_loss_al(x * a + c, x, lam), rtol=1e-5)
  ref_e, ref_a = _numpy_alienation(x * a + c, x, lam)
  np.testing.assert_allclose(metrics["loss_e"], ref_e.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss_a"], ref_a.mean(), rtol=1e-5)
  # Gradient by central differences of the numpy transcription.
  for name, value in (("a", a), ("c", c)):
    for ch in range(3):
      step = np.zeros_like(value)
      step[ch] = 1e-4
      vary = (
          lambda d: _calc_loss_al(x * (a + d * (name == "a")) + c + d * (name == "c"), x, lam) / b
      )
      numeric = (vary(step) - vary(-step)) / 2e-4
      np.testing.assert_allclose(grads[name][ch], numeric, rtol=2e-3, atol=1e-6)


def test_opd_al_minus_option_is_the_paper_sign_and_bounded_below_for_w_under_1():
  method, batch, variables = _affine_al(0.6, alienation_sign="minus")
  loss, (metrics, _) = method.loss(variables["params"], {}, batch, jax.random.key(0))
  np.testing.assert_allclose(loss, metrics["loss_e"] - 0.6 * metrics["loss_a"], rtol=1e-6)
  # Why w >= 1 is refused: along a spread e of the outputs (sum_j e_j = 0), L_E - w L_A is
  # (1 - w) |e|^2-quadratic plus linear; at w = 1 it decreases without bound.
  rng = np.random.default_rng(3)
  x = rng.random((1, 4, 5, 5, 1))
  e = rng.standard_normal(x.shape)
  e -= e.mean(axis=1, keepdims=True)
  f0 = np.repeat(x.mean(axis=1, keepdims=True), 4, axis=1)

  def value(t, w):
    le, la = _numpy_alienation(f0 + t * e, x, w)
    return le[0] - w * la[0]

  direction = -1.0 if value(1.0, 1.0) > value(0.0, 1.0) else 1.0
  assert value(1000 * direction, 1.0) < value(100 * direction, 1.0) - 1.0 < value(0.0, 1.0) - 1.0
  assert value(100 * direction, 0.9) > value(0.0, 0.9)  # w < 1: the quadratic part wins


def test_auto_loss_is_unbiased_for_the_noise_model():
  """masked MSE for Bernoulli, L1 for impulse/text, MSE otherwise; N2C always MSE."""

  def picked(noise_name, recipe="n2n"):
    config = ml_collections.ConfigDict(
        {
            "method": {"name": "opd", "recipe": recipe, "loss": "auto"},
            "model": {"name": "unet", "width": 4, "depth": 2},
            "data": {"noise": noise_name},
        }
    )
    return registry.get_method("opd")(config, DataInfo()).pixel_loss

  assert [picked(n) for n in ("awgn", "poisson", "bernoulli", "mixed", "impulse", "text")] == [
      "mse",
      "mse",
      "masked_mse",
      "masked_mse",
      "l1",
      "l1",
  ]
  assert picked("bernoulli", "n2c") == "mse"
  # The constant c minimising each loss against Bernoulli(p=0.5) targets of a value 0.6.
  rng = np.random.default_rng(0)
  target = jnp.asarray(
      degradations.apply_noise(
          "bernoulli", np.full((1, 64, 64, 3), 0.6, np.float32)[0], rng, {"p": 0.5}
      )[None]
  )
  grid = np.linspace(0.0, 1.0, 101)
  best = {
      k: grid[
          np.argmin([float(opd.pixel_loss(k, jnp.full_like(target, c), target)[0]) for c in grid])
      ]
      for k in ("mse", "masked_mse")
  }
  assert abs(best["mse"] - 0.3) < 0.02 and abs(best["masked_mse"] - 0.6) < 0.011
  # L1 against impulse noise (30 % replaced by U[0, 1)) stays near the clean value; MSE does not.
  target = jnp.asarray(
      degradations.apply_noise(
          "impulse", np.full((64, 64, 3), 0.9, np.float32), rng, {"ratio": 0.3}
      )[None]
  )
  best = {
      k: grid[
          np.argmin([float(opd.pixel_loss(k, jnp.full_like(target, c), target)[0]) for c in grid])
      ]
      for k in ("mse", "l1")
  }
  assert abs(best["l1"] - 0.9) < 0.02 and best["mse"] < 0.8


# --------------------------------------------------------------------------------- noise


def _grey(value=0.5, size=256):
  return np.full((size, size, 3), value, np.float32)


def test_awgn_statistics():
  y = degradations.apply_noise("awgn", _grey(), np.random.default_rng(0), {"sigma": 25.0})
  n = y - 0.5
  assert abs(n.mean()) < 1e-3
  np.testing.assert_allclose(n.std(), 25.0 / 255.0, rtol=0.01)


@pytest.mark.parametrize("level", [0.2, 0.7])
def test_poisson_variance_is_mean_over_lambda(level):
  lam = 30.0
  y = degradations.apply_noise("poisson", _grey(level), np.random.default_rng(1), {"lam": lam})
  np.testing.assert_allclose(y.mean(), level, rtol=0.01)
  np.testing.assert_allclose(y.var(), level / lam, rtol=0.03)
  np.testing.assert_allclose(y * lam, np.round(y * lam), atol=1e-4)  # counts / lambda


def test_bernoulli_drops_fraction_p():
  image = np.random.default_rng(2).uniform(0.1, 1.0, (256, 256, 3)).astype(np.float32)
  y = degradations.apply_noise("bernoulli", image, np.random.default_rng(3), {"p": 0.3})
  dropped = y == 0
  np.testing.assert_allclose(dropped.mean(), 0.3, atol=0.005)
  np.testing.assert_array_equal(
      y[~dropped], image[~dropped]
  )  # multiplicative: kept values unchanged


def test_impulse_replaces_ratio_with_uniform_values():
  y = degradations.apply_noise("impulse", _grey(), np.random.default_rng(4), {"ratio": 0.2})
  changed = y != 0.5
  np.testing.assert_allclose(changed.mean(), 0.2, atol=0.005)
  np.testing.assert_allclose(y[changed].mean(), 0.5, atol=0.01)
  np.testing.assert_allclose(y[changed].var(), 1.0 / 12.0, rtol=0.03)  # U[0, 1)
  blended = degradations.apply_noise(
      "impulse", _grey(), np.random.default_rng(4), {"ratio": 0.2, "blend": True}
  )
  assert np.all(np.abs(blended - 0.5) <= 0.2 * 0.5 + 1e-6)  # official: 0.8 I + 0.2 u


def test_text_covers_some_pixels_and_leaves_others():
  image = _grey(0.5, 128)
  y = degradations.apply_noise("text", image, np.random.default_rng(5), {"coverage": 0.25})
  changed = np.any(np.abs(y - image) > 1e-6, axis=-1)
  assert 0.25 <= changed.mean() < 0.7
  # The same strings on a darker image: y = I (1 - alpha) + colour * alpha, so the opaque strokes
  # (alpha = 1) carry the text colours whatever the image, and alpha stays in [0, 1].
  dark = degradations.apply_noise(
      "text", _grey(0.1, 128), np.random.default_rng(5), {"coverage": 0.25}
  )
  alpha = 1.0 - (y - dark) / 0.4
  assert alpha.min() > -1e-4 and alpha.max() < 1 + 1e-4
  opaque = alpha.min(axis=-1) > 0.999
  assert opaque.mean() > 0.05 and y[opaque].std() > 0.05  # several colours
  np.testing.assert_allclose(y[opaque], dark[opaque], atol=1e-5)
  np.testing.assert_array_equal(
      degradations.apply_noise("text", image, np.random.default_rng(5), {"coverage": 0.0}), image
  )


def test_mixed_chain_mean_and_noise_errors():
  y = degradations.apply_noise(
      "mixed", _grey(0.5), np.random.default_rng(6), {"sigma": 10.0, "lam": 50.0, "p": 0.5}
  )
  np.testing.assert_allclose(
      (y == 0).mean(), 0.5, atol=0.01
  )  # Bernoulli last (Poisson zeros are rare)
  np.testing.assert_allclose(y.mean(), 0.25, atol=0.005)
  with pytest.raises(ValueError, match="sigmaa"):
    degradations.apply_noise("awgn", _grey(), np.random.default_rng(0), {"sigmaa": 1.0})
  with pytest.raises(ValueError, match="Available"):
    degradations.noise_model("speckle")


def test_noise_models_live_in_the_one_corruption_registry():
  """OPD's noise family is registered beside the restoration types (jaxmilab.data.degradations),
  apart from them: noise models take named parameters, degradation types discrete levels."""
  assert set(degradations.NOISE_MODELS) == {
      "awgn",
      "poisson",
      "bernoulli",
      "impulse",
      "text",
      "mixed",
  }
  assert not set(degradations.NOISE_MODELS) & set(degradations.DEGRADATIONS)
  assert [n for n in degradations.NOISE_MODELS if not degradations.is_pixelwise(n)] == ["text"]
  with pytest.raises(ValueError, match="already registered"):
    degradations.register_noise_model("awgn", lambda x, rng: x, (), True)


# --------------------------------------------------------------------------------- U-Net


def test_unet_shapes_batchnorm_and_official_size():
  model = unet.create(ml_collections.ConfigDict({"name": "unet", "width": 4, "depth": 3}))
  x = jnp.asarray(np.random.default_rng(0).random((2, 37, 45, 3), np.float32))  # odd sizes
  variables = model.init(jax.random.key(0), x)
  y_train, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert y_train.shape == x.shape
  moved = [
      np.abs(a - b).max()
      for a, b in zip(
          jax.tree.leaves(updates["batch_stats"]), jax.tree.leaves(variables["batch_stats"])
      )
  ]
  assert min(moved) > 0  # every running mean / var moved towards the batch statistics
  bn = updates["batch_stats"]["down_0"]["bn_0"]["mean"]
  conv = jax.lax.conv_general_dilated(
      x,
      variables["params"]["down_0"]["conv_0"]["kernel"],
      (1, 1),
      ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  conv = conv + variables["params"]["down_0"]["conv_0"]["bias"]
  np.testing.assert_allclose(bn, 0.1 * np.asarray(conv).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  y_eval = model.apply(variables, x, train=False)
  assert y_eval.shape == x.shape and not np.allclose(y_eval, y_train)
  with pytest.raises(ValueError, match="at least 8"):
    model.init(jax.random.key(0), jnp.zeros((1, 6, 16, 3)))

  # The official U-Net (unet_dc.py, 32-64-128-256-512 + 512 bottleneck) has 14,783,203
  # parameters: conv/BN/transposed-conv sizes summed by hand below.
  def dc(i, o):
    return (9 * i * o + o) + (9 * o * o + o) + 4 * o

  ups = [(1024, 256), (512, 128), (256, 64), (128, 32), (64, 32)]
  expected = (
      dc(3, 32)
      + dc(32, 64)
      + dc(64, 128)
      + dc(128, 256)
      + dc(256, 512)
      + dc(512, 512)
      + sum(4 * (i // 2) ** 2 + i // 2 + dc(i, o) for i, o in ups)
      + 32 * 3
      + 3
  )
  full = unet.create(ml_collections.ConfigDict({"name": "unet"}))
  shapes = jax.eval_shape(lambda: full.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  assert sum(v.size for v in jax.tree.leaves(shapes["params"])) == expected == 14_783_203


def _torch_unet(width, depth, channels):
  """Own transcription of the official UNet (bilinear=False), widths width * 2**l."""
  torch = pytest.importorskip("torch")
  tnn = torch.nn
  F = torch.nn.functional

  def double_conv(i, o):
    return tnn.Sequential(
        tnn.Conv2d(i, o, 3, padding=1),
        tnn.BatchNorm2d(o),
        tnn.ReLU(),
        tnn.Conv2d(o, o, 3, padding=1),
        tnn.BatchNorm2d(o),
        tnn.ReLU(),
    )

  class Up(tnn.Module):

    def __init__(self, in_ch, out_ch):
      super().__init__()
      self.up = tnn.ConvTranspose2d(in_ch // 2, in_ch // 2, 2, stride=2)
      self.conv = double_conv(in_ch, out_ch)

    def forward(self, x1, x2):
      x1 = self.up(x1)
      dy, dx = x2.size()[2] - x1.size()[2], x2.size()[3] - x1.size()[3]
      x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
      return self.conv(torch.cat([x2, x1], dim=1))

  class UNet(tnn.Module):

    def __init__(self):
      super().__init__()
      w = [width * 2**l for l in range(depth)]
      self.inc = double_conv(channels, w[0])
      self.downs = tnn.ModuleList(
          [tnn.Sequential(tnn.MaxPool2d(2), double_conv(w[l - 1], w[l])) for l in range(1, depth)]
          + [tnn.Sequential(tnn.MaxPool2d(2), double_conv(w[-1], w[-1]))]
      )
      self.ups = tnn.ModuleList([Up(2 * w[l], w[max(l - 1, 0)]) for l in reversed(range(depth))])
      self.outc = tnn.Conv2d(w[0], channels, 1)

    def forward(self, x):
      xs = [self.inc(x)]
      for d in self.downs:
        xs.append(d(xs[-1]))
      y = xs.pop()
      for up in self.ups:
        y = up(y, xs.pop())
      return self.outc(y)

  return torch, UNet()


@pytest.mark.torch
def test_unet_matches_official_pytorch_definition():
  width, depth = 4, 3
  torch, ref = _torch_unet(width, depth, 3)
  model = unet.UNet(width=width, depth=depth)
  x = np.random.default_rng(0).random((2, 3, 27, 34), np.float32)  # odd sizes: the pad path
  t = lambda a: np.array(a.detach().numpy())  # a copy: torch updates running stats in place

  def conv(c):
    return {"kernel": t(c.weight).transpose(2, 3, 1, 0), "bias": t(c.bias)}

  def dc(seq):
    return (
        {f"conv_{i}": conv(seq[3 * i]) for i in range(2)}
        | {
            f"bn_{i}": {"scale": t(seq[3 * i + 1].weight), "bias": t(seq[3 * i + 1].bias)}
            for i in range(2)
        },
        {
            f"bn_{i}": {
                "mean": t(seq[3 * i + 1].running_mean),
                "var": t(seq[3 * i + 1].running_var),
            }
            for i in range(2)
        },
    )

  params, stats = {}, {}
  blocks = [("down_0", ref.inc)] + [(f"down_{l}", ref.downs[l - 1][1]) for l in range(1, depth)]
  blocks += [("bottleneck", ref.downs[-1][1])]
  blocks += [(f"up_{l}", ref.ups[depth - 1 - l].conv) for l in range(depth)]
  for name, seq in blocks:
    params[name], stats[name] = dc(seq)
  for l in range(depth):
    up = ref.ups[depth - 1 - l].up  # torch [I, O, kh, kw]; flax ConvTranspose = flipped kernel
    params[f"upconv_{l}"] = {
        "kernel": t(up.weight)[:, :, ::-1, ::-1].transpose(2, 3, 0, 1),
        "bias": t(up.bias),
    }
  params["out"] = conv(ref.outc)
  variables = {"params": params, "batch_stats": stats}
  xj = jnp.asarray(x.transpose(0, 2, 3, 1))
  ref.train()
  y_ref = t(ref(torch.tensor(x))).transpose(0, 2, 3, 1)  # also updates the running statistics
  y, updates = model.apply(variables, xj, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(y, y_ref, atol=2e-4, rtol=1e-4)
  ref.eval()
  np.testing.assert_allclose(
      updates["batch_stats"]["down_0"]["bn_0"]["mean"], t(ref.inc[1].running_mean), atol=1e-6
  )
  y_ref_eval = t(ref(torch.tensor(x))).transpose(0, 2, 3, 1)
  # torch updates running_var with the unbiased batch variance, flax with the biased one:
  # compare eval outputs through the torch statistics copied over.
  torch_stats = {name: dc(seq)[1] for name, seq in blocks}
  y_eval = model.apply({"params": params, "batch_stats": torch_stats}, xj, train=False)
  np.testing.assert_allclose(y_eval, y_ref_eval, atol=2e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------- data


def _data_config(**kw):
  base = {
      "name": "multiframe",
      "num_frames": 3,
      "patch_size": 32,
      "eval_size": 32,
      "eval_batch_size": 4,
  }
  base.update(kw)
  return ml_collections.ConfigDict(base)


def test_multiframe_batches_are_deterministic_and_checkpointable():
  ds = multiframe.create(_data_config(), batch_size=4, seed=0, process_index=0, process_count=1)
  assert ds.info.extra["num_frames"] == 3 and ds.info.class_names == ("embedded",)
  first = next(ds.train)
  assert first["noisy"].shape == (4, 3, 32, 32, 3) and first["noisy"].dtype == np.float32
  assert first["clean"].shape == (4, 32, 32, 3)
  residual = first["noisy"] - first["clean"][:, None]
  np.testing.assert_allclose(residual.std(), 25.0 / 255.0, rtol=0.15)  # AWGN sigma 25 by default
  np.testing.assert_allclose(
      first["noisy"] * 255, np.round(first["noisy"] * 255), atol=1e-3
  )  # 8-bit
  assert not np.allclose(first["noisy"][:, 0], first["noisy"][:, 1])  # independent frames
  state = ds.train.get_state()
  second = next(ds.train)
  again = multiframe.create(_data_config(), batch_size=4, seed=0, process_index=0, process_count=1)
  np.testing.assert_array_equal(next(again.train)["noisy"], first["noisy"])
  again.train.set_state(state)
  np.testing.assert_array_equal(next(again.train)["noisy"], second["noisy"])
  # Two processes read disjoint halves with half the batch each.
  halves = [
      next(
          multiframe.create(
              _data_config(), batch_size=4, seed=0, process_index=p, process_count=2
          ).train
      )
      for p in range(2)
  ]
  assert all(h["noisy"].shape[0] == 2 for h in halves)
  batches = list(ds.eval_batches())
  assert len(batches) == 1
  ev = batches[0]
  assert ev["noisy"].shape == (4, 3, 32, 32, 3) and ev["valid"].tolist() == [
      True,
      True,
      False,
      False,
  ]
  assert ev["label"].dtype == np.int32 and ev["height"].tolist()[:2] == [32, 32]
  np.testing.assert_array_equal(next(iter(ds.eval_batches()))["noisy"], ev["noisy"])  # fixed seeds


def test_fixed_noise_is_a_property_of_the_frame_not_of_the_crop():
  synth = multiframe.FrameSynthesizer(
      "awgn", {"sigma": 25.0}, seed=3, tile=16, clip=False, quantize=False
  )
  image = np.full((70, 90, 3), 128, np.uint8)
  a = synth.fixed(image, scene=1, frame=2, top=5, left=7, height=40, width=50)
  b = synth.fixed(image, scene=1, frame=2, top=20, left=30, height=40, width=50)
  np.testing.assert_array_equal(a[15:, 23:], b[:25, :27])  # the overlap holds the same noise
  other = synth.fixed(image, scene=1, frame=3, top=5, left=7, height=40, width=50)
  assert np.abs(a - other).mean() > 0.05  # another frame, other noise


def _write_scenes(root, num_scenes, num_frames, size, clean=True):
  rng = np.random.default_rng(0)
  for s in range(num_scenes):
    folder = os.path.join(root, f"scene_{s}")
    os.makedirs(folder)
    base = rng.integers(0, 256, (size, size), dtype=np.uint8)
    if clean:
      Image.fromarray(base).save(os.path.join(folder, "clean.png"))
    for k in range(num_frames):
      frame = np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
      Image.fromarray(frame).save(os.path.join(folder, f"frame_{k}.png"))


def test_real_frames_reader(tmp_path):
  root = str(tmp_path / "scenes")
  _write_scenes(root, 3, 4, 32, clean=False)
  config = _data_config(
      frames_root=root,
      num_frames=3,
      channels=1,
      crop="top_left",
      eval_sets={"embedded": "embedded"},
  )
  ds = multiframe.create(config, batch_size=3, seed=0, process_index=0, process_count=1)
  assert ds.info.extra["has_clean"] is False and ds.info.image_channels == 1
  batch = next(ds.train)
  assert batch["noisy"].shape == (3, 3, 32, 32, 1) and not batch["clean"].any()
  files = {
      tuple(
          np.asarray(
              Image.open(os.path.join(root, f"scene_{s}", f"frame_{k}.png")), np.float32
          ).ravel()[:8]
      )
      for s in range(3)
      for k in range(3)
  }
  got = {
      tuple(np.round(batch["noisy"][b, k, ..., 0] * 255).ravel()[:8])
      for b in range(3)
      for k in range(3)
  }
  assert got == files  # the first 3 frames (sorted) of every scene, read as they are
  with pytest.raises(ValueError, match="clean reference"):
    multiframe.create(
        _data_config(frames_root=root), batch_size=3, seed=0, process_index=0, process_count=1
    )
  with pytest.raises(Exception, match="fewer than"):
    multiframe.create(
        _data_config(frames_root=root, num_frames=5, eval_sets={"e": "embedded"}),
        batch_size=3,
        seed=0,
        process_index=0,
        process_count=1,
    )


def test_frames_with_clean_reference_hold_out_scenes(tmp_path):
  root = str(tmp_path / "scenes")
  _write_scenes(root, 4, 3, 32, clean=True)
  ds = multiframe.create(
      _data_config(frames_root=root, eval_fraction=0.25),
      batch_size=3,
      seed=0,
      process_index=0,
      process_count=1,
  )
  assert ds.info.extra["has_clean"] and ds.info.extra["num_eval"] == 1
  ev = next(iter(ds.eval_batches()))
  assert ev["valid"].sum() == 1 and ev["clean"][0].std() > 0.1
  assert np.abs(ev["noisy"][0] - ev["clean"][0][None]).max() <= 20 / 255 + 1e-6


# ---------------------------------------------------------------------------- smoke runs


@pytest.fixture(scope="module", params=RECIPES)
def smoke_run(request, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp(request.param))
  config = config_lib.load("configs/opd.py:smoke", {"method.recipe": request.param})
  trainer.train_and_evaluate(config, workdir)
  return request.param, workdir


def test_smoke_config_trains_and_writes_eval_psnr(smoke_run):
  name, workdir = smoke_run
  records = metrics_lib.read_jsonl(workdir)
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [2]
  for key in ("psnr", "ssim", "psnr_input", "ssim_input"):
    assert np.isfinite(evals[0][key]), (name, key)
  train = [r for r in records if r["split"] == "train" and "loss" in r]
  assert train and all(np.isfinite(r["loss"]) for r in train)
  assert ("loss_a" in train[-1]) == (name == "opd_al")


def _write_images(folder, sizes, seed):
  os.makedirs(folder)
  rng = np.random.default_rng(seed)
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        os.path.join(folder, f"{i}.png")
    )


def test_eval_sets_of_different_sizes_are_padded_and_scored_uncropped(tmp_path):
  _write_images(str(tmp_path / "train"), [(40, 40)] * 3, 0)
  _write_images(str(tmp_path / "a"), [(33, 40), (40, 36)], 1)
  _write_images(str(tmp_path / "b"), [(36, 36)], 2)
  config = _data_config(
      root=str(tmp_path / "train"),
      eval_size=0,
      eval_frames=2,
      eval_sets={"set_a": str(tmp_path / "a"), "set_b": str(tmp_path / "b")},
  )
  ds = multiframe.create(config, batch_size=3, seed=0, process_index=0, process_count=1)
  assert ds.info.class_names == ("set_a", "set_b") and ds.info.extra["num_eval"] == 3
  assert next(ds.train)["noisy"].shape == (3, 3, 32, 32, 3)
  ev = next(iter(ds.eval_batches()))
  assert ev["noisy"].shape == (4, 2, 40, 40, 3)
  assert ev["height"][:3].tolist() == [33, 40, 36] and ev["width"][:3].tolist() == [40, 36, 36]
  assert ev["label"][:3].tolist() == [0, 0, 1]
  original = np.asarray(Image.open(str(tmp_path / "a" / "0.png")), np.float32) / 255
  np.testing.assert_allclose(ev["clean"][0, :33], original, atol=1e-6)
  np.testing.assert_allclose(ev["clean"][0, 33], original[31], atol=1e-6)  # reflect padding
  # Scoring crops to the true size: a perfect restoration inside, garbage in the padding.
  method = _method("n2n")
  method.data_info = ds.info
  restored = ev["clean"].copy()
  restored[0, 33:] = 1.0 - restored[0, 33:]
  restored[1, :, 36:] = 0.0
  outputs = {"restored": restored}
  evaluator = method.evaluator()
  for part in (slice(0, 1), slice(1, None)):  # streamed in two batches
    evaluator.update({k: v[part] for k, v in ev.items()}, {"restored": restored[part]})
  summary = evaluator.compute()
  assert summary["psnr"] == 100.0 and summary["ssim"] == pytest.approx(1.0)
  assert 5 < summary["psnr_input"] < 100 and set(summary) >= {"psnr/set_a", "ssim_input/set_b"}
  # The same numbers as the per-image computation over the concatenated set.
  from jaxmilab.evaluation import restoration as rm

  valid = np.flatnonzero(ev["valid"])
  per = {k: [] for k in ("psnr", "ssim", "psnr_input", "ssim_input")}
  for i in valid:
    h, w = ev["height"][i], ev["width"][i]
    gt = rm.to_uint8(ev["clean"][i, :h, :w])
    for suffix, img in (("", restored[i, :h, :w]), ("_input", ev["noisy"][i, 0, :h, :w])):
      per["psnr" + suffix].append(min(rm.psnr(rm.to_uint8(img), gt), 100.0))
      per["ssim" + suffix].append(rm.ssim(rm.to_uint8(img), gt))
  for k, v in per.items():
    np.testing.assert_allclose(summary[k], np.mean(v), rtol=1e-12)
    np.testing.assert_allclose(summary[f"{k}/set_a"], np.mean(v[:2]), rtol=1e-12)
    np.testing.assert_allclose(summary[f"{k}/set_b"], np.mean(v[2:]), rtol=1e-12)
  image = evaluator.images()
  assert image.ndim == 3 and image.shape[-1] == 3
  # The picture shows the true windows only (set_a's 33 x 40, set_b's 36 x 36, cropped to the
  # smaller: 33 x 36 per tile, 2 px frame), never the reflect padding up to 40 x 40.
  assert image.shape[:2] == (2 * (33 + 4), 3 * (36 + 4))
  del outputs


def test_validation_terms_match_the_closed_form_and_brute_force_pairs():
  rng = np.random.default_rng(0)
  outputs = rng.uniform(size=(3, 4, 5, 6, 3))
  frames = rng.uniform(size=(3, 4, 5, 6, 3))
  terms = opd.validation_terms("mse", outputs, frames)
  loss_e, loss_a = opd.alienation_terms(jnp.asarray(outputs), jnp.asarray(frames))
  np.testing.assert_allclose(terms["val_pairs"], loss_e, rtol=1e-5)
  np.testing.assert_allclose(terms["val_spread"], loss_a, rtol=1e-5)
  np.testing.assert_allclose(
      terms["val_n2n"], np.mean((outputs[:, 0] - frames[:, 1]) ** 2, axis=(1, 2, 3))
  )
  # OPD-RC's criterion is the expectation of its random draw: the mean over all m^2 pairs.
  every = np.mean(
      [
          np.mean((outputs[:, i] - frames[:, j]) ** 2, axis=(1, 2, 3))
          for i in range(4)
          for j in range(4)
      ],
      axis=0,
  )
  np.testing.assert_allclose(opd.validation_loss("opd_rc", terms, 4), every, rtol=1e-12)
  np.testing.assert_allclose(
      opd.validation_loss("opd_al", terms, 4, 0.5, "minus"),
      terms["val_pairs"] - 0.5 * terms["val_spread"],
  )
  l1 = opd.validation_terms("l1", outputs, frames)
  np.testing.assert_allclose(
      l1["val_pairs"], opd.exchange_term("l1", jnp.asarray(outputs), jnp.asarray(frames)), rtol=1e-5
  )
  with pytest.raises(ValueError, match=r"\[N, m, H, W, C\]"):
    opd.validation_terms("mse", outputs[:, :1], frames[:, :1])


def test_select_step_reads_the_validation_loss_not_the_test_psnr():
  rows = [
      {"step": 10, "val_loss": 0.3, "psnr": 30.0},
      {"step": 20, "val_loss": 0.1, "psnr": 20.0},
      {"step": 30, "val_loss": 0.1, "psnr": 25.0},
      {"step": 40, "psnr": 99.0},
  ]
  assert opd.select_step(rows)["step"] == 20  # lowest val loss, earliest on ties
  with pytest.raises(ValueError, match="val_loss"):
    opd.select_step([{"step": 1, "psnr": 1.0}])


# two tiny trainings: about 20 s of CPU (minutes of wall time on a loaded machine)
@pytest.mark.slow
def test_effects_selection_never_reads_the_clean_test_set(monkeypatch):
  """Mechanism: corrupting the clean test targets changes the PSNRs, not the selected step."""
  from absl import flags
  from jaxmilab.benchmarks import opd_effects

  flag_values = flags.FlagValues()  # the benchmarks share flag names; keep absl's FLAGS clean
  opd_effects.define_flags(flag_values)
  monkeypatch.setattr(opd_effects, "FLAGS", flag_values)
  flag_values(
      [
          "opd_effects",
          "--size=16",
          "--width=4",
          "--depth=1",
          "--scenes=2",
          "--val_scenes=2",
          "--steps=6",
          "--eval_every=2",
          "--batch=2",
      ],
      known_only=True,
  )
  try:
    data = opd_effects.build_set([0], 3)
    data["test_clean"] = data["test_clean"][:4]
    data["test_noisy"] = data["test_noisy"][:4]
    rows = opd_effects.train_recipe("opd_rc", 3, data, [0])[0]
    corrupted = dict(data, test_clean=1.0 - data["test_clean"])
    rows_bad = opd_effects.train_recipe("opd_rc", 3, corrupted, [0])[0]
  finally:
    flag_values.unparse_flags()
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert [r["psnr"] for r in rows] != [r["psnr"] for r in rows_bad]
  for key in ("val_loss",) + opd.VAL_TERMS:
    np.testing.assert_allclose([r[key] for r in rows], [r[key] for r in rows_bad], rtol=1e-6)
  assert opd.select_step(rows)["step"] == opd.select_step(rows_bad)["step"]
  assert (
      opd_effects.summarize_run("opd_rc", 3, 0, rows)["selected_step"]
      == opd.select_step(rows)["step"]
  )


def test_effects_tables_print_the_control_first_and_pair_by_seed():
  """The printed tables: the control row above each comparison, differences per seed."""
  from jaxmilab.benchmarks import opd_effects

  def run(recipe, m, seed, selected, final, peak_step=100):
    evals = [{"step": 50 * (k + 1), "psnr": 0.0} for k in range(8)]
    return {
        "recipe": recipe,
        "m": m,
        "seed": seed,
        "selected_psnr": selected,
        "final_psnr": final,
        "selected_step": 100,
        "oracle_peak_step": peak_step,
        "evals": evals,
    }

  runs = [run("n2n", 2, s, 20.0 + s, 19.0 + s) for s in range(3)]
  runs += [run("n2n_fresh", 2, s, 22.0 + s + 0.1 * s, 21.0 + s, 400) for s in range(3)]
  runs += [run("opd_rc", 4, s, 19.5 + s, 19.0 + s - 0.2 * s) for s in (2, 0, 1)]
  runs += [run("opd_rc", 8, 0, 30.0, 30.0)]  # one seed: no sd, still paired
  table = opd_effects.summarize(runs)
  selected, final = table.split("PSNR at the final step")
  for part in (selected, final):
    rows = [
        line for line in part.splitlines() if line.startswith("| N2N, fresh") or "OPD-RC" in line
    ]
    assert rows[0].startswith("| N2N, fresh noise each step (control)")
    assert [r.split(" | ")[1] for r in rows[1:]] == ["4", "8"]
    assert "OPD-AL" not in part and "N2C" not in part  # recipes not run are not printed
  assert "| +2.10 (sd 0.10; +2.00..+2.20) | 3/3 | +2.00 +2.10 +2.20 |" in selected
  assert "| -0.50 (sd 0.00; -0.50..-0.50) | 0/3 | -0.50 -0.50 -0.50 |" in selected
  assert "| -0.20 (sd 0.20; -0.40..+0.00) | 0/3 | +0.00 -0.20 -0.40 |" in final
  assert "| +11.00 (sd 0.00; +11.00..+11.00) | 1/1 | +11.00 |" in final
  assert "peaks before the last step in 3/3 seeds" in table
  # The held-out tiles: every stride-th of the full, row-major list.
  every = opd_effects.test_tiles(32)
  assert every.shape == (386, 32, 32, 3)
  np.testing.assert_array_equal(opd_effects.test_tiles(32, 3), every[::3])


def test_effects_merge_refuses_runs_of_another_set_up(tmp_path):
  """--merge pools runs of one set-up (a run in two files counts once) and names a mismatch."""
  from jaxmilab.benchmarks import opd_effects

  setup = {k: 1 for k in opd_effects.SETUP_FLAGS}

  def write(name, runs, **changes):
    path = tmp_path / name
    flags = dict(setup, recipes=sorted({r["recipe"] for r in runs}), **changes)
    path.write_text(json.dumps({"flags": flags, "runs": runs}))
    return str(path)

  n2n = [{"recipe": "n2n", "m": 2, "seed": s} for s in (0, 1)]
  rc = [{"recipe": "opd_rc", "m": 4, "seed": 0}]
  a, b = write("a.json", n2n), write("b.json", n2n[1:] + rc)
  assert opd_effects.merge_runs([a, b]) == n2n + rc
  c = write("c.json", rc, learning_rate=0.003)
  with pytest.raises(
      ValueError,
      match=r"c\.json was trained with other settings than .*a\.json "
      r"\(learning_rate=0\.003 vs 1\)",
  ):
    opd_effects.merge_runs([a, c])
  with pytest.raises(ValueError, match="cannot read .*missing.json"):
    opd_effects.merge_runs([a, str(tmp_path / "missing.json")])


def test_configs_load_and_paper_schedule_is_official_steplr():
  from jaxmilab import optimizers

  for variant in ("smoke", "quickstart", "paper"):
    config = config_lib.load(f"configs/opd.py:{variant}", {"method.recipe": "opd_al"})
    assert config.model.name == "unet" and config.data.name == "multiframe"
  paper = config_lib.load("configs/opd.py:paper")
  steps_per_epoch = 704  # ceil(45,000 / 64): train.py --trainsize 0.9, --batchsize 64
  assert paper.total_steps == 300 * steps_per_epoch and paper.data.num_frames == 8
  assert paper.optimizer.name == "amsgrad" and paper.optimizer.learning_rate == 0.0072
  schedule = optimizers.create_schedule(paper.optimizer, paper.total_steps)
  for epoch in (0, 8, 9, 10, 19, 150, 299):
    # torch StepLR(step_size=10, gamma=0.5) with scheduler.step() at the start of each epoch.
    expected = 0.0072 * 0.5 ** ((epoch + 1) // 10)
    for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
      np.testing.assert_allclose(schedule(step), expected, rtol=1e-5)
