"""NAFNet (Chen et al., ECCV 2022), the backbone DCPT and MaskDCPT pre-train, in NHWC.

Follows megvii-research/NAFNet `basicsr/models/archs/NAFNet_arch.py` (and the identical
`NAFNetBaseline` of MILab-PKU/dcpt `basicsr/archs/nafnet_arch.py`): intro conv 3x3, encoder
stages of NAFBlocks each followed by a stride-2 conv 2x2 doubling the width, middle blocks,
decoder stages (conv 1x1 to 2C + PixelShuffle(2), add the encoder skip, NAFBlocks), ending
conv 3x3, plus the input (global residual). Inputs are zero-padded at the bottom/right to a
multiple of 2**len(enc_blocks) like the official `check_image_size`, and cropped back. (DCPT's
test code instead reflect-pads to `window_size` 16 before the network; do that outside.)
The SCA branch always pools globally: the test-time local converter (TLC, `NAFNetLocal`)
is not implemented.

Parameter names (for checkpoint converters). A PyTorch state-dict key maps to a flax
path by joining every numeric index to the module name before it with "_" and keeping the
other components as nested modules, with these leaf and Sequential renames:

  torch                                   flax (params tree, "/" = nesting)
  intro.weight / .bias                    intro/kernel, intro/bias
  encoders.{i}.{j}.<block>                encoders_{i}_{j}/<block>
  downs.{i}.weight / .bias                downs_{i}/kernel, downs_{i}/bias
  middle_blks.{j}.<block>                 middle_blks_{j}/<block>
  ups.{i}.0.weight  (conv, no bias)       ups_{i}/kernel
  decoders.{i}.{j}.<block>                decoders_{i}_{j}/<block>   (DCPT: decoder{i}.{j})
  ending.weight / .bias                   ending/kernel, ending/bias
  block: conv1..conv5.weight/.bias        conv1..conv5/kernel, /bias
         sca.1.weight / .bias             sca/kernel, sca/bias
         norm1/norm2.weight / .bias       norm1/norm2/scale, /bias
         beta, gamma [1, C, 1, 1]         beta, gamma [C]

Conv weights go from OIHW to HWIO (`w.transpose(2, 3, 1, 0)`; the depthwise conv2 [2C, 1, 3, 3]
becomes [3, 3, 1, 2C]).

Every convolution is its own `nn.Conv` (`layers.conv2d`) and every LayerNorm a
`layers.LayerNorm2d`, which is what MaskDCPT's masking interceptor acts on.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab.models import common
from jaxmilab.models import layers

# Presets: "nafnet_dcpt" is DCPT's setting (MILab-PKU/dcpt options/all_in_one/test/
# test_NAFNet_5d.yml: width 64, enc [1, 1, 1, 28], middle 1, dec [1, 1, 1, 1]); the small and
# tiny ones are for quickstarts and tests.
PRESETS: dict[str, dict[str, Any]] = {
    "nafnet_dcpt": dict(
        width=64, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1)
    ),
    "nafnet_small": dict(
        width=16, enc_blocks=(1, 1, 1, 2), middle_blocks=1, dec_blocks=(1, 1, 1, 1)
    ),
    "nafnet_tiny": dict(width=8, enc_blocks=(1, 1), middle_blocks=1, dec_blocks=(1, 1)),
}


class NAFBlock(nn.Module):
  """NAFNet's block: LN, conv1x1 -> dwconv3x3 -> SimpleGate -> SCA -> conv1x1, then a gated FFN.

  Both branches are residual with learnable per-channel scales `beta`, `gamma` (init 0).
  DW_Expand = FFN_Expand = 2 and no dropout, as in every official setting used by DCPT.
  """

  layernorm_eps: float = 1e-6
  dtype: Any = jnp.float32

  def _conv(self, x, features, kernel_size, *, name, groups=1):
    return layers.conv2d(x, features, kernel_size, name=name, groups=groups, dtype=self.dtype)

  @nn.compact
  def __call__(self, inp: jax.Array) -> jax.Array:
    c = inp.shape[-1]
    x = layers.LayerNorm2d(eps=self.layernorm_eps, dtype=self.dtype, name="norm1")(inp)
    x = self._conv(x, 2 * c, 1, name="conv1")  # [B, H, W, 2C]
    x = self._conv(x, 2 * c, 3, name="conv2", groups=2 * c)  # depthwise
    x = layers.simple_gate(x)  # [B, H, W, C]
    # Simplified channel attention: global average pool, conv 1x1, multiply.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
    x = x * self._conv(pooled, c, 1, name="sca")  # [B, 1, 1, C] broadcast
    x = self._conv(x, c, 1, name="conv3")
    beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
    y = inp + x * beta.astype(self.dtype)

    x = layers.LayerNorm2d(eps=self.layernorm_eps, dtype=self.dtype, name="norm2")(y)
    x = self._conv(x, 2 * c, 1, name="conv4")
    x = layers.simple_gate(x)
    x = self._conv(x, c, 1, name="conv5")
    gamma = self.param("gamma", nn.initializers.zeros, (c,), jnp.float32)
    return y + x * gamma.astype(self.dtype)


class NAFNet(nn.Module):
  """NAFNet U-Net restorer on [B, H, W, C] images in [0, 1]; see the module docstring.

  Attributes:
    width: channels after the intro conv; level i of the encoder has width * 2**i.
    enc_blocks: NAFBlocks per encoder level (its length L sets the depth).
    middle_blocks: NAFBlocks at the bottleneck (width * 2**L channels).
    dec_blocks: NAFBlocks per decoder level, coarse to fine; same length as enc_blocks.
    img_channels: image channels in and out.
    layernorm_eps: the LayerNorm2d epsilon: 1e-6 in NAFNet and DCPT (megvii-research/NAFNet
      `LayerNorm2d(eps=1e-6)`), 1e-5 in MaskDCPT's NAFNet (MILab-PKU/MaskDCPT
      basicsr/archs/nafnet_arch.py and mask_nafnet_arch.py: `nn.LayerNorm(..., eps=1e-5)`).
    dtype: compute dtype; parameters are always float32.
  """

  width: int
  enc_blocks: Sequence[int]
  middle_blocks: int
  dec_blocks: Sequence[int]
  img_channels: int = 3
  layernorm_eps: float = 1e-6
  dtype: Any = jnp.float32

  def _conv(self, x, features, kernel_size, *, name, stride=1, use_bias=True, padding=None):
    return layers.conv2d(
        x,
        features,
        kernel_size,
        name=name,
        stride=stride,
        use_bias=use_bias,
        padding=padding,
        dtype=self.dtype,
    )

  # MaskDCPT masking interface (jaxmilab/models/masking.py `Maskable`): mask patch 16
  # (MaskDCPT test_NAFNet_*.yml `window_size: 16`) and the decoder-side submodule prefixes.
  @property
  def mask_patch_size(self) -> int:
    return 16

  decoder_modules = ("ups_", "decoders_", "ending")  # reconstruction="dense_decoder" only

  @property
  def pad_multiple(self) -> int:
    """Spatial sizes are padded to a multiple of this (the official `padder_size`)."""
    return 2 ** len(self.enc_blocks)

  def check_config(self) -> None:
    """Raises ValueError unless there is one decoder stage per encoder stage (and some)."""
    enc, dec = tuple(self.enc_blocks), tuple(self.dec_blocks)
    if len(enc) != len(dec) or not enc:
      raise ValueError(
          f"config.model: enc_blocks {enc} and dec_blocks {dec} must be non-empty "
          f"and of the same length."
      )

  @nn.compact
  def __call__(self, x: jax.Array, *, return_decoder_features: bool = False, residual: bool = True):
    """Restores x [B, H, W, img_channels] -> y of the same shape (float32 for float32 x).

    residual=False drops the global input residual (`ending(x)` instead of `ending(x) + inp`):
    the masked pre-training forward of MaskDCPT's release has none (mask_nafnet_arch.py).

    With return_decoder_features=True returns (y, feats): the output of each decoder stage in
    forward order (coarse to fine), L = len(dec_blocks) maps at the padded size Hp x Wp
    (H, W rounded up to a multiple of 2**L): feats[k] is [B, Hp / 2**(L-1-k), Wp / 2**(L-1-k),
    width * 2**(L-1-k)]. For width 64 and 4 levels: 512@H/8, 256@H/4, 128@H/2, 64@H.
    These are the maps the official DCPT code hooks (`decoder{i}` NAFBlocks, dec [1,1,1,1]).
    """
    if len(self.enc_blocks) != len(self.dec_blocks):
      raise ValueError(
          f"NAFNet: enc_blocks {tuple(self.enc_blocks)} and dec_blocks "
          f"{tuple(self.dec_blocks)} must have the same length (one decoder per encoder)."
      )
    common.check_nhwc(x, self.img_channels, "NAFNet")
    _, h, w, _ = x.shape
    inp = layers.pad_to_multiple(x, self.pad_multiple)  # [B, Hp, Wp, C]

    block = functools.partial(NAFBlock, layernorm_eps=self.layernorm_eps, dtype=self.dtype)
    y = self._conv(inp, self.width, 3, name="intro")  # [B, Hp, Wp, width]
    skips = []
    chan = self.width
    for i, num in enumerate(self.enc_blocks):
      for j in range(num):
        y = block(name=f"encoders_{i}_{j}")(y)
      skips.append(y)
      y = self._conv(y, 2 * chan, 2, name=f"downs_{i}", stride=2, padding=0)
      chan *= 2  # [B, Hp/2^(i+1), ., chan]
    for j in range(self.middle_blocks):
      y = block(name=f"middle_blks_{j}")(y)
    feats = []
    for i, (num, skip) in enumerate(zip(self.dec_blocks, skips[::-1])):
      y = self._conv(y, 2 * chan, 1, name=f"ups_{i}", use_bias=False)
      y = layers.pixel_shuffle(y, 2)  # [B, 2h, 2w, chan/2]
      chan //= 2
      y = y + skip
      for j in range(num):
        y = block(name=f"decoders_{i}_{j}")(y)
      feats.append(y)
    y = self._conv(y, self.img_channels, 3, name="ending")
    if residual:
      y = y + inp  # global residual
    y = y[:, :h, :w, :]
    if return_decoder_features:
      return y, feats
    return y


def resolve_config(config) -> dict[str, Any]:
  """config.model (dict or ConfigDict) -> the NAFNet fields: width, enc_blocks, middle_blocks,
  dec_blocks, img_channels, dtype (a jnp dtype). `preset` names a key of PRESETS; explicit
  keys override it. Raises ValueError naming the bad key."""
  return common.resolve(NAFNet, PRESETS, config, defaults=CONFIG_DEFAULTS)


# Every config.model key of this model, None = the preset's / field's value (config_lib).
CONFIG_DEFAULTS = common.config_defaults(NAFNet, unset=True, preset=None)


def create(config) -> NAFNet:
  """NAFNet from config.model: `preset` (a key of PRESETS) and/or width, enc_blocks,
  middle_blocks, dec_blocks, img_channels (3), dtype ('float32' | 'bfloat16'); explicit keys
  override the preset."""
  return common.create(NAFNet, PRESETS, config, defaults=CONFIG_DEFAULTS)
