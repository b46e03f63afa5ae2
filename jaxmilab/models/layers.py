"""Building blocks shared by the restoration backbones and heads (NHWC, flax.linen).

Initializers follow PyTorch's defaults so that models trained from scratch here start
like the official BasicSR code: `nn.Conv2d` / `nn.Linear` draw weights and biases from
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

# PyTorch's default weight init (kaiming_uniform_, a=sqrt(5)) = U(+-1/sqrt(fan_in)),
# i.e. variance 1/(3 fan_in). flax counts fan_in of an HWIO kernel as H*W*I (I = in/groups),
# the same as PyTorch for grouped convs.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init for a layer with `fan_in` inputs: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv2d(x: jax.Array, features: int, kernel_size: int, *, name: str, stride: int = 1,
           groups: int = 1, use_bias: bool = True, padding: int | None = None,
           dtype: Dtype = jnp.float32,
           kernel_init: Initializer = torch_default_kernel_init) -> jax.Array:
  """A PyTorch-style `nn.Conv2d` on NHWC input (symmetric zero padding, default (k-1)//2).

  Must be called inside a compact method; the conv becomes a submodule `name` of the caller
  (params `name/kernel` [k, k, C_in/groups, features] and `name/bias` [features]).
  """
  if padding is None:
    padding = (kernel_size - 1) // 2
  fan_in = (x.shape[-1] // groups) * kernel_size * kernel_size
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(stride, stride),
      padding=((padding, padding), (padding, padding)), feature_group_count=groups,
      use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
      bias_init=torch_default_bias_init(fan_in), name=name)(x)


class LayerNorm2d(nn.Module):
  """LayerNorm over the channel axis of NHWC maps (= BasicSR/NAFNet `LayerNorm2d`, eps 1e-6).

  Equal to the channels-first LayerNorm of NAFNet and of the DCPT classifier: per pixel,
  (x - mean_c) / sqrt(var_c + eps) * scale + bias, biased variance. Statistics in float32.
  Params: `scale` (torch `weight`) and `bias`, both [C] float32.
  """
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
    return y.astype(self.dtype)


def simple_gate(x: jax.Array) -> jax.Array:
  """NAFNet's SimpleGate: split channels into halves and multiply, [..., 2C] -> [..., C]."""
  if x.shape[-1] % 2:
    raise ValueError(f"simple_gate needs an even number of channels, got shape {x.shape}.")
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x1 * x2


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """Zero-pads the bottom and right of [B, H, W, C] to multiples of `multiple`.

  Same as NAFNet's `check_image_size`: `F.pad(x, (0, pad_w, 0, pad_h))` (constant 0).
  """
  _, h, w, _ = x.shape
  pad_h = (multiple - h % multiple) % multiple
  pad_w = (multiple - w % multiple) % multiple
  if pad_h == 0 and pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """torch `nn.PixelShuffle(factor)` in NHWC: [B, H, W, C*r*r] -> [B, H*r, W*r, C].

  Channel c*r*r + i*r + j of the input goes to output pixel (h*r + i, w*r + j), channel c.
  """
  b, h, w, c = x.shape
  r = factor
  if c % (r * r):
    raise ValueError(f"pixel_shuffle({r}) needs channels divisible by {r * r}, got shape {x.shape}.")
  x = x.reshape(b, h, w, c // (r * r), r, r)      # [B, H, W, C, i, j]
  x = x.transpose(0, 1, 4, 2, 5, 3)                # [B, H, i, W, j, C]
  return x.reshape(b, h * r, w * r, c // (r * r))
