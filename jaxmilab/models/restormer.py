"""Restormer (Zamir et al., CVPR 2022) and DCPT's variant of it, in NHWC flax.linen.

Follows swz30/Restormer `basicsr/models/archs/restormer_arch.py` and the `Restormer` of
MILab-PKU/dcpt `basicsr/archs/restormer_arch.py` (the network of DCPT's Restormer results and
checkpoint `dcpt_restormer_5d.pth`). A 4-level U-Net of transformer blocks: conv 3x3 patch
embedding, encoder stages joined by Downsample (conv 3x3 to C/2 + PixelUnshuffle(2)), a latent
stage, decoder stages after Upsample (conv 3x3 to 2C + PixelShuffle(2)) and a skip concat
(levels 3 and 2 reduce the width with a conv 1x1; level 1 keeps 2*dim), refinement blocks,
conv 3x3 to the image, plus the input (global residual). A block is
`x + MDTA(LN(x))`, then `x + GDFN(LN(x))`:
  MDTA ("transposed" attention over channels): conv 1x1 -> depthwise conv 3x3 -> q, k, v;
    per head, L2-normalize q and k over pixels, A = act(q k^T * temperature) [C/h x C/h],
    out = A v, conv 1x1. act = softmax (official) or ReLU (DCPT's variant).
  GDFN: conv 1x1 to 2*int(C*2.66) -> depthwise 3x3 -> gelu(x1) * x2 -> conv 1x1.

Differences between the presets (each checked in its official file):
  "restormer"      swz30: LayerNorm eps 1e-5; 'BiasFree' LN as in the denoising options
                   (Denoising/Options/*.yml; deraining/deblurring use 'WithBias'); softmax.
  "restormer_dcpt" MILab-PKU/dcpt: LN eps 1e-6, 'BiasFree' LN, ReLU instead of softmax in
                   MDTA (`# attn = attn.softmax(dim=-1); attn = F.relu(attn)`), conv weights
                   initialized N(0, 0.02) (`_init_weights`, timm trunc_normal_ truncating at
                   +-2 = +-100 sigma, i.e. a plain normal); stages wrapped in a
                   `SequentialTransformerBlock` (one more `.body` in the state-dict keys).
The dual-pixel (6-channel + skip_conv) and DCPT's `scale > 1` heads are not implemented.

Padding. The official test scripts (swz30 `Deraining/test.py` etc., `factor = 8`) and DCPT's
`SRModel.pre_test` (`window_size: 8`) reflect-pad the bottom/right of the input to a multiple of
8 before the network and crop the output; `__call__` does the same (jnp.pad 'reflect' = torch
F.pad 'reflect'), so it takes any H, W.

Decoder features (`return_decoder_features=True`): the outputs of decoder_level3,
decoder_level2, decoder_level1 in forward order (coarse to fine), at the padded size Hp x Wp:
[B, Hp/4, Wp/4, 4*dim], [B, Hp/2, Wp/2, 2*dim], [B, Hp, Wp, 2*dim]; for dim 48 that is
192@H/4, 96@H/2, 96@H. These are the stage outputs DCPT's classifier reads: its
`forward(hook=True)` stops after decoder_level1 (before refinement); its training code hooks
modules whose name contains `hook_names` and has one dot (the option is not published), which
for this network are the `decoder_level*.body` stages (hence the SequentialTransformerBlock
wrapper); for `Restormer_origin` its distillation model hooks the last block of each decoder
level, the same maps. (`Restormer_origin` in DCPT's file is swz30's layout built from that
file's blocks, i.e. eps 1e-6 and ReLU with 'WithBias' LN: `restormer_dcpt` with
layernorm_type='WithBias', converted without the `.body` rename.)

Parameter names (for checkpoint converters). A PyTorch state-dict key maps to a flax path by
joining every numeric index to the module name before it with "_" and keeping the other
components as nested modules, after these renames:
  torch                                        flax ("/" = nesting)
  encoder_level1.0.norm1.body.weight (/bias)   encoder_level1_0/norm1/scale (/bias)
     (DCPT: encoder_level1.body.0.*; drop the `.body` after a stage name: encoder_level1-3,
      latent, decoder_level1-3, refinement)
  *.attn.temperature [h, 1, 1]                 */attn/temperature [h]
  *.attn.{qkv,qkv_dwconv,project_out}.weight   */attn/{qkv,qkv_dwconv,project_out}/kernel
  *.ffn.{project_in,dwconv,project_out}.weight */ffn/{project_in,dwconv,project_out}/kernel
  patch_embed.proj.weight                      patch_embed/proj/kernel
  down1_2.body.0.weight, up4_3.body.0.weight   down1_2/body_0/kernel, up4_3/body_0/kernel
  reduce_chan_level3.weight, output.weight     reduce_chan_level3/kernel, output/kernel
  conv `.bias` (only with bias=True)           .../bias
Conv weights go from OIHW to HWIO (`w.transpose(2, 3, 1, 0)`; a depthwise [C, 1, 3, 3] becomes
[3, 3, 1, C]).

MaskDCPT hook: every convolution (including the QKV projection `attn/qkv` and its depthwise
`attn/qkv_dwconv`) is its own `nn.Conv` created by `conv` below, and every LayerNorm is a
`ChannelLayerNorm`; a masking hook is one `nn.intercept_methods` interceptor that multiplies
the mask into the outputs of `nn.Conv` calls (and swaps in a masked norm), or one change here.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab.models import layers

Dtype = Any

# Official hyperparameters: swz30 Restormer defaults (dim 48, blocks [4, 6, 6, 8], refinement 4,
# heads [1, 2, 4, 8], ffn 2.66, bias False) with the denoising LN; DCPT's `Restormer` defaults
# (MILab-PKU/dcpt basicsr/archs/restormer_arch.py, used as-is by test_Restormer_5d.yml).
_OFFICIAL = dict(dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4, heads=(1, 2, 4, 8),
                 ffn_expansion_factor=2.66, bias=False, layernorm_type="BiasFree")
_TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4),
             ffn_expansion_factor=2.66, bias=False, layernorm_type="BiasFree")
PRESETS: dict[str, dict[str, Any]] = {
    "restormer": dict(_OFFICIAL, layernorm_eps=1e-5, attention="softmax", normal_init=False),
    "restormer_dcpt": dict(_OFFICIAL, layernorm_eps=1e-6, attention="relu", normal_init=True),
    "restormer_tiny": dict(_TINY, layernorm_eps=1e-5, attention="softmax", normal_init=False),
    "restormer_dcpt_tiny": dict(_TINY, layernorm_eps=1e-6, attention="relu", normal_init=True),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PAD_MULTIPLE = 8  # three 2x downsamplings


# --------------------------------------------------------------------------------------------
# Helpers shared with promptir.py and swinir.py.


def reflect_pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """Reflect-pads the bottom and right of [B, H, W, C] to multiples of `multiple`.

  = `F.pad(x, (0, pad_w, 0, pad_h), 'reflect')` of the official test code (DCPT `pre_test`,
  swz30 test scripts, SwinIR `check_image_size`); torch needs pad < size, jnp.pad does not.
  """
  _, h, w, _ = x.shape
  pad_h = (multiple - h % multiple) % multiple
  pad_w = (multiple - w % multiple) % multiple
  if pad_h == 0 and pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def pixel_unshuffle(x: jax.Array, factor: int) -> jax.Array:
  """torch `nn.PixelUnshuffle(factor)` in NHWC: [B, H, W, C] -> [B, H/r, W/r, C*r*r].

  Output channel c*r*r + i*r + j holds input pixel (h*r + i, w*r + j), channel c.
  """
  b, h, w, c = x.shape
  r = factor
  if h % r or w % r:
    raise ValueError(f"pixel_unshuffle({r}) needs H, W divisible by {r}, got shape {x.shape}.")
  x = x.reshape(b, h // r, r, w // r, r, c)         # [B, H/r, i, W/r, j, C]
  x = x.transpose(0, 1, 3, 5, 2, 4)                 # [B, H/r, W/r, C, i, j]
  return x.reshape(b, h // r, w // r, c * r * r)


def conv(x: jax.Array, features: int, kernel_size: int, *, name: str, use_bias: bool,
         groups: int = 1, dtype: Dtype = jnp.float32, normal_init: bool = False) -> jax.Array:
  """Every convolution of Restormer/PromptIR: a PyTorch-style `nn.Conv2d`, stride 1, 'same'.

  normal_init: weights N(0, 0.02) (DCPT Restormer's `_init_weights`) instead of PyTorch's
  default uniform init (a bias, if any, keeps PyTorch's default init where DCPT zeroes it;
  DCPT's convs have none). Must be called inside a compact method.
  """
  kwargs = {"kernel_init": nn.initializers.normal(0.02)} if normal_init else {}
  return layers.conv2d(x, features, kernel_size, name=name, groups=groups, use_bias=use_bias,
                       dtype=dtype, **kwargs)


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
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    inv = jax.lax.rsqrt(var + self.eps)
    if self.with_bias:
      bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
      y = (x32 - mean) * inv * scale + bias
    else:
      y = x32 * inv * scale
    return y.astype(self.dtype)


class Attention(nn.Module):
  """MDTA: multi-Dconv-head transposed self-attention over channels, per head [C/h x C/h]."""
  num_heads: int
  bias: bool = False
  attention: str = "softmax"        # "softmax" (official) | "relu" (DCPT)
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    nh = self.num_heads
    if c % nh:
      raise ValueError(f"Restormer attention: {c} channels do not split into {nh} heads.")
    kw = dict(use_bias=self.bias, dtype=self.dtype, normal_init=self.normal_init)
    qkv = conv(x, 3 * c, 1, name="qkv", **kw)                          # [B, H, W, 3C]
    qkv = conv(qkv, 3 * c, 3, name="qkv_dwconv", groups=3 * c, **kw)
    q, k, v = jnp.split(qkv, 3, axis=-1)                               # [B, H, W, C] each

    def heads(t):  # "b (head c) h w -> b head c (h w)"
      return t.reshape(b, h * w, nh, c // nh).transpose(0, 2, 3, 1)   # [B, nh, C/nh, HW]

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
    out = jnp.einsum("bncd,bndl->bncl", attn.astype(self.dtype), v)   # [B, nh, C/nh, HW]
    out = out.transpose(0, 3, 1, 2).reshape(b, h, w, c)
    return conv(out, c, 1, name="project_out", **kw)


class FeedForward(nn.Module):
  """GDFN: gated depthwise-conv feed-forward, hidden width int(C * ffn_expansion_factor)."""
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
    x = jax.nn.gelu(x1, approximate=False) * x2                        # F.gelu is exact (erf)
    return conv(x, c, 1, name="project_out", **kw)


class TransformerBlock(nn.Module):
  """x + MDTA(LN(x)); x + GDFN(LN(x)). Width is the input's channel count."""
  num_heads: int
  ffn_expansion_factor: float
  bias: bool = False
  layernorm_type: str = "BiasFree"   # "BiasFree" | "WithBias"
  layernorm_eps: float = 1e-5
  attention: str = "softmax"
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    with_bias = self.layernorm_type != "BiasFree"
    norm = lambda name: ChannelLayerNorm(with_bias, self.layernorm_eps, self.dtype, name=name)
    x = x + Attention(self.num_heads, self.bias, self.attention, self.normal_init, self.dtype,
                      name="attn")(norm("norm1")(x))
    x = x + FeedForward(self.ffn_expansion_factor, self.bias, self.normal_init, self.dtype,
                        name="ffn")(norm("norm2")(x))
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
      return pixel_unshuffle(conv(x, c // 2, 3, name="body_0", **kw), 2)   # [B, H/2, W/2, 2C]
    return layers.pixel_shuffle(conv(x, 2 * c, 3, name="body_0", **kw), 2)  # [B, 2H, 2W, C/2]


class Restormer(nn.Module):
  """Restormer restorer on [B, H, W, img_channels] images in [0, 1]; see the module docstring.

  Attributes:
    dim: width of level 1 (levels 2-4 have 2, 4, 8 times it).
    num_blocks: transformer blocks of levels 1-4 (level 4 = latent; decoders reuse 1-3).
    num_refinement_blocks: blocks after decoder level 1.
    heads: attention heads of levels 1-4.
    ffn_expansion_factor: GDFN hidden width factor (2.66).
    bias: bias of the attention/FFN convs, reduce_chan convs and output conv.
    layernorm_type: 'BiasFree' or 'WithBias'.
    layernorm_eps: 1e-5 (swz30) or 1e-6 (DCPT).
    attention: 'softmax' (official) or 'relu' (DCPT).
    normal_init: conv weights N(0, 0.02) (DCPT) instead of PyTorch's default init.
    img_channels: image channels in and out.
    dtype: compute dtype; parameters are always float32.
  """
  dim: int = 48
  num_blocks: Sequence[int] = (4, 6, 6, 8)
  num_refinement_blocks: int = 4
  heads: Sequence[int] = (1, 2, 4, 8)
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  layernorm_type: str = "BiasFree"
  layernorm_eps: float = 1e-5
  attention: str = "softmax"
  normal_init: bool = False
  img_channels: int = 3
  dtype: Dtype = jnp.float32

  @property
  def pad_multiple(self) -> int:
    """Spatial sizes are reflect-padded to a multiple of this (the official factor 8)."""
    return PAD_MULTIPLE

  def _stage(self, x, level: int, count: int, name: str):
    """`count` TransformerBlocks with the heads of `level` (0-3), named {name}_{j}."""
    for j in range(count):
      x = TransformerBlock(
          self.heads[level], self.ffn_expansion_factor, self.bias, self.layernorm_type,
          self.layernorm_eps, self.attention, self.normal_init, self.dtype,
          name=f"{name}_{j}")(x)
    return x

  def _conv(self, x, features, kernel_size, name, use_bias):
    return conv(x, features, kernel_size, name=name, use_bias=use_bias, dtype=self.dtype,
                normal_init=self.normal_init)

  def _resample(self, x, down: bool, name: str):
    return Resample(down, self.normal_init, self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, x: jax.Array, *, return_decoder_features: bool = False):
    """Restores x [B, H, W, img_channels] -> y of the same shape.

    With return_decoder_features=True returns (y, feats), feats = [decoder_level3,
    decoder_level2, decoder_level1] outputs: [B, Hp/4, Wp/4, 4*dim], [B, Hp/2, Wp/2, 2*dim],
    [B, Hp, Wp, 2*dim], with Hp, Wp = H, W rounded up to a multiple of 8.
    """
    check_input(x, self.img_channels, "Restormer")
    check_levels(self.num_blocks, self.heads, "Restormer")
    _, h, w, _ = x.shape
    inp = reflect_pad_to_multiple(x, self.pad_multiple)                # [B, Hp, Wp, C]
    y = PatchEmbed(self.dim, self.normal_init, self.dtype, name="patch_embed")(inp)  # [B, Hp, Wp, d]
    return u_shaped_body(self, y, inp, h, w, return_decoder_features)


def u_shaped_body(module, y, inp, h: int, w: int, return_decoder_features: bool):
  """Restormer's 4-level encoder-decoder after the patch embedding, shared with TEAFormer.

  `module` provides `_stage`, `_resample`, `_conv` and the fields `dim`, `num_blocks`,
  `num_refinement_blocks`, `bias`, `img_channels`; the submodule names (encoder_level1, ...,
  output) are those of the official state dict. y: [B, Hp, Wp, dim]; inp: the padded image.
  """
  self, d, nb = module, module.dim, module.num_blocks  # pylint: disable=self-cls-assignment
  enc1 = self._stage(y, 0, nb[0], "encoder_level1")
  enc2 = self._stage(self._resample(enc1, True, "down1_2"), 1, nb[1], "encoder_level2")
  enc3 = self._stage(self._resample(enc2, True, "down2_3"), 2, nb[2], "encoder_level3")
  latent = self._stage(self._resample(enc3, True, "down3_4"), 3, nb[3], "latent")  # 8d @/8

  y = jnp.concatenate([self._resample(latent, False, "up4_3"), enc3], axis=-1)   # 8d @/4
  y = self._conv(y, 4 * d, 1, "reduce_chan_level3", self.bias)
  dec3 = self._stage(y, 2, nb[2], "decoder_level3")                                # 4d @/4
  y = jnp.concatenate([self._resample(dec3, False, "up3_2"), enc2], axis=-1)      # 4d @/2
  y = self._conv(y, 2 * d, 1, "reduce_chan_level2", self.bias)
  dec2 = self._stage(y, 1, nb[1], "decoder_level2")                                # 2d @/2
  y = jnp.concatenate([self._resample(dec2, False, "up2_1"), enc1], axis=-1)      # 2d @1
  dec1 = self._stage(y, 0, nb[0], "decoder_level1")
  y = self._stage(dec1, 0, self.num_refinement_blocks, "refinement")
  y = self._conv(y, self.img_channels, 3, "output", self.bias) + inp             # residual
  y = y[:, :h, :w, :]
  if return_decoder_features:
    return y, [dec3, dec2, dec1]
  return y


class PatchEmbed(nn.Module):
  """OverlapPatchEmbed: conv 3x3 from the image to `dim` channels, no bias (`proj`)."""
  dim: int
  normal_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return conv(x, self.dim, 3, name="proj", use_bias=False, dtype=self.dtype,
                normal_init=self.normal_init)


def check_input(x: jax.Array, img_channels: int, model: str) -> None:
  """Raises ValueError unless x is [B, H, W, img_channels]."""
  if x.ndim != 4 or x.shape[-1] != img_channels:
    raise ValueError(f"{model} expects [B, H, W, {img_channels}] images (NHWC), got shape "
                     f"{x.shape}; set config.model.img_channels or transpose NCHW input.")


def check_levels(num_blocks: Sequence[int], heads: Sequence[int], model: str) -> None:
  if len(num_blocks) != 4 or len(heads) != 4:
    raise ValueError(f"{model}: num_blocks {tuple(num_blocks)} and heads {tuple(heads)} must "
                     f"have 4 entries (levels 1-3 and the latent).")


# --------------------------------------------------------------------------------------------
# Config.


def resolve_config(config, presets: dict[str, dict[str, Any]], keys: Sequence[str],
                   model: str) -> tuple[dict[str, Any], Any]:
  """Preset + explicit keys of config.model -> (settings, compute dtype); checks unknown keys."""
  known = ("name", "preset", "dtype") + tuple(keys)
  unknown = sorted(k for k in config.keys() if k not in known)
  if unknown:
    raise ValueError(f"config.model: unknown key(s) {unknown} for the {model} model; "
                     f"known keys: {list(known)}.")
  settings: dict[str, Any] = {}
  preset = config.get("preset")
  if preset is not None:
    if preset not in presets:
      raise ValueError(f"config.model.preset={preset!r} is not a {model} preset; choose one of "
                       f"{sorted(presets)}.")
    settings.update(presets[preset])
  for key in keys:
    value = config.get(key)
    if value is not None:
      settings[key] = value
  missing = [k for k in keys if k not in settings and k != "img_channels"]
  if missing:
    raise ValueError(f"config.model is missing {missing} for the {model} model; set them or "
                     f"config.model.preset (one of {sorted(presets)}).")
  dtype_name = config.get("dtype") or "float32"
  if dtype_name not in DTYPES:
    raise ValueError(f"config.model.dtype={dtype_name!r}; use one of {sorted(DTYPES)}.")
  return settings, DTYPES[dtype_name]


CONFIG_KEYS = ("dim", "num_blocks", "num_refinement_blocks", "heads", "ffn_expansion_factor",
               "bias", "layernorm_type", "layernorm_eps", "attention", "normal_init",
               "img_channels")


def restormer_kwargs(s: dict[str, Any]) -> dict[str, Any]:
  """Validated, typed constructor arguments shared by Restormer and PromptIR."""
  if s["layernorm_type"] not in ("BiasFree", "WithBias"):
    raise ValueError(f"config.model.layernorm_type={s['layernorm_type']!r}; use 'BiasFree' or "
                     f"'WithBias'.")
  if s["attention"] not in ("softmax", "relu"):
    raise ValueError(f"config.model.attention={s['attention']!r}; use 'softmax' or 'relu'.")
  nb = tuple(int(n) for n in s["num_blocks"])
  heads = tuple(int(n) for n in s["heads"])
  check_levels(nb, heads, "config.model")
  dim = int(s["dim"])
  for level, nh in enumerate(heads):
    width = dim * 2 ** level
    widths = {width, 2 * dim} if level == 0 else {width}   # decoder level 1 is 2*dim wide
    for c in widths:
      if c % nh:
        raise ValueError(f"config.model: width {c} of level {level + 1} does not split into "
                         f"heads[{level}]={nh}.")
  return dict(dim=dim, num_blocks=nb, num_refinement_blocks=int(s["num_refinement_blocks"]),
              heads=heads, ffn_expansion_factor=float(s["ffn_expansion_factor"]),
              bias=bool(s["bias"]), layernorm_type=str(s["layernorm_type"]),
              layernorm_eps=float(s["layernorm_eps"]), attention=str(s["attention"]),
              normal_init=bool(s["normal_init"]), img_channels=int(s.get("img_channels", 3)))


def create(config) -> Restormer:
  """Restormer from config.model: `preset` (a key of PRESETS) and/or the keys dim, num_blocks,
  num_refinement_blocks, heads, ffn_expansion_factor, bias, layernorm_type, layernorm_eps,
  attention, normal_init, img_channels (3), dtype ('float32' | 'bfloat16'); explicit keys
  override the preset."""
  settings, dtype = resolve_config(config, PRESETS, CONFIG_KEYS, "restormer")
  return Restormer(**restormer_kwargs(settings), dtype=dtype)
