"""The modified U-Net of OPD (Jin et al., BMVC 2022 / IJCV 2023), NHWC flax.linen.

Transcribed from the official LujiaJin/One-Pot_Multi-Frame_Denoising
utils/network/unet_dc.py + unet_layers.py (`UNet(n_channels, n_classes)`, bilinear=False):

  inc   double_conv(C, 32)                         full resolution
  down  max-pool 2 + double_conv: 64, 128, 256, 512 (levels 1/2 .. 1/16)
  down5 max-pool 2 + double_conv(512, 512)         bottleneck (1/32)
  up    ConvTranspose(k 2, s 2, channels kept), zero-pad to the skip's size,
        concat [skip, up], double_conv -> 256, 128, 64, 32, 32
  outc  1x1 conv -> C (no global residual)

double_conv = (conv3x3 -> BatchNorm -> ReLU) x 2. With `width` w and `depth` d the level
widths are w * 2**l for l < d (default 32-64-128-256-512) and the bottleneck repeats the
last one. Any input size of at least 2**depth works (the official zero-pads after each
upsampling when a size is odd). BatchNorm uses batch statistics when `train=True` and
updates the "batch_stats" collection (PyTorch momentum 0.1 = flax momentum 0.9, eps 1e-5);
`train=False` uses the running averages (the official `model.eval()`).
Convs use PyTorch's default initialisation (jaxmilab.models.layers), except the biases of
the convs before a BatchNorm, which start at 0 (they have no effect there).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab.models import common
from jaxmilab.models import layers


class DoubleConv(nn.Module):
  """(conv3x3 -> BatchNorm -> ReLU) x 2 (official `double_conv`)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i in range(2):
      # The conv bias is kept (official nn.Conv2d default) but zero-initialised: BatchNorm
      # subtracts it in training (its gradient is 0), so its PyTorch-style random init would
      # only cost one more RNG kernel to compile (slow on CPU with threefry_partitionable).
      x = nn.Conv(
          self.features,
          (3, 3),
          padding=((1, 1), (1, 1)),
          dtype=self.dtype,
          param_dtype=jnp.float32,
          kernel_init=layers.torch_default_kernel_init,
          bias_init=nn.initializers.zeros,
          name=f"conv_{i}",
      )(x)
      x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.9,
          epsilon=1e-5,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          name=f"bn_{i}",
      )(x)
      x = nn.relu(x)
    return x


def _max_pool(x: jax.Array) -> jax.Array:
  """nn.MaxPool2d(2): floor of odd sizes, like PyTorch."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class UNet(nn.Module):
  """OPD's 5-level U-Net (see module doc); `out_channels=0` means as many as the input."""

  width: int = 32
  depth: int = 5
  out_channels: int = 0
  dtype: Any = jnp.float32

  def check_config(self) -> None:
    if self.width < 1 or self.depth < 1:
      raise ValueError(f"config.model.width={self.width} and depth={self.depth} must be >= 1.")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # x: [B, H, W, C]
    if x.ndim != 4:
      raise ValueError(f"UNet expects [B, H, W, C] input, got shape {x.shape}.")
    if min(x.shape[1:3]) < 2**self.depth:
      raise ValueError(
          f"UNet(depth={self.depth}) needs images of at least {2**self.depth} pixels per "
          f"side (one per max-pool), got shape {x.shape}; use larger crops or a smaller "
          f"config.model.depth."
      )
    out_channels = self.out_channels or x.shape[-1]
    widths = [self.width * 2**level for level in range(self.depth)]
    y = x.astype(self.dtype)
    skips = []
    for level, features in enumerate(widths):
      if level:
        y = _max_pool(y)
      y = DoubleConv(features, self.dtype, name=f"down_{level}")(y, train)
      skips.append(y)
    y = DoubleConv(widths[-1], self.dtype, name="bottleneck")(
        _max_pool(y), train
    )  # [B, H/2^d, W/2^d, w_last]
    for level in reversed(range(self.depth)):
      skip = skips[level]
      channels = y.shape[-1]
      # ConvTranspose2d(c, c, 2, stride=2); PyTorch's fan_in (dim 1 of its weight = c out) * 4
      # equals flax's (c in) * 4 here because in = out.
      y = nn.ConvTranspose(
          channels,
          (2, 2),
          strides=(2, 2),
          padding="VALID",
          dtype=self.dtype,
          param_dtype=jnp.float32,
          kernel_init=layers.torch_default_kernel_init,
          bias_init=layers.torch_default_bias_init(channels * 4),
          name=f"upconv_{level}",
      )(y)
      dh, dw = skip.shape[1] - y.shape[1], skip.shape[2] - y.shape[2]
      if dh or dw:  # official F.pad(x1, [dX // 2, dX - dX // 2, dY // 2, dY - dY // 2])
        y = jnp.pad(y, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)))
      y = jnp.concatenate([skip, y], axis=-1)
      y = DoubleConv(widths[max(level - 1, 0)], self.dtype, name=f"up_{level}")(y, train)
    y = layers.conv2d(y, out_channels, 1, name="out", dtype=self.dtype)
    return y.astype(jnp.float32)  # [B, H, W, out_channels]


# Every config.model key of unet: the UNet fields with their defaults (width, depth,
# out_channels 0 = the input's channels, dtype "float32" | "bfloat16"); no presets.
CONFIG_DEFAULTS = common.config_defaults(UNet)


def create(config) -> UNet:
  """UNet from config.model (CONFIG_DEFAULTS)."""
  return common.create(UNet, None, config, defaults=CONFIG_DEFAULTS)
