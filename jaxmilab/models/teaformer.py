"""TEAFormer (Hu et al., ICCV 2025, arXiv 2506.18520): a restoration transformer built only from
translation-equivariant parts, with TEA attention as its token mixer. NHWC, flax.linen.

No official code is public; the paper describes the network as a restoration transformer
whose token mixer is TEA attention, and this module reads that as Restormer's U-shaped layout
(`jaxmilab.models.ushaped`, the body Restormer and PromptIR use) with the channel attention
(MDTA) replaced by TEA attention (ASSUMPTION: the layout is ours):

  patch_embed (conv 3x3) -> encoder levels 1-3 -> latent (level 4) -> decoder levels 3-1
  -> refinement -> conv 3x3 to the image, plus the input (global residual).
  Downsample: conv 3x3 to C/2 + pixel-unshuffle 2; upsample: conv 3x3 to 2C + pixel-shuffle 2;
  decoder skips concatenate the encoder map (levels 3, 2 then reduce with a conv 1x1).
  Block: x + proj(TEA(qkv(LN(x)))), then x + GDFN(LN(x)), where qkv and proj are 1x1 convs
  (nn.Conv `attn/qkv`, `attn/project_out`), TEA is `jaxmilab.kernels.tea_attention` per head
  (window / top_k / pool of the block's level) and GDFN is Restormer's gated depthwise-conv FFN.

Translation equivariance (what holds exactly, and where):
  * Convolutions (zero 'same' padding), 1x1 convs, LayerNorm over channels, GELU gating and the
    residuals commute with shifts away from the image borders.
  * TEA attention commutes with shifts for queries at least window//2 tokens from a border
    (NATTEN-clamped windows shift their window at borders); there is no positional bias. Its
    global keys are means over a fixed pool x pool grid: a shift permutes them only when it is
    a multiple of `pool` tokens at that level.
  * Pixel-(un)shuffle at level l groups 2^l x 2^l pixel blocks on a fixed grid.
  Hence the network is equivariant to shifts that are multiples of
  `equivariance_step` = lcm(2^3, 2^l * pool_l over levels l = 0..3) pixels (8 for the default
  pools (8, 4, 2, 1)), and only away from the borders; because the pooled keys see the whole
  image, "away from the borders" also requires that the content near a border is the same
  before and after the shift (tests/test_teaformer.py builds such inputs and documents the
  margin). The reflect padding of `__call__` only acts on sizes that are not multiples of 8.

Padding: like Restormer, the input is reflect-padded at the bottom/right to a multiple of 8
(three 2x downsamplings) and the output is cropped back. `pool` is NOT padded for: pool_l must
divide the level-l map of the padded input, or `__call__` raises a ValueError naming the level,
its size and `config.model.pool`. With pools (8, 4, 2, 1) (one global key per 8x8 pixel block at
every level) any input size works.

Decoder features (`return_decoder_features=True`), coarse to fine as Restormer's:
[decoder_level3 [B, Hp/4, Wp/4, 4*dim], decoder_level2 [B, Hp/2, Wp/2, 2*dim],
decoder_level1 [B, Hp, Wp, 2*dim]] at the padded size Hp x Wp.

MaskDCPT: every convolution is its own `nn.Conv` (via `layers.conv2d`), the attention's
input projection is the nn.Conv named `qkv`, every LayerNorm is a `layers.ChannelLayerNorm`,
so MaskDCPT's masking interceptor (`nn.intercept_methods`) sees them as it does in Restormer.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab.kernels import platform
from jaxmilab.kernels import tea_attention
from jaxmilab.models import common
from jaxmilab.models import ushaped

Dtype = Any
PAD_MULTIPLE = ushaped.PAD_MULTIPLE  # three 2x downsamplings
LEVEL_NAMES = (
    "level 1 (encoder/decoder_level1, refinement)",
    "level 2",
    "level 3",
    "level 4 (latent)",
)
IMPLEMENTATIONS = ("auto", "xla", "pallas")

# Architecture choices are explained in configs/teaformer.py. The paper-size preset is
# Restormer's size (swz30 defaults: dim 48, blocks [4, 6, 6, 8], refinement 4, heads
# [1, 2, 4, 8], GDFN 2.66, no conv bias); the TEA settings are ours (no official code).
_BASE = dict(
    ffn_expansion_factor=2.66,
    bias=False,
    layernorm_type="WithBias",
    layernorm_eps=1e-5,
    implementation="auto",
)
PRESETS: dict[str, dict[str, Any]] = {
    "teaformer": dict(
        _BASE,
        dim=48,
        num_blocks=(4, 6, 6, 8),
        num_refinement_blocks=4,
        heads=(1, 2, 4, 8),
        window=(15, 11, 9, 7),
        top_k=(32, 32, 24, 16),
        pool=(8, 4, 2, 1),
    ),
    # Fits 64-px crops (latent 8x8): the CPU quickstart. Kept this small because XLA's CPU
    # gradient of the GDFN depthwise convs dominates a step (not the TEA attention).
    "teaformer_small": dict(
        _BASE,
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 2, 2, 4),
        window=(5, 5, 3, 3),
        top_k=(8, 8, 4, 4),
        pool=(8, 4, 2, 1),
    ),
    # Fits 32-px crops (latent 4x4): tests and smoke runs.
    "teaformer_tiny": dict(
        _BASE,
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 2, 2, 4),
        window=(3, 3, 3, 3),
        top_k=(4, 4, 4, 4),
        pool=(8, 4, 2, 1),
    ),
}


def resolve_implementation(name: str) -> str:
  """ "auto" -> "pallas" on GPU/TPU, "xla" elsewhere (the Pallas kernel needs an accelerator)."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.implementation={name!r}; use one of {IMPLEMENTATIONS}.")
  if name != "auto":
    return name
  return "pallas" if platform.on_accelerator() else "xla"  # traced-for platform (AOT: the TPU's)


class TEAAttention(nn.Module):
  """qkv (conv 1x1 to 3C) -> per-head TEA attention -> project_out (conv 1x1)."""

  num_heads: int
  window: int
  top_k: int
  pool: int | None
  implementation: str = "xla"
  bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    q, k, v = ushaped.split_qkv_heads(x, self.num_heads, use_bias=self.bias, dtype=self.dtype)
    q, k, v = (t.reshape(b, h, w, self.num_heads, c // self.num_heads) for t in (q, k, v))
    out = tea_attention(
        q,
        k,
        v,
        window=self.window,
        top_k=self.top_k,
        pool=self.pool,
        implementation=resolve_implementation(self.implementation),
    )
    out = out.reshape(b, h, w, c)  # [B, H, W, C]
    return ushaped.conv(out, c, 1, name="project_out", use_bias=self.bias, dtype=self.dtype)


class TEABlock(nn.Module):
  """x + TEAAttention(LN(x)); x + GDFN(LN(x)). Width is the input's channel count."""

  num_heads: int
  window: int
  top_k: int
  pool: int | None
  ffn_expansion_factor: float
  implementation: str = "xla"
  bias: bool = False
  layernorm_type: str = "WithBias"
  layernorm_eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = lambda name: ushaped.channel_norm(
        self.layernorm_type, self.layernorm_eps, self.dtype, name
    )
    x = x + TEAAttention(
        self.num_heads,
        self.window,
        self.top_k,
        self.pool,
        self.implementation,
        self.bias,
        self.dtype,
        name="attn",
    )(norm("norm1")(x))
    x = x + ushaped.FeedForward(
        ffn_expansion_factor=self.ffn_expansion_factor, bias=self.bias, dtype=self.dtype, name="ffn"
    )(norm("norm2")(x))
    return x


class TEAFormer(ushaped.UShapedRestorer):
  """TEAFormer restorer on [B, H, W, img_channels] images in [0, 1]; see the module docstring.

  Attributes (besides ushaped.UShapedRestorer's dim, num_blocks, num_refinement_blocks, heads,
  bias, normal_init, img_channels, dtype):
    window, top_k, pool: TEA attention settings of levels 1-4 (pool None/0: no global keys).
    ffn_expansion_factor: GDFN hidden width factor.
    implementation: "xla", "pallas" or "auto" (pallas on GPU/TPU, xla elsewhere).
    layernorm_type: 'WithBias' or 'BiasFree' (Restormer's two LayerNorms).
    layernorm_eps: LayerNorm epsilon.
  """

  window: Sequence[int] = (15, 11, 9, 7)
  top_k: Sequence[int] = (32, 32, 24, 16)
  pool: Sequence[int | None] = (8, 4, 2, 1)
  ffn_expansion_factor: float = 2.66
  implementation: str = "auto"
  layernorm_type: str = "WithBias"
  layernorm_eps: float = 1e-5

  @property
  def equivariance_step(self) -> int:
    """Shifts (pixels) that are multiples of this commute with the network away from borders."""
    step = PAD_MULTIPLE
    for level, p in enumerate(self.pool):
      if p:
        step = math.lcm(step, 2**level * int(p))
    return step

  def block(self, level: int) -> ushaped.ModuleDef:
    return functools.partial(
        TEABlock,
        num_heads=self.heads[level],
        window=self.window[level],
        top_k=self.top_k[level],
        pool=self.pool[level] or None,
        ffn_expansion_factor=self.ffn_expansion_factor,
        implementation=self.implementation,
        bias=self.bias,
        layernorm_type=self.layernorm_type,
        layernorm_eps=self.layernorm_eps,
        dtype=self.dtype,
    )

  def check_size(self, height: int, width: int) -> None:
    self.check_token_maps(height, width)

  def check_token_maps(self, height: int, width: int) -> None:
    """Raises ValueError unless every level's map of a padded height x width input fits its
    window (<= the map) and pool (divides the map); names the level and the config key."""
    hp = height + (-height) % PAD_MULTIPLE
    wp = width + (-width) % PAD_MULTIPLE
    for level in range(4):
      mh, mw = hp >> level, wp >> level
      where = (
          f"TEAFormer {LEVEL_NAMES[level]}: its token map is {mh}x{mw} for a {height}x"
          f"{width} input (padded to {hp}x{wp}, downsampled {2 ** level}x)"
      )
      if self.window[level] > min(mh, mw):
        raise ValueError(
            f"{where}; config.model.window[{level}]={self.window[level]} must be <= "
            f"{min(mh, mw)}. Use larger images (config.data.patch_size / eval_size "
            f"of at least {self.window[level] * 2 ** level}) or a smaller window."
        )
      p = self.pool[level]
      if p and (mh % p or mw % p):
        raise ValueError(
            f"{where}; config.model.pool[{level}]={p} must divide it. Use image "
            f"sizes that are multiples of {2 ** level * p}, or another pool (pools "
            f"(8, 4, 2, 1) fit every size)."
        )

  def check_config(self) -> None:
    """Checks that need no input size (UShapedRestorer's, then the TEA settings)."""
    super().check_config()
    for level in range(4):
      window, top_k = self.window[level], self.top_k[level]
      if window % 2 == 0:
        raise ValueError(
            f"config.model.window[{level}]={window} must be odd (a window "
            f"centred on its query)."
        )
      if top_k > window**2:
        raise ValueError(
            f"config.model.top_k[{level}]={top_k} must be <= window**2 = "
            f"{window ** 2} (config.model.window[{level}]={window})."
        )
    resolve_implementation(self.implementation)  # validates the name


def _per_level(value: Any, key: str, allow_none: bool = False) -> tuple:
  """An int (same at every level) or 4 values -> a 4-tuple; ValueError naming config.model.key."""
  values = (value,) * 4 if value is None or isinstance(value, int) else tuple(value)
  if len(values) != 4:
    raise ValueError(
        f"config.model.{key}={value!r} needs one value or 4 (levels 1-3 and the " f"latent)."
    )
  out = []
  for level, v in enumerate(values):
    if allow_none and (v is None or v == 0):
      out.append(None)
    elif isinstance(v, int) and not isinstance(v, bool) and v >= 1:
      out.append(int(v))
    else:
      raise ValueError(
          f"config.model.{key}[{level}]={v!r} must be an integer >= 1"
          f"{' (or None/0: no global keys)' if allow_none else ''}."
      )
  return tuple(out)


def _prepare(settings: dict[str, Any]) -> dict[str, Any]:
  """window / top_k / pool: one int for every level, or one value per level."""
  out = dict(settings)
  for key in ("window", "top_k", "pool"):
    if key in out:
      out[key] = _per_level(out[key], key, allow_none=key == "pool")
  return out


# Every config.model key of this model, None = the preset's / field's value (config_lib).
CONFIG_DEFAULTS = common.config_defaults(TEAFormer, unset=True, preset=None)


def create(config) -> TEAFormer:
  """TEAFormer from config.model: `preset` (a key of PRESETS) and/or the keys dim, num_blocks,
  num_refinement_blocks, heads, window, top_k, pool (an int or one per level 1-4),
  ffn_expansion_factor, implementation ('auto' | 'xla' | 'pallas'), bias, layernorm_type,
  layernorm_eps, normal_init, img_channels (3), dtype ('float32' | 'bfloat16'); explicit keys
  override the preset. 'auto' picks the Pallas kernel on GPU/TPU and the XLA reference
  elsewhere."""
  return common.create(TEAFormer, PRESETS, config, defaults=CONFIG_DEFAULTS, prepare=_prepare)
