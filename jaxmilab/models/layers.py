"""Layers and array helpers shared by the backbones and heads (NHWC, flax.linen).

Nothing here imports a model: every model module imports this one (and `common` for its
config, `ushaped` for the Restormer family), never a sibling model.

Initializers follow PyTorch's defaults so that models trained from scratch here start
like the official BasicSR code: `nn.Conv2d` / `nn.Linear` draw weights and biases from
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab.kernels import platform as platform_lib

Dtype = Any
Initializer = Callable[..., jax.Array]

# PyTorch's default weight init (kaiming_uniform_, a=sqrt(5)) = U(+-1/sqrt(fan_in)),
# i.e. variance 1/(3 fan_in). flax counts fan_in of an HWIO kernel as H*W*I (I = in/groups),
# the same as PyTorch for grouped convs.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# timm `trunc_normal_(std=.02)` truncates at +-2 (absolute), i.e. +-100 sigma: a plain normal.
# DCPT's Restormer `_init_weights` and SwinIR's linear layers use it.
normal_002_init = nn.initializers.normal(0.02)


def conv_kernel_init(normal_init: bool) -> Initializer:
  """N(0, 0.02) (`normal_init`, DCPT's Restormer) or PyTorch's default conv weight init."""
  return normal_002_init if normal_init else torch_default_kernel_init


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init for a layer with `fan_in` inputs: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# ---------------------------------------------------------------------------------------------
# CPU forms of convolutions (issue #33). XLA:CPU runs a grouped (depthwise) `conv_general_dilated`
# and its gradients 10-100x slower than PyTorch, and a 1x1 conv slower than the same matmul. The
# choice is made at trace time from the platform the program is traced for: on CPU the 1x1 conv
# is a matmul and the depthwise conv k shifted multiply-adds (with a hand-written VJP of the
# same form); on every other platform `conv_general_dilated` is called exactly as flax calls it,
# so TPU / GPU programs keep their HLO (tests/test_cpu_lowering.py compares the lowered text).
# `jax.lax.platform_dependent` was tried first: it wraps even a single-platform lowering in
# `stablehlo.case` ops (and its gradient in more), so it does change the TPU / GPU text.
# The platform is `jaxmilab.kernels.platform.trace_platform()` (override, set_mesh, default).


def _shifted_taps(x: jax.Array, kh: int, kw: int, pad) -> list[jax.Array]:
  """The kh*kw shifted views of zero-padded NHWC x (stride 1), row-major over the taps."""
  (pt, pb), (pl, pr) = pad
  h_out = x.shape[1] + pt + pb - kh + 1
  w_out = x.shape[2] + pl + pr - kw + 1
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  return [xp[:, i : i + h_out, j : j + w_out, :] for i in range(kh) for j in range(kw)]


def _depthwise_shifted(x: jax.Array, w: jax.Array, pad) -> jax.Array:
  """sum_taps shift(x) * w[tap]: a stride-1 depthwise conv, w [kh, kw, 1, C]."""
  kh, kw = w.shape[:2]
  out = None
  for t, xs in enumerate(_shifted_taps(x, kh, kw, pad)):
    term = xs * w[t // kw, t % kw, 0]
    out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def depthwise_conv_cpu(x: jax.Array, w: jax.Array, pad) -> jax.Array:
  """Stride-1 depthwise conv of NHWC x with w [kh, kw, 1, C] and padding ((t, b), (l, r)), as
  shifted multiply-adds (= lax.conv_general_dilated with feature_group_count C; cross-correlation
  like every framework's conv). Its VJP is the same form: dx = the conv of the cotangent with the
  flipped kernel and the transposed padding, dw[tap] = sum over N, H, W of shift(x) * g."""
  return _depthwise_shifted(x, w, pad)


def _dw_fwd(x, w, pad):
  return _depthwise_shifted(x, w, pad), (x, w)


def _dw_bwd(pad, res, g):
  x, w = res
  kh, kw = w.shape[:2]
  (pt, pb), (pl, pr) = pad
  # Output pixel o reads input o + tap - pad; so input i receives g at i - tap + pad: a conv of
  # g with the flipped kernel, padded (kh-1-pt, kh-1-pb) x (kw-1-pl, kw-1-pr).
  dx = _depthwise_shifted(
      g, w[::-1, ::-1], ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))
  )
  dx = dx[:, : x.shape[1], : x.shape[2], :]
  c = x.shape[-1]
  g32 = g.astype(jnp.float32).reshape(-1, c)
  dw = jnp.stack(
      [
          _sum_rows(xs.astype(jnp.float32).reshape(-1, c) * g32)
          for xs in _shifted_taps(x, kh, kw, pad)
      ]
  )
  return dx.astype(x.dtype), dw.reshape(w.shape).astype(w.dtype)


def _sum_rows(v: jax.Array) -> jax.Array:
  """v [P, C] summed over P by halving (elementwise adds) down to <= 16 rows, then a reduce.

  XLA:CPU runs `jnp.sum(shift(x) * g, axis=0)` 20-30x slower than this when the shifted view
  is a slice of a padded array fused into the reduction (measured: 145 ms vs 5.8 ms for
  [8, 64, 64, 32], 9 taps); a pairwise sum is also at least as accurate."""
  while v.shape[0] > 16 and v.shape[0] % 2 == 0:
    half = v.shape[0] // 2
    v = v[:half] + v[half:]
  return jnp.sum(v, axis=0)


depthwise_conv_cpu.defvjp(_dw_fwd, _dw_bwd)


@jax.custom_vjp
def pointwise_conv_cpu(x: jax.Array, w: jax.Array) -> jax.Array:
  """A 1x1 conv of [..., C] x with w [C, F] as a matmul, x @ w, whose VJP works on [P, C] rows.

  JAX's own transpose of the dot contracts the weight gradient over N, H and W as three axes,
  which XLA:CPU lays out with extra copies; flattened to rows first, the NAFNet L1 step ran
  1.09x faster (median of 8 rounds interleaved in one process, 1.03-1.27; issue #33)."""
  return jnp.dot(x, w)


def _pw_fwd(x, w):
  return jnp.dot(x, w), (x, w)


def _pw_bwd(res, g):
  x, w = res
  dw = jnp.dot(x.reshape(-1, x.shape[-1]).T, g.reshape(-1, g.shape[-1]))
  return jnp.dot(g, w.T), dw.astype(w.dtype)


pointwise_conv_cpu.defvjp(_pw_fwd, _pw_bwd)


def _nhwc_hwio(dimension_numbers) -> bool:
  spec = jax.lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
  return dimension_numbers == spec or dimension_numbers == ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
  """`lax.conv_general_dilated` for flax's `nn.Conv(conv_general_dilated=...)`: on CPU, stride-1
  undilated 2-D NHWC 1x1 convs become a matmul and depthwise convs shifted multiply-adds
  (`depthwise_conv_cpu`); everything else, and every conv on other platforms, is the call
  itself, unchanged."""
  args = (lhs, rhs, window_strides, padding)
  kw = dict(
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
      **kwargs,
  )
  simple = (
      platform_lib.trace_platform() == "cpu"
      and lhs.ndim == 4
      and not kwargs
      and precision is None
      and tuple(window_strides) == (1, 1)
      and not isinstance(padding, str)
      and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
      and _nhwc_hwio(dimension_numbers)
      and lhs.dtype == rhs.dtype
  )
  if simple:
    pad = tuple(tuple(int(p) for p in pair) for pair in padding)
    kh, kw_, cin_g, cout = rhs.shape
    c = lhs.shape[-1]
    if feature_group_count == 1 and (kh, kw_) == (1, 1) and pad == ((0, 0), (0, 0)):
      return pointwise_conv_cpu(lhs, rhs[0, 0])  # [N, H, W, C] @ [C, F]
    if feature_group_count == c == cout and cin_g == 1:
      return depthwise_conv_cpu(lhs, rhs, pad)
  return jax.lax.conv_general_dilated(*args, **kw)


def conv2d(
    x: jax.Array,
    features: int,
    kernel_size: int,
    *,
    name: str,
    stride: int = 1,
    groups: int = 1,
    use_bias: bool = True,
    padding: int | None = None,
    dtype: Dtype = jnp.float32,
    kernel_init: Initializer = torch_default_kernel_init,
) -> jax.Array:
  """A PyTorch-style `nn.Conv2d` on NHWC input (symmetric zero padding, default (k-1)//2).

  Must be called inside a compact method; the conv becomes a submodule `name` of the caller
  (params `name/kernel` [k, k, C_in/groups, features] and `name/bias` [features]).
  """
  if padding is None:
    padding = (kernel_size - 1) // 2
  fan_in = (x.shape[-1] // groups) * kernel_size * kernel_size
  return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      feature_group_count=groups,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=kernel_init,
      bias_init=torch_default_bias_init(fan_in),
      conv_general_dilated=conv_general_dilated,
      name=name,
  )(x)


def _channel_layer_norm(x, scale, bias, eps):
  """The norm as written (what TPU / GPU trace): float32 statistics over the last axis."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  inv = jax.lax.rsqrt(var + eps)
  if bias is None:
    return x32 * inv * scale  # 'BiasFree': centred variance, uncentred numerator
  return (x32 - mean) * inv * scale + bias


# The CPU form of the norm (issue #33). Differentiated by JAX, the norm above keeps the centred
# x, its square and the broadcast statistics for the backward pass and XLA:CPU materialises each
# as a full [N, H, W, C] float32 array (the profile of the NAFNet step put the forward norms at
# ~18 % of its op time). Here the forward saves only x and the per-pixel [N, H, W, 1] mean and
# 1/std, and the backward is the closed form, one pass over x and g:
#   WithBias: y = xh * s + b, xh = (x - mu) r       dx = r (gs - mean(gs) - xh mean(gs xh))
#   BiasFree: y = x r s                             dx = r (gs - (x - mu) r^2 mean(gs x))
# with gs = g * s; ds = sum(g * xh) (BiasFree: sum(g x r)), db = sum(g) over N, H, W.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def channel_layer_norm_cpu(x, scale, bias, eps):
  """`ChannelLayerNorm`'s function (float32 result) with a closed-form VJP; bias None = BiasFree."""
  return _channel_layer_norm(x, scale, bias, eps)


def _mean_c(v):
  """Mean over the last (channel) axis as a matrix-vector product, [..., C] -> [..., 1].

  XLA:CPU turns `jnp.mean(v, -1)` over a few channels per pixel into a YNNPACK reduce fusion that
  materialises the broadcast operands around it; as a dot the NAFNet L1 step ran 1.11x faster
  (median of 8 interleaved rounds in one process, 1.01-1.20; benchmarks.train_step, issue #33)."""
  return jnp.dot(v, jnp.full((v.shape[-1], 1), 1.0 / v.shape[-1], v.dtype))


def _ln_stats(x32, eps):
  mean = _mean_c(x32)
  var = _mean_c(jnp.square(x32 - mean))
  return mean, jax.lax.rsqrt(var + eps)


def _ln_fwd(x, scale, bias, eps):
  x32 = x.astype(jnp.float32)
  mean, inv = _ln_stats(x32, eps)
  y = x32 * inv * scale if bias is None else (x32 - mean) * inv * scale + bias
  return y, (x, mean, inv, scale, bias)


def _ln_bwd(eps, res, g):
  del eps
  x, mean, inv, scale, bias = res
  c = x.shape[-1]
  g = g.astype(jnp.float32)
  x32 = x.astype(jnp.float32)
  gs = g * scale
  if bias is None:
    xr = x32 * inv  # the normalised output before the scale
    dx = inv * gs - (x32 - mean) * (inv * inv * _mean_c(gs * xr))
    dscale = _sum_rows((g * xr).reshape(-1, c))
    return dx.astype(x.dtype), dscale, None
  xh = (x32 - mean) * inv
  dx = inv * (gs - _mean_c(gs) - xh * _mean_c(gs * xh))
  dscale = _sum_rows((g * xh).reshape(-1, c))
  dbias = _sum_rows(g.reshape(-1, c))
  return dx.astype(x.dtype), dscale, dbias.astype(bias.dtype)


channel_layer_norm_cpu.defvjp(_ln_fwd, _ln_bwd)


class ChannelLayerNorm(nn.Module):
  """Restormer's LayerNorm over the channels of NHWC maps (its `to_3d` + LN + `to_4d`).

  'WithBias': (x - mean) / sqrt(var + eps) * scale + bias. 'BiasFree': x / sqrt(var + eps)
  * scale, with no mean subtraction in the numerator (var is still centred). Biased variance,
  statistics in float32. Params `scale` (torch `body.weight`) and, with bias, `bias`.
  """

  with_bias: bool
  eps: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32) if self.with_bias else None
    if platform_lib.trace_platform() == "cpu":
      return channel_layer_norm_cpu(x, scale, bias, self.eps).astype(self.dtype)
    return _channel_layer_norm(x, scale, bias, self.eps).astype(self.dtype)


class LayerNorm2d(ChannelLayerNorm):
  """LayerNorm over the channel axis of NHWC maps (= BasicSR/NAFNet `LayerNorm2d`, eps 1e-6).

  Equal to the channels-first LayerNorm of NAFNet and of the DCPT classifier: per pixel,
  (x - mean_c) / sqrt(var_c + eps) * scale + bias, biased variance, i.e. Restormer's
  'WithBias' norm. Statistics in float32. Params: `scale` (torch `weight`) and `bias`, [C].
  """

  with_bias: bool = True
  eps: float = 1e-6


def simple_gate(x: jax.Array) -> jax.Array:
  """NAFNet's SimpleGate: split channels into halves and multiply, [..., 2C] -> [..., C]."""
  if x.shape[-1] % 2:
    raise ValueError(f"simple_gate needs an even number of channels, got shape {x.shape}.")
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x1 * x2


def pad_to_multiple(x: jax.Array, multiple: int, mode: str = "constant") -> jax.Array:
  """Pads the bottom and right of [B, H, W, C] to multiples of `multiple`.

  mode "constant" (zeros) = NAFNet's `check_image_size`: `F.pad(x, (0, pad_w, 0, pad_h))`.
  mode "reflect" = `F.pad(x, (0, pad_w, 0, pad_h), 'reflect')` of the official test code
  (DCPT `pre_test`, swz30 test scripts, SwinIR `check_image_size`); torch needs pad < size,
  jnp.pad does not.
  """
  _, h, w, _ = x.shape
  pad_h = (multiple - h % multiple) % multiple
  pad_w = (multiple - w % multiple) % multiple
  if pad_h == 0 and pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def reflect_pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """`pad_to_multiple(x, multiple, "reflect")`: the padding of Restormer / PromptIR / SwinIR."""
  return pad_to_multiple(x, multiple, mode="reflect")


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """torch `nn.PixelShuffle(factor)` in NHWC: [B, H, W, C*r*r] -> [B, H*r, W*r, C].

  Channel c*r*r + i*r + j of the input goes to output pixel (h*r + i, w*r + j), channel c.
  """
  b, h, w, c = x.shape
  r = factor
  if c % (r * r):
    raise ValueError(
        f"pixel_shuffle({r}) needs channels divisible by {r * r}, got shape {x.shape}."
    )
  x = x.reshape(b, h, w, c // (r * r), r, r)  # [B, H, W, C, i, j]
  x = x.transpose(0, 1, 4, 2, 5, 3)  # [B, H, i, W, j, C]
  return x.reshape(b, h * r, w * r, c // (r * r))


def pixel_unshuffle(x: jax.Array, factor: int) -> jax.Array:
  """torch `nn.PixelUnshuffle(factor)` in NHWC: [B, H, W, C] -> [B, H/r, W/r, C*r*r].

  Output channel c*r*r + i*r + j holds input pixel (h*r + i, w*r + j), channel c.
  """
  b, h, w, c = x.shape
  r = factor
  if h % r or w % r:
    raise ValueError(f"pixel_unshuffle({r}) needs H, W divisible by {r}, got shape {x.shape}.")
  x = x.reshape(b, h // r, r, w // r, r, c)  # [B, H/r, i, W/r, j, C]
  x = x.transpose(0, 1, 3, 5, 2, 4)  # [B, H/r, W/r, C, i, j]
  return x.reshape(b, h // r, w // r, c * r * r)


@functools.lru_cache(maxsize=None)
def resize_matrix(out_size: int, in_size: int, align_corners: bool) -> np.ndarray:
  """[out, in] matrix of 1-D linear interpolation (torch F.interpolate bilinear semantics).

  align_corners=False clamps negative source coordinates to 0, as PyTorch does.
  """
  m = np.zeros((out_size, in_size), np.float64)
  for i in range(out_size):
    if align_corners:
      src = i * (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    else:
      src = max((i + 0.5) * in_size / out_size - 0.5, 0.0)
    i0 = min(int(np.floor(src)), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    t = src - i0
    m[i, i0] += 1 - t
    m[i, i1] += t
  return m.astype(np.float32)
