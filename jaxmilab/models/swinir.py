"""SwinIR (Liang et al., ICCVW 2021) for restoration, and DCPT's variant of it, in NHWC.

Follows JingyunLiang/SwinIR `models/network_swinir.py` and the `SwinIR` of MILab-PKU/dcpt
`basicsr/archs/swinir_arch.py` (DCPT's SwinIR results, `dcpt_swinir_5d.pth`), with the
denoising / artifact-reduction head both use (`upsampler=''`, upscale 1, `img_range` 1.0; the
DCPT test option test_SwinIR_5d.yml leaves `upsampler` at its default ''):
  x = (x - rgb_mean) * img_range; f = conv_first(x)                  (conv 3x3, 3 -> E)
  t = patch_embed.norm(f)                                            (LayerNorm over channels)
  t = RSTB_n(...RSTB_1(t)); t = norm(t)
  y = x + conv_last(conv_after_body(t) + f); y = y / img_range + rgb_mean
RSTB: t + conv3x3(residual_group(t)), residual_group = `depth` Swin blocks alternating
window attention and shifted (cyclic roll by window // 2) window attention; a block is
t + W-MSA(LN(t)), then t + MLP(LN(t)) (fc1 -> exact GELU -> fc2, hidden E * mlp_ratio).
Tokens are kept as [B, H, W, E] maps throughout: the official flatten(2).transpose(1, 2)
token order is row-major over (h, w), the same as NHWC.

Presets:
  "swinir"      official: attention logits + relative position bias (a learned table
                [(2w-1)^2, heads] indexed by the pair's offset) and, in shifted blocks, the
                -100 mask that stops attention across the wrapped-around regions.
  "swinir_dcpt" DCPT: no relative position bias and no shift mask (both commented out in
                dcpt's WindowAttention / SwinTransformerBlock), the cyclic roll kept; RSTBs
                stored as `encode_layers.{i}` (first half) and `decode_layers{i}` (second half).
Both: embed 180, 6 RSTB x 6 blocks, 6 heads, window 8, mlp ratio 2, qkv bias, patch norm,
'1conv' residual connection, no absolute position embedding, no drop-path (DCPT's
drop_path_rate is 0; the official default 0.1 only acts in training). The official rule
"if min(input_resolution) <= window_size: no shift, window = input size" depends on the
constructor's `img_size` (128 in DCPT, 64 or 128 in the official options), never on the
input, and never fires there; it is not implemented. DCPT's code builds the decoder RSTBs with
`depths[i + 3]` (hard-coded for 6 RSTBs); this module uses depths[n // 2 + i], the same there.

Padding: the official forward (`check_image_size`) and DCPT's `pre_test` reflect-pad the
bottom/right to a multiple of the window and crop the output; so does `__call__`, and the
shift mask is computed for the padded size, like the official `calculate_mask(x_size)`.

Decoder features (`return_decoder_features=True`): the outputs of the last n - n // 2 RSTBs
(the last three of six: the "decoder" RSTBs of DCPT), each [B, Hp, Wp, E] at the padded size
Hp x Wp, in forward order. (DCPT's classifier resizes level i by 1/2**i itself.)

Parameter names (for checkpoint converters). A PyTorch state-dict key maps to a flax path by
joining every numeric index to the module name before it with "_" and keeping the other
components as nested modules:
  torch                                              flax ("/" = nesting)
  conv_first / conv_after_body / conv_last.weight    conv_first / ... /kernel (OIHW -> HWIO)
  patch_embed.norm.weight / .bias, norm.weight       patch_embed/norm/scale / bias, norm/scale
  layers.{i}.residual_group.blocks.{j}.<block>       layers_{i}/residual_group/blocks_{j}/<block>
    (DCPT: encode_layers.{i}.* -> encode_layers_{i}/*, decode_layers{i}.* -> decode_layers{i}/*)
  layers.{i}.conv.weight / .bias                     layers_{i}/conv/kernel / bias
  block: norm1, norm2 .weight / .bias                norm1, norm2 /scale / bias
         attn.qkv, attn.proj, mlp.fc1, mlp.fc2       same names, /kernel = weight.T, /bias
         attn.relative_position_bias_table [T, h]    attn/relative_position_bias_table [T, h]
  buffers attn.relative_position_index, attn_mask    (none: recomputed; skip these keys)

MaskDCPT hook: every convolution is an `nn.Conv` and the QKV projection is the `nn.Dense`
`attn/qkv` of each block; one `nn.intercept_methods` interceptor can multiply a mask into their
outputs (token maps are NHWC, so a [B, H, W, 1] mask broadcasts directly; window tokens are
[B, nW, N, C] and take the mask through the same `window_partition`).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab.models import common
from jaxmilab.models import layers

Dtype = Any

_OFFICIAL = dict(
    embed_dim=180,
    depths=(6,) * 6,
    num_heads=(6,) * 6,
    window_size=8,
    mlp_ratio=2.0,
    qkv_bias=True,
    img_range=1.0,
    patch_norm=True,
)
_TINY = dict(_OFFICIAL, embed_dim=12, depths=(2, 2), num_heads=(2, 2), window_size=4)
_PLAIN = dict(relative_position_bias=True, shift_mask=True, dcpt_layer_names=False)
_DCPT = dict(relative_position_bias=False, shift_mask=False, dcpt_layer_names=True)
# Official: JingyunLiang/SwinIR main_test_swinir.py color_dn (embed 180, depths/heads [6]*6,
# window 8, mlp 2, upsampler '', '1conv'); DCPT: options/all_in_one/test/test_SwinIR_5d.yml.
PRESETS: dict[str, dict[str, Any]] = {
    "swinir": dict(_OFFICIAL, **_PLAIN),
    "swinir_dcpt": dict(_OFFICIAL, **_DCPT),
    "swinir_tiny": dict(_TINY, **_PLAIN),
    "swinir_dcpt_tiny": dict(_TINY, **_DCPT),
}
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, the official `rgb_mean`

# Linear layers: timm trunc_normal_(std=.02) (truncation at +-2 = +-100 sigma), zero bias.
_dense_init = layers.normal_002_init


def window_partition(x: jax.Array, window: int) -> jax.Array:
  """[B, H, W, C] -> [B, nW, window*window, C]; windows row-major, tokens row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, h/w, w/w, wi, wj, C]
  return x.reshape(b, (h // window) * (w // window), window * window, c)


def window_reverse(windows: jax.Array, window: int, h: int, w: int) -> jax.Array:
  """[B, nW, window*window, C] -> [B, H, W, C] (inverse of window_partition)."""
  b, _, _, c = windows.shape
  x = windows.reshape(b, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window: int) -> np.ndarray:
  """[N, N] index into the bias table for tokens i, j of a window (N = window**2)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  flat = coords.reshape(2, -1)  # [2, N]
  rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0)  # [N, N, 2]
  rel = rel + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_attention_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """[nW, N, N] additive mask of shifted-window attention: -100 between tokens that come from
  different regions of the rolled map, 0 otherwise (the official `calculate_mask`)."""
  region = np.zeros((h, w), np.float32)
  cuts = lambda n: (slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n))
  count = 0
  for hs in cuts(h):
    for ws in cuts(w):
      region[hs, ws] = count
      count += 1
  ids = np.asarray(window_partition(region[None, :, :, None], window))[0, :, :, 0]  # [nW, N]
  diff = ids[:, None, :] - ids[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  """Multi-head self-attention inside each window, optional relative position bias."""

  num_heads: int
  window_size: int
  relative_position_bias: bool = True
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    b, nw, n, c = x.shape  # [B, nW, N, C]
    nh = self.num_heads
    hd = c // nh
    dense = lambda f, name, bias=True: nn.Dense(
        f,
        use_bias=bias,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_dense_init,
        name=name,
    )
    qkv = dense(3 * c, "qkv", self.qkv_bias)(x).reshape(b, nw, n, 3, nh, hd)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # [B, nW, N, nh, hd]
    q = q * (hd**-0.5)
    attn = jnp.einsum(
        "bwqhd,bwkhd->bwhqk", q, k, preferred_element_type=jnp.float32
    )  # [B, nW, nh, N, N]
    if self.relative_position_bias:
      ws = self.window_size
      table = self.param(
          "relative_position_bias_table",
          nn.initializers.normal(0.02),
          ((2 * ws - 1) ** 2, nh),
          jnp.float32,
      )
      bias = table[relative_position_index(ws).reshape(-1)].reshape(n, n, nh)
      attn = attn + bias.transpose(2, 0, 1)[None, None]
    if mask is not None:
      attn = attn + mask[None, :, None]  # [nW, N, N]
    attn = jax.nn.softmax(attn, axis=-1).astype(self.dtype)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", attn, v).reshape(b, nw, n, c)
    return dense(c, "proj")(out)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2."""

  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda f, name: nn.Dense(
        f, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_dense_init, name=name
    )
    return dense(x.shape[-1], "fc2")(jax.nn.gelu(dense(self.hidden, "fc1")(x), approximate=False))


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
  """torch nn.LayerNorm (eps 1e-5, biased variance computed as mean((x - mean)^2))."""
  return nn.LayerNorm(
      epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name
  )


class SwinSettings(nn.Module):
  """The settings a Swin block, a BasicLayer and an RSTB share (the official arguments)."""

  num_heads: int
  window_size: int
  mlp_ratio: float = 2.0
  relative_position_bias: bool = True
  shift_mask: bool = True
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32


class SwinTransformerBlock(SwinSettings):
  """t + (S)W-MSA(LN(t)); t + MLP(LN(t)) on token maps [B, H, W, C] (H, W multiples of window)."""

  shift_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, c = x.shape
    ws, s = self.window_size, self.shift_size
    y = _layer_norm(self.dtype, "norm1")(x)
    if s:
      y = jnp.roll(y, (-s, -s), axis=(1, 2))  # cyclic shift
    mask = None
    if s and self.shift_mask:
      mask = jnp.asarray(shift_attention_mask(h, w, ws, s))
    y = WindowAttention(
        self.num_heads, ws, self.relative_position_bias, self.qkv_bias, self.dtype, name="attn"
    )(window_partition(y, ws), mask)
    y = window_reverse(y, ws, h, w)
    if s:
      y = jnp.roll(y, (s, s), axis=(1, 2))
    x = x + y
    return x + Mlp(int(c * self.mlp_ratio), self.dtype, name="mlp")(
        _layer_norm(self.dtype, "norm2")(x)
    )


class BasicLayer(SwinSettings):
  """`depth` Swin blocks, odd ones shifted by window // 2 (`blocks_{j}`)."""

  depth: int = 6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    settings = common.field_values(self, SwinSettings)
    for j in range(self.depth):
      shift = 0 if j % 2 == 0 else self.window_size // 2
      x = SwinTransformerBlock(**settings, shift_size=shift, name=f"blocks_{j}")(x)
    return x


class RSTB(BasicLayer):
  """Residual Swin Transformer Block: t + conv3x3(residual_group(t)) ('1conv'); the same
  fields as the BasicLayer it wraps."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = BasicLayer(**common.field_values(self, BasicLayer), name="residual_group")(x)
    return layers.conv2d(y, x.shape[-1], 3, name="conv", dtype=self.dtype) + x


class PatchEmbed(nn.Module):
  """The official PatchEmbed with patch size 1: only a LayerNorm (`norm`) when patch_norm."""

  patch_norm: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _layer_norm(self.dtype, "norm")(x) if self.patch_norm else x


class SwinIR(nn.Module):
  """SwinIR restorer (upscale 1) on [B, H, W, img_channels] images in [0, 1]; see the docstring.

  Attributes:
    embed_dim: token width E.
    depths: Swin blocks of each RSTB.
    num_heads: attention heads of each RSTB.
    window_size: attention window (and padding unit).
    mlp_ratio: MLP hidden width / E.
    qkv_bias: bias of the QKV projection.
    img_range: input scaling after the mean subtraction (1.0 or 255.0).
    patch_norm: LayerNorm after conv_first.
    relative_position_bias: learned relative position bias (official; False in DCPT).
    shift_mask: mask shifted-window attention across wrapped regions (official; not DCPT).
    dcpt_layer_names: name RSTBs encode_layers_{i} / decode_layers{i} like DCPT's state dict
      (instead of layers_{i}).
    img_channels: image channels in and out (the mean is 0 unless 3).
    dtype: compute dtype; parameters are always float32.
  """

  embed_dim: int = 180
  depths: Sequence[int] = (6,) * 6
  num_heads: Sequence[int] = (6,) * 6
  window_size: int = 8
  mlp_ratio: float = 2.0
  qkv_bias: bool = True
  img_range: float = 1.0
  patch_norm: bool = True
  relative_position_bias: bool = True
  shift_mask: bool = True
  dcpt_layer_names: bool = False
  img_channels: int = 3
  dtype: Dtype = jnp.float32

  # MaskDCPT masking interface (jaxmilab/models/masking.py `Maskable`): the mask patch is the
  # window; the decoder side is the last n - n // 2 RSTBs and the head.
  @property
  def mask_patch_size(self) -> int:
    return self.window_size

  @property
  def decoder_modules(self) -> tuple[str, ...]:
    n = len(self.depths)
    return tuple(self.layer_name(i) for i in range(n // 2, n)) + (
        "norm",
        "conv_after_body",
        "conv_last",
    )  # dense_decoder

  @property
  def pad_multiple(self) -> int:
    """Spatial sizes are reflect-padded to a multiple of this (the window)."""
    return self.window_size

  def layer_name(self, i: int) -> str:
    """Name of RSTB i: official `layers_{i}`; DCPT `encode_layers_{i}`, `decode_layers{j}`."""
    half = len(self.depths) // 2
    if not self.dcpt_layer_names:
      return f"layers_{i}"
    return f"encode_layers_{i}" if i < half else f"decode_layers{i - half}"

  @nn.compact
  def __call__(self, x: jax.Array, *, return_decoder_features: bool = False, residual: bool = True):
    """Restores x [B, H, W, img_channels] -> y of the same shape.

    residual=False is the masked pre-training forward's output path in MaskDCPT's release
    (mask_swinir_arch.py `forward`: the mean shift and `x +` commented out,
    `x = self.conv_last(res)`): no mean subtraction, no global input residual.

    With return_decoder_features=True returns (y, feats): the outputs of the last
    n - n // 2 RSTBs (n = len(depths)), each [B, Hp, Wp, embed_dim], Hp, Wp = H, W rounded up
    to a multiple of window_size.
    """
    common.check_nhwc(x, self.img_channels, "SwinIR")
    if len(self.depths) != len(self.num_heads):
      raise ValueError(
          f"SwinIR: depths {tuple(self.depths)} and num_heads "
          f"{tuple(self.num_heads)} must have the same length (one per RSTB)."
      )
    _, h, w, _ = x.shape
    mean = jnp.asarray(RGB_MEAN if self.img_channels == 3 else (0.0,), jnp.float32)
    x = layers.reflect_pad_to_multiple(x, self.window_size)  # [B, Hp, Wp, C]
    if not residual:
      mean = jnp.zeros_like(mean)
    x = (x - mean) * self.img_range
    first = layers.conv2d(x, self.embed_dim, 3, name="conv_first", dtype=self.dtype)
    t = PatchEmbed(self.patch_norm, self.dtype, name="patch_embed")(first)  # [B, Hp, Wp, E]
    feats = []
    n = len(self.depths)
    for i in range(n):
      t = RSTB(
          num_heads=self.num_heads[i],
          window_size=self.window_size,
          mlp_ratio=self.mlp_ratio,
          relative_position_bias=self.relative_position_bias,
          shift_mask=self.shift_mask,
          qkv_bias=self.qkv_bias,
          dtype=self.dtype,
          depth=self.depths[i],
          name=self.layer_name(i),
      )(t)
      if i >= n // 2:
        feats.append(t)
    t = _layer_norm(self.dtype, "norm")(t)
    res = layers.conv2d(t, self.embed_dim, 3, name="conv_after_body", dtype=self.dtype) + first
    y = layers.conv2d(res, self.img_channels, 3, name="conv_last", dtype=self.dtype)
    if residual:
      y = x + y
    y = (y / self.img_range + mean)[:, :h, :w, :]
    if return_decoder_features:
      return y, feats
    return y

  def check_config(self) -> None:
    """Raises ValueError naming config.model keys for settings no input can run."""
    depths, heads = tuple(self.depths), tuple(self.num_heads)
    if len(depths) != len(heads) or not depths:
      raise ValueError(
          f"config.model: depths {depths} and num_heads {heads} must be non-empty "
          f"and of the same length (one entry per RSTB)."
      )
    for nh in heads:
      if self.embed_dim % nh:
        raise ValueError(
            f"config.model: embed_dim {self.embed_dim} does not split into {nh} " f"heads."
        )
    if self.window_size < 1:
      raise ValueError(f"config.model.window_size={self.window_size} must be >= 1.")


# Every config.model key of this model, None = the preset's / field's value (config_lib).
CONFIG_DEFAULTS = common.config_defaults(SwinIR, unset=True, preset=None)


def create(config) -> SwinIR:
  """SwinIR from config.model: `preset` (a key of PRESETS) and/or any field of SwinIR,
  dtype ('float32' | 'bfloat16'); explicit keys override the preset. Only the official
  restoration head (upscale 1, upsampler '', '1conv') is built."""
  return common.create(SwinIR, PRESETS, config, defaults=CONFIG_DEFAULTS)
