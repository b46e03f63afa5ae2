"""CPU forms of convolutions and of the channel LayerNorm (jaxmilab/models/layers.py, issue #33):
same numbers, same TPU/GPU HLO.

On CPU, `layers.conv2d` lowers 1x1 convs as a matmul (whose VJP flattens rows for the weight
gradient) and depthwise convs as shifted multiply-adds with a hand-written VJP; on TPU and GPU
it must call `lax.conv_general_dilated` exactly as flax does. The references: XLA's own convolution
(the generic form, what every platform ran before) for values and gradients, and the lowered
StableHLO text of a NAFNet train step traced for 'tpu' and 'cuda' without the hook
(= flax's default `nn.Conv`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmilab.kernels import platform as platform_lib
from jaxmilab.models import layers
from jaxmilab.models import nafnet


def _xla_conv(x, w, pad, groups):
  return jax.lax.conv_general_dilated(
      x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups
  )


@pytest.mark.parametrize(
    "k, pad",
    [(3, ((1, 1), (1, 1))), (5, ((2, 2), (2, 2))), (3, ((0, 2), (1, 0))), (2, ((0, 0), (0, 0)))],
)
def test_depthwise_cpu_form_matches_xla_conv_and_gradients(k, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  ref = _xla_conv(x, w, pad, 6)
  out = layers.depthwise_conv_cpu(x, w, pad)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  ct = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  g_ref = jax.grad(lambda x, w: jnp.sum(_xla_conv(x, w, pad, 6) * ct), (0, 1))(x, w)
  g = jax.grad(lambda x, w: jnp.sum(layers.depthwise_conv_cpu(x, w, pad) * ct), (0, 1))(x, w)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pointwise_cpu_form_matches_xla_conv_and_gradients(dtype):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 6)), dtype)
  w = jnp.asarray(rng.normal(size=(1, 1, 6, 5)), dtype)
  ct = jnp.asarray(rng.normal(size=(2, 9, 7, 5)), dtype)
  tol = dict(atol=1e-4, rtol=1e-5) if dtype == jnp.float32 else dict(atol=0.1, rtol=2e-2)
  ref = _xla_conv(x, w, ((0, 0), (0, 0)), 1)
  out = layers.pointwise_conv_cpu(x, w[0, 0])
  assert out.dtype == ref.dtype
  np.testing.assert_allclose(np.float32(out), np.float32(ref), **tol)
  f = lambda conv: jax.grad(lambda x, w: jnp.sum((conv(x, w) * ct).astype(jnp.float32)), (0, 1))
  g_ref = f(lambda x, w: _xla_conv(x, w, ((0, 0), (0, 0)), 1))(x, w)
  g = f(lambda x, w: layers.pointwise_conv_cpu(x, w[0, 0]))(x, w)
  for a, b in zip(g, g_ref):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_allclose(np.float32(a), np.float32(b), **tol)


def test_pointwise_cpu_weight_gradient_contracts_flattened_rows():
  # The point of the CPU form: the weight gradient is one [P, C]^T @ [P, F] matmul over
  # flattened rows, where JAX's transpose of the dot contracts N, H and W as three axes.
  x, w = jnp.ones((2, 4, 4, 3)), jnp.ones((3, 5))

  def weight_grad_operand_ranks(dot):
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(dot(x, w))))(w).jaxpr
    return [
        [v.aval.ndim for v in e.invars]
        for e in jaxpr.eqns
        if e.primitive.name == "dot_general" and e.outvars[0].aval.ndim == 2
    ]

  assert weight_grad_operand_ranks(layers.pointwise_conv_cpu) == [[2, 2]]
  assert weight_grad_operand_ranks(jnp.dot) == [[4, 4]]  # the old form, contracting N, H, W


class _Convs(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = layers.conv2d(x, 8, 1, name="pw")  # 1x1 -> matmul on CPU
    x = layers.conv2d(x, 8, 3, name="dw", groups=8)  # depthwise -> shifted multiply-adds
    x = layers.conv2d(x, 4, 3, name="full")  # a plain 3x3 stays XLA's conv
    return layers.conv2d(x, 4, 2, name="down", stride=2, padding=0)


def _step_text(model, variables, x, platform):
  def loss(v):
    return jnp.mean(jnp.abs(model.apply(v, x) - 0.5))

  with platform_lib.for_platform(platform):
    lowered = (
        jax.jit(jax.value_and_grad(loss)).trace(variables).lower(lowering_platforms=(platform,))
    )
  return lowered.as_text()


def test_cpu_forms_equal_xla_conv_values_and_gradients():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  model = _Convs()
  v = model.init(jax.random.key(1), x)
  res = {}
  for platform in ("generic", "cpu"):
    with platform_lib.for_platform(platform):
      res[platform] = jax.jit(jax.value_and_grad(lambda v: jnp.sum(jnp.sin(model.apply(v, x)))))(v)
  np.testing.assert_allclose(res["cpu"][0], res["generic"][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(res["cpu"][1]), jax.tree.leaves(res["generic"][1])):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


def test_cpu_lowering_has_no_grouped_conv_and_differs_from_generic():
  # Would fail if the CPU forms were never selected (the speed-up silently gone).
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
  model = nafnet.create({"preset": "nafnet_tiny"})
  v = model.init(jax.random.key(1), x)
  cpu = _step_text(model, v, x, "cpu")
  with platform_lib.for_platform("generic"):  # XLA's convolutions, lowered for CPU
    generic = (
        jax.jit(jax.grad(lambda v: jnp.mean(model.apply(v, x))))
        .trace(v)
        .lower(lowering_platforms=("cpu",))
        .as_text()
    )
  assert "feature_group_count = 16" in generic  # XLA's depthwise conv, 2 * width channels
  assert "feature_group_count = 16" not in cpu and "batch_group_count = 16" not in cpu
  assert cpu.count("stablehlo.convolution") < generic.count("stablehlo.convolution")


def _norm_before_33(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  inv = jax.lax.rsqrt(var + eps)
  if bias is not None:
    return (x32 - mean) * inv * scale + bias
  return x32 * inv * scale


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_tpu_and_gpu_lowerings_are_unchanged(platform, monkeypatch):
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 3))
  model = nafnet.create({"preset": "nafnet_tiny"})
  v = model.init(jax.random.key(1), x)
  text = _step_text(model, v, x, platform)
  # The layers before #33: flax's nn.Conv with no conv_general_dilated hook, and the norm as it
  # was written inside ChannelLayerNorm (copied here; the CPU form must never be reached).
  monkeypatch.setattr(layers, "conv_general_dilated", None)
  monkeypatch.setattr(layers, "_channel_layer_norm", _norm_before_33)
  monkeypatch.setattr(layers, "channel_layer_norm_cpu", None)
  before = _step_text(model, v, x, platform)
  assert "stablehlo.convolution" in before
  assert text == before


def test_trace_platform_follows_override_mesh_and_default():
  assert platform_lib.trace_platform() == jax.default_backend()
  with platform_lib.for_platform("tpu"):
    assert platform_lib.trace_platform() == "tpu"
  mesh = jax.make_mesh((1,), ("data",))
  with jax.set_mesh(mesh):
    assert platform_lib.trace_platform() == mesh.devices.flat[0].platform


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cpu_layer_norm_matches_the_norm_as_written_values_and_gradients(with_bias, dtype):
  rng = np.random.default_rng(0)
  # An offset mean and an uneven scale, so that the centring and the BiasFree numerator matter.
  x = jnp.asarray(rng.normal(size=(2, 5, 3, 12)) * 1.7 + 0.6, dtype)
  scale = jnp.asarray(rng.normal(size=12), jnp.float32)
  bias = jnp.asarray(rng.normal(size=12), jnp.float32) if with_bias else None
  ct = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  eps = 1e-5

  written = layers._channel_layer_norm  # pylint: disable=protected-access
  ref = written(x, scale, bias, eps)
  out = layers.channel_layer_norm_cpu(x, scale, bias, eps)
  assert out.dtype == ref.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=1e-6, rtol=1e-6)
  argnums = (0, 1, 2) if with_bias else (0, 1)

  def grads(fn):
    return jax.grad(lambda x, s, b: jnp.sum(fn(x, s, b, eps) * ct), argnums)(x, scale, bias)

  g_ref, g = grads(written), grads(layers.channel_layer_norm_cpu)
  tol = 1e-4 if dtype == jnp.float32 else 2e-2  # bf16: dx is rounded to x's dtype
  for a, b in zip(g, g_ref):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol
    )


def test_cpu_layer_norm_keeps_only_x_and_per_pixel_statistics_for_backward(capsys):
  # The mechanism of the speed-up: JAX's own VJP of the norm keeps full-size float32
  # intermediates (centred x, normalised x); the CPU form keeps x and [..., 1] statistics.
  x = jnp.ones((2, 8, 8, 16), jnp.float32) + jnp.arange(16.0)
  scale, bias = jnp.ones(16), jnp.zeros(16)
  full = "f32[2,8,8,16]"

  def saved(fn):
    jax.ad_checkpoint.print_saved_residuals(lambda x: jnp.sum(fn(x, scale, bias, 1e-6)), x)
    return capsys.readouterr().out.splitlines()

  generic = saved(layers._channel_layer_norm)  # pylint: disable=protected-access
  cpu = saved(layers.channel_layer_norm_cpu)
  assert sum(full in line for line in generic) >= 2, generic
  assert sum(full in line for line in cpu) == 1, cpu  # x itself
  assert sum("f32[2,8,8,1]" in line for line in cpu) == 2, cpu  # mean and 1 / std


def test_layer_norm_module_takes_the_cpu_form_only_on_cpu():
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 8))
  norm = layers.LayerNorm2d()
  v = norm.init(jax.random.key(1), x)
  texts = {}
  for platform in ("cpu", "tpu"):
    with platform_lib.for_platform(platform):
      texts[platform] = str(jax.make_jaxpr(norm.apply)(v, x))
  assert "custom_vjp" in texts["cpu"] and "custom_vjp" not in texts["tpu"]
