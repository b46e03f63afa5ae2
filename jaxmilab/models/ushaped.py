"""Restormer's U-shaped layout, parameterised by its transformer block (NHWC, flax.linen).

One body serves Restormer, PromptIR and TEAFormer; each of them is a subclass that declares
its block settings and returns its block class from `block(level)` (a `functools.partial`
with the settings of that level, the `block_cls` pattern of flax's ResNet example), and may
use two hooks: `fuse(x, level)` (PromptIR's prompt fusion after the latent and decoder levels
3 and 2; identity here) and `check_size(height, width)` (TEAFormer's token-map checks).

Layout (swz30/Restormer `basicsr/models/archs/restormer_arch.py`): reflect-pad the
bottom/right to a multiple of 8; patch embedding (conv 3x3, `patch_embed/proj`); encoder
levels 1-3 joined by Downsample (conv 3x3 to C/2 + PixelUnshuffle(2)); the latent (level 4);
decoder levels 3-1 after Upsample (conv 3x3 to 2C + PixelShuffle(2)) and a skip concat (levels
3 and 2 reduce the width with a conv 1x1; level 1 keeps 2*dim); refinement blocks at level-1
settings; conv 3x3 to the image plus the input (global residual); crop. Submodule names are
those of the official state dict (`encoder_level1_0`, `down1_2/body_0`, `reduce_chan_level3`,
`output`, ...), so the three models keep the parameter trees their converters rely on.

Decoder features (`return_decoder_features=True`): [decoder_level3, decoder_level2,
decoder_level1] stage outputs, coarse to fine, at the padded size Hp x Wp: [B, Hp/4, Wp/4,
4*dim], [B, Hp/2, Wp/2, 2*dim], [B, Hp, Wp, 2*dim] (before any prompt fusion).

The Restormer blocks used by Restormer and PromptIR (MDTA attention, GDFN feed-forward) live
here too, since PromptIR's are Restormer's and TEAFormer reuses the GDFN.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab.models import common
from jaxmilab.models import layers

Dtype = Any
ModuleDef = Callable[..., nn.Module]
PAD_MULTIPLE = 8  # three 2x downsamplings
LAYERNORM_TYPES = ("BiasFree", "WithBias")


def conv(
    x: jax.Array,
    features: int,
    kernel_size: int,
    *,
    name: str,
    use_bias: bool,
    groups: int = 1,
    dtype: Dtype = jnp.float32,
    normal_init: bool = False,
) -> jax.Array:
  """Every convolution of the Restormer family: a PyTorch-style `nn.Conv2d`, stride 1, 'same'.

  normal_init: weights N(0, 0.02) (DCPT Restormer's `_init_weights`) instead of PyTorch's
  default uniform init (a bias, if any, keeps PyTorch's default init where DCPT zeroes it;
  DCPT's convs have none). Must be called inside a compact method.
  """
  return layers.conv2d(
      x,
      features,
      kernel_size,
      name=name,
      groups=groups,
      use_bias=use_bias,
      dtype=dtype,
      kernel_init=layers.conv_kernel_init(normal_init),
  )


def channel_norm(layernorm_type: str, eps: float, dtype: Dtype, name: str) -> nn.Module:
  """Restormer's LayerNorm: 'WithBias' or 'BiasFree' (layers.ChannelLayerNorm)."""
  return layers.ChannelLayerNorm(
      with_bias=layernorm_type != "BiasFree", eps=eps, dtype=dtype, name=name
  )


def split_qkv_heads(
    x: jax.Array,
    num_heads: int,
    *,
    use_bias: bool,
    dtype: Dtype,
    normal_init: bool = False,
    depthwise: bool = False,
):
  """The `qkv` conv 1x1 to 3C of an attention (then, with `depthwise`, Restormer's
  `qkv_dwconv` 3x3), split into q, k, v, each [B, H, W, C]. Raises if C % num_heads."""
  c = x.shape[-1]
  if c % num_heads:
    raise ValueError(f"attention: {c} channels do not split into {num_heads} heads.")
  kw = dict(use_bias=use_bias, dtype=dtype, normal_init=normal_init)
  qkv = conv(x, 3 * c, 1, name="qkv", **kw)  # [B, H, W, 3C]
  if depthwise:
    qkv = conv(qkv, 3 * c, 3, name="qkv_dwconv", groups=3 * c, **kw)
  return jnp.split(qkv, 3, axis=-1)


class Attention(nn.Module):
  """MDTA: multi-Dconv-head transposed self-attention over channels, per head [C/h x C/h].

  conv 1x1 -> depthwise conv 3x3 -> q, k, v; per head, L2-normalize q and k over pixels,
  A = act(q k^T * temperature), out = A v, conv 1x1. act = softmax (official) or ReLU (DCPT).
  """

  num_heads: int
  bias: bool = False
  attention: str = "softmax"  # "softmax" (official) | "relu" (DCPT)
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    nh = self.num_heads
    q, k, v = split_qkv_heads(
        x, nh, use_bias=self.bias, dtype=self.dtype, normal_init=self.normal_init, depthwise=True
    )

    def heads(t):  # "b (head c) h w -> b head c (h w)"
      return t.reshape(b, h * w, nh, c // nh).transpose(0, 2, 3, 1)  # [B, nh, C/nh, HW]

    q, k, v = heads(q), heads(k), heads(v)

    # F.normalize(dim=-1): t / max(||t||, 1e-12), over pixels; in float32. The norm is taken as
    # sqrt(max(sum t^2, 1e-24)) so its gradient is finite where t = 0 (jnp.linalg.norm's is NaN
    # there, which made Restormer / PromptIR / TEAFormer untrainable on zero-padded inputs);
    # forward values and gradients equal F.normalize's.
    def l2n(t):
      t = t.astype(jnp.float32)
      return t * jax.lax.rsqrt(jnp.maximum(jnp.sum(t * t, axis=-1, keepdims=True), 1e-24))

    temperature = self.param("temperature", nn.initializers.ones, (nh,), jnp.float32)
    attn = jnp.einsum("bncl,bndl->bncd", l2n(q), l2n(k)) * temperature[:, None, None]
    if self.attention == "softmax":
      attn = jax.nn.softmax(attn, axis=-1)
    elif self.attention == "relu":
      attn = jax.nn.relu(attn)
    else:
      raise ValueError(f"Restormer attention={self.attention!r}; use 'softmax' or 'relu'.")
    out = jnp.einsum("bncd,bndl->bncl", attn.astype(self.dtype), v)  # [B, nh, C/nh, HW]
    out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
    return conv(
        out,
        c,
        1,
        name="project_out",
        use_bias=self.bias,
        dtype=self.dtype,
        normal_init=self.normal_init,
    )


class FeedForward(nn.Module):
  """GDFN: conv 1x1 to 2*int(C*f) -> depthwise 3x3 -> gelu(x1) * x2 -> conv 1x1 back to C."""

  ffn_expansion_factor: float
  bias: bool = False
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    hidden = int(c * self.ffn_expansion_factor)
    kw = dict(use_bias=self.bias, dtype=self.dtype, normal_init=self.normal_init)
    x = conv(x, 2 * hidden, 1, name="project_in", **kw)
    x = conv(x, 2 * hidden, 3, name="dwconv", groups=2 * hidden, **kw)
    x1, x2 = jnp.split(x, 2, axis=-1)
    x = jax.nn.gelu(x1, approximate=False) * x2  # F.gelu is exact (erf)
    return conv(x, c, 1, name="project_out", **kw)


class TransformerBlock(nn.Module):
  """Restormer's block: x + MDTA(LN(x)); x + GDFN(LN(x)). Width is the input's channels."""

  num_heads: int
  ffn_expansion_factor: float
  bias: bool = False
  layernorm_type: str = "BiasFree"  # "BiasFree" | "WithBias"
  layernorm_eps: float = 1e-5
  attention: str = "softmax"
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name: channel_norm(self.layernorm_type, self.layernorm_eps, self.dtype, name)
    x = x + Attention(
        num_heads=self.num_heads,
        bias=self.bias,
        attention=self.attention,
        normal_init=self.normal_init,
        dtype=self.dtype,
        name="attn",
    )(norm("norm1")(x))
    x = x + FeedForward(
        ffn_expansion_factor=self.ffn_expansion_factor,
        bias=self.bias,
        normal_init=self.normal_init,
        dtype=self.dtype,
        name="ffn",
    )(norm("norm2")(x))
    return x


class Resample(nn.Module):
  """Downsample (conv 3x3 to C/2, PixelUnshuffle 2) or Upsample (conv 3x3 to 2C, PixelShuffle 2).

  The conv is `body_0` (torch `body.0` of the official nn.Sequential), without bias.
  """

  down: bool
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kw = dict(use_bias=False, dtype=self.dtype, normal_init=self.normal_init)
    if self.down:
      return layers.pixel_unshuffle(conv(x, c // 2, 3, name="body_0", **kw), 2)  # [B, H/2, W/2, 2C]
    return layers.pixel_shuffle(conv(x, 2 * c, 3, name="body_0", **kw), 2)  # [B, 2H, 2W, C/2]


class PatchEmbed(nn.Module):
  """OverlapPatchEmbed: conv 3x3 from the image to `dim` channels, no bias (`proj`)."""

  dim: int
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv(
        x, self.dim, 3, name="proj", use_bias=False, dtype=self.dtype, normal_init=self.normal_init
    )


class UShapedRestorer(nn.Module):
  """Restormer's 4-level encoder-decoder around a block; subclasses supply `block(level)`.

  Attributes:
    dim: width of level 1 (levels 2-4 have 2, 4, 8 times it; decoder level 1 has 2*dim).
    num_blocks: blocks of levels 1-4 (level 4 = latent; the decoders reuse levels 1-3).
    num_refinement_blocks: blocks after decoder level 1 (at level-1 settings).
    heads: attention heads of levels 1-4.
    bias: bias of the block convs, the reduce_chan convs and the output conv.
    normal_init: conv weights N(0, 0.02) (DCPT's Restormer) instead of PyTorch's default init.
    img_channels: image channels in and out.
    dtype: compute dtype; parameters are always float32.
  """

  dim: int = 48
  num_blocks: Sequence[int] = (4, 6, 6, 8)
  num_refinement_blocks: int = 4
  heads: Sequence[int] = (1, 2, 4, 8)
  bias: bool = False
  normal_init: bool = False
  img_channels: int = 3
  dtype: Dtype = jnp.float32

  # ------------------------------------------------------------------ what subclasses provide

  def block(self, level: int) -> ModuleDef:
    """The block constructor of `level` (0-3): called as block(level)(name=...)(x)."""
    raise TypeError(
        f"{type(self).__name__} is used as a network but does not define "
        f"block(level); UShapedRestorer is a base class (see Restormer, TEAFormer)."
    )

  def fuse(self, x: jax.Array, level: int) -> jax.Array:
    """Hook after the latent (level 4) and decoder levels 3 and 2; identity here."""
    del level
    return x

  def check_size(self, height: int, width: int) -> None:
    """Hook: raise ValueError if an input height x width cannot be run; nothing here."""
    del height, width

  @property
  def pad_multiple(self) -> int:
    """Spatial sizes are reflect-padded to a multiple of this (three 2x downsamplings)."""
    return PAD_MULTIPLE

  # MaskDCPT masking interface (jaxmilab/models/masking.py `Maskable`): the mask patch (the
  # padding unit 8, as the official MaskDCPT test options' window_size) and the name prefixes
  # of the top-level submodules after the encoder (PromptIR's prompt modules included).
  @property
  def mask_patch_size(self) -> int:
    return self.pad_multiple

  decoder_modules = (
      "up4_3",
      "reduce_chan_level",
      "decoder_level",
      "up3_2",
      "up2_1",
      "refinement",
      "output",
      "prompt",
      "noise_level",
      "reduce_noise_level",
  )

  # ---------------------------------------------------------------------------------- config

  def check_config(self) -> None:
    """Raises ValueError naming config.model keys for settings no input size can run."""
    nb, heads = tuple(self.num_blocks), tuple(self.heads)
    if len(nb) != 4 or len(heads) != 4:
      raise ValueError(
          f"config.model: num_blocks {nb} and heads {heads} must have 4 entries "
          f"(levels 1-3 and the latent)."
      )
    for level, nh in enumerate(heads):
      width = self.dim * 2**level
      widths = {width, 2 * self.dim} if level == 0 else {width}  # decoder level 1: 2*dim
      for c in sorted(widths):
        if c % nh:
          raise ValueError(
              f"config.model: width {c} of level {level + 1} does not split into "
              f"heads[{level}]={nh}."
          )
    layernorm_type = getattr(self, "layernorm_type", LAYERNORM_TYPES[0])
    if layernorm_type not in LAYERNORM_TYPES:
      raise ValueError(
          f"config.model.layernorm_type={layernorm_type!r}; use 'BiasFree' or " f"'WithBias'."
      )

  # ------------------------------------------------------------------------------- the body

  def _stage(self, x: jax.Array, level: int, count: int, name: str) -> jax.Array:
    """`count` blocks of `level` (0-3), named {name}_{j}."""
    block_cls = self.block(level)
    for j in range(count):
      x = block_cls(name=f"{name}_{j}")(x)
    return x

  def _conv(self, x: jax.Array, features: int, kernel_size: int, name: str) -> jax.Array:
    return conv(
        x,
        features,
        kernel_size,
        name=name,
        use_bias=self.bias,
        dtype=self.dtype,
        normal_init=self.normal_init,
    )

  def _resample(self, x: jax.Array, down: bool, name: str) -> jax.Array:
    return Resample(down=down, normal_init=self.normal_init, dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, x: jax.Array, *, return_decoder_features: bool = False, residual: bool = True):
    """Restores x [B, H, W, img_channels] -> y of the same shape.

    residual=False drops the global input residual: MaskDCPT's released masked forward
    (mask_restormer_arch.py, mask_promptir_arch.py) ends in `self.output(out_dec_level1)`.

    With return_decoder_features=True returns (y, feats), feats = [decoder_level3,
    decoder_level2, decoder_level1] outputs: [B, Hp/4, Wp/4, 4*dim], [B, Hp/2, Wp/2, 2*dim],
    [B, Hp, Wp, 2*dim], with Hp, Wp = H, W rounded up to a multiple of 8.
    """
    model = type(self).__name__
    common.check_nhwc(x, self.img_channels, model)
    if len(self.num_blocks) != 4 or len(self.heads) != 4:
      raise ValueError(
          f"{model}: num_blocks {tuple(self.num_blocks)} and heads "
          f"{tuple(self.heads)} must have 4 entries (levels 1-3 and the latent)."
      )
    _, h, w, _ = x.shape
    self.check_size(h, w)
    d, nb = self.dim, self.num_blocks
    inp = layers.reflect_pad_to_multiple(x, self.pad_multiple)  # [B, Hp, Wp, C]
    y = PatchEmbed(dim=d, normal_init=self.normal_init, dtype=self.dtype, name="patch_embed")(
        inp
    )  # [B, Hp, Wp, d]
    enc1 = self._stage(y, 0, nb[0], "encoder_level1")  # d @1
    enc2 = self._stage(self._resample(enc1, True, "down1_2"), 1, nb[1], "encoder_level2")
    enc3 = self._stage(self._resample(enc2, True, "down2_3"), 2, nb[2], "encoder_level3")
    latent = self._stage(self._resample(enc3, True, "down3_4"), 3, nb[3], "latent")  # 8d @/8
    latent = self.fuse(latent, 3)

    y = jnp.concatenate([self._resample(latent, False, "up4_3"), enc3], axis=-1)
    y = self._conv(y, 4 * d, 1, "reduce_chan_level3")
    dec3 = self._stage(y, 2, nb[2], "decoder_level3")  # 4d @/4
    y = jnp.concatenate([self._resample(self.fuse(dec3, 2), False, "up3_2"), enc2], axis=-1)
    y = self._conv(y, 2 * d, 1, "reduce_chan_level2")
    dec2 = self._stage(y, 1, nb[1], "decoder_level2")  # 2d @/2
    y = jnp.concatenate([self._resample(self.fuse(dec2, 1), False, "up2_1"), enc1], axis=-1)
    dec1 = self._stage(y, 0, nb[0], "decoder_level1")  # 2d @1
    y = self._stage(dec1, 0, self.num_refinement_blocks, "refinement")
    y = self._conv(y, self.img_channels, 3, "output")
    if residual:
      y = y + inp  # global residual
    y = y[:, :h, :w, :]
    if return_decoder_features:
      return y, [dec3, dec2, dec1]
    return y


class RestormerBlocks(UShapedRestorer):
  """UShapedRestorer with Restormer's TransformerBlock (MDTA + GDFN): Restormer and PromptIR.

  Attributes (besides UShapedRestorer's):
    ffn_expansion_factor: GDFN hidden width factor (2.66).
    layernorm_type: 'BiasFree' or 'WithBias'.
    layernorm_eps: 1e-5 (swz30) or 1e-6 (DCPT).
    attention: 'softmax' (official) or 'relu' (DCPT).
  """

  ffn_expansion_factor: float = 2.66
  layernorm_type: str = "BiasFree"
  layernorm_eps: float = 1e-5
  attention: str = "softmax"

  def block(self, level: int) -> ModuleDef:
    return functools.partial(
        TransformerBlock,
        num_heads=self.heads[level],
        ffn_expansion_factor=self.ffn_expansion_factor,
        bias=self.bias,
        layernorm_type=self.layernorm_type,
        layernorm_eps=self.layernorm_eps,
        attention=self.attention,
        normal_init=self.normal_init,
        dtype=self.dtype,
    )

  def check_config(self) -> None:
    super().check_config()
    if self.attention not in ("softmax", "relu"):
      raise ValueError(f"config.model.attention={self.attention!r}; use 'softmax' or 'relu'.")
