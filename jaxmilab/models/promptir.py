"""PromptIR (Potlapalli et al., NeurIPS 2023), the all-in-one Restormer with prompts, in NHWC.

Follows va1shn9v/PromptIR `net/model.py` and the `PromptIR` of MILab-PKU/dcpt
`basicsr/archs/promptir_arch.py` (DCPT's PromptIR results, `dcpt_promptir_5d.pth`). The
network is Restormer (the same `ushaped.RestormerBlocks` body and blocks, 'WithBias' LayerNorm with
eps 1e-5, softmax attention, PyTorch default init) with a prompt block on each of the three decoder
levels, applied after the latent and after decoder levels 3 and 2:
  prompt = conv3x3(bilinear_resize(sum_l softmax(Linear(GAP(x)))_l * P_l, (H, W)))
  x = reduce_noise_level{k}(noise_level{k}(concat[x, prompt]))   (a TransformerBlock on the
      concatenation with heads[2] heads, then a conv 1x1 back to the level's width)
with learnable prompt components P [prompt_len, D, S, S] (torch.rand init). The channel counts
the official code writes as constants for dim 48 (reduce_chan_level3 takes 2*dim + 192,
noise_level3 4*dim + 512, noise_level2 2*dim + 224, reduce_noise_level2 -> 4*dim) are, in
terms of dim and the prompt widths (p1, p2, p3) = (64, 128, 320):
  latent:  8d + p3 -> noise_level3 -> reduce_noise_level3 -> 4d; up4_3 (Upsample(4d)) -> 2d;
           concat enc3 (4d) -> reduce_chan_level3 -> 4d
  level 3: 4d + p2 -> noise_level2 -> reduce_noise_level2 -> 4d; up3_2 -> 2d; concat enc2
           (2d) -> reduce_chan_level2 -> 2d
  level 2: 2d + p1 -> noise_level1 -> reduce_noise_level1 -> 2d; up2_1 -> d; concat enc1 -> 2d
which is how this module computes them (equal to the official numbers for dim 48).

"promptir" and "promptir_dcpt" are the same network: DCPT's copy only drops six modules that
the official file creates but never uses (chnl_reduce1-3, reduce_noise_channel_1-3; a converter
skips their keys) and adds a `hook` early exit. The bilinear resize is torch's
`F.interpolate(mode='bilinear', align_corners=False)` without antialiasing, built here as two
interpolation matrices (jax.image.resize would antialias when shrinking).

Padding: like Restormer, reflect to a multiple of 8 at the bottom/right, crop back (DCPT's
`pre_test` with window_size 8; the official PromptIR test crops images to multiples of 16).

Decoder features (`return_decoder_features=True`): the outputs of the decoder_level3,
decoder_level2, decoder_level1 stages (before the prompt fusion of their level), coarse to fine:
[B, Hp/4, Wp/4, 4*dim], [B, Hp/2, Wp/2, 2*dim], [B, Hp, Wp, 2*dim] (Hp, Wp = padded size).
The released DCPT code does not say which modules its PromptIR hooks (its options are not
published, and `forward(hook=True)` returns before decoder_level1); these are the stage
outputs its distillation model hooks for Restormer (last block of each decoder level).

Parameter names: as Restormer's (restormer.py; stages `encoder_level1_0`, ..., norms `norm1/scale`,
`norm1/bias`, conv OIHW -> HWIO), plus
  torch                                         flax
  noise_level3.<block>                          noise_level3/<block>
  reduce_noise_level3.weight                    reduce_noise_level3/kernel
  prompt1.prompt_param [1, L, D, S, S]          prompt1/prompt_param [L, S, S, D]
                                                  (`p[0].transpose(0, 2, 3, 1)`)
  prompt1.linear_layer.weight [L, C] / .bias    prompt1/linear_layer/kernel [C, L] / bias
  prompt1.conv3x3.weight                        prompt1/conv3x3/kernel

Implementation: `PromptIR` is `ushaped.RestormerBlocks` with the prompt fusion as its `fuse`
hook; every conv is an `nn.Conv` (`ushaped.conv`), which MaskDCPT's masking acts on.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab.models import common
from jaxmilab.models import layers
from jaxmilab.models import ushaped

Dtype = Any

# va1shn9v/PromptIR net/model.py defaults (= MILab-PKU/dcpt promptir_arch.py, used with its
# defaults by test_PromptIR_5d.yml): Restormer dims, 'WithBias' LN (eps 1e-5), softmax,
# prompts (dim, len, size) = (64, 5, 64), (128, 5, 32), (320, 5, 16) for levels 1, 2, 3.
_OFFICIAL = dict(
    dim=48,
    num_blocks=(4, 6, 6, 8),
    num_refinement_blocks=4,
    heads=(1, 2, 4, 8),
    ffn_expansion_factor=2.66,
    bias=False,
    layernorm_type="WithBias",
    layernorm_eps=1e-5,
    attention="softmax",
    normal_init=False,
    prompt_dims=(64, 128, 320),
    prompt_len=5,
    prompt_sizes=(64, 32, 16),
)
PRESETS: dict[str, dict[str, Any]] = {
    "promptir": dict(_OFFICIAL),
    "promptir_dcpt": dict(_OFFICIAL),
    # Tiny, for tests; prompt sizes chosen so a 24x16 (padded) input resizes prompts both up
    # and down (level maps 12x8, 6x4, 3x2).
    "promptir_tiny": dict(
        _OFFICIAL,
        dim=8,
        num_blocks=(1, 1, 1, 1),
        num_refinement_blocks=1,
        heads=(1, 2, 2, 4),
        prompt_dims=(4, 8, 16),
        prompt_len=3,
        prompt_sizes=(10, 4, 3),
    ),
}
PRESETS["promptir_dcpt_tiny"] = dict(PRESETS["promptir_tiny"])
# Width of the map entering the prompt fusion of level k, in units of dim (module docstring).
_FUSE_WIDTH = {3: 8, 2: 4, 1: 2}
# ... and of its output (reduce_noise_level{k}).
_FUSED_WIDTH = {3: 4, 2: 4, 1: 2}


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of torch bilinear interpolation (align_corners=False, no antialias).

  src = (dst + 0.5) * in / out - 0.5, clamped at 0; rows mix floor(src) and floor(src) + 1
  (clamped to the last pixel) with weights 1 - frac and frac.
  """
  m = np.zeros((out_size, in_size), np.float64)
  scale = in_size / out_size
  for o in range(out_size):
    src = max((o + 0.5) * scale - 0.5, 0.0)
    i0 = min(int(src), in_size - 1)
    i1 = min(i0 + 1, in_size - 1)
    frac = src - i0
    m[o, i0] += 1.0 - frac
    m[o, i1] += frac
  return m.astype(np.float32)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """[B, h, w, C] -> [B, height, width, C] like torch F.interpolate(mode='bilinear')."""
  _, h, w, _ = x.shape
  if (h, w) == (height, width):
    return x
  mh = jnp.asarray(bilinear_matrix(h, height))
  mw = jnp.asarray(bilinear_matrix(w, width))
  return jnp.einsum("oh,bhwc,pw->bopc", mh, x.astype(jnp.float32), mw).astype(x.dtype)


class PromptGenBlock(nn.Module):
  """Input-conditioned prompt: softmax weights from the pooled input mix learned components."""

  prompt_dim: int
  prompt_len: int
  prompt_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    s, d, n = self.prompt_size, self.prompt_dim, self.prompt_len
    components = self.param(
        "prompt_param", nn.initializers.uniform(1.0), (n, s, s, d), jnp.float32
    )  # torch.rand
    emb = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [B, C]
    logits = nn.Dense(
        n,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernel_init=layers.torch_default_kernel_init,
        bias_init=layers.torch_default_bias_init(c),
        name="linear_layer",
    )(emb)
    weights = jax.nn.softmax(logits, axis=-1)  # [B, L]
    prompt = jnp.einsum("bl,lhwd->bhwd", weights, components)  # [B, S, S, D]
    prompt = resize_bilinear(prompt, h, w).astype(self.dtype)  # [B, H, W, D]
    return ushaped.conv(prompt, d, 3, name="conv3x3", use_bias=False, dtype=self.dtype)


class PromptIR(ushaped.RestormerBlocks):
  """PromptIR restorer on [B, H, W, img_channels] images in [0, 1]; see the module docstring.

  Attributes (besides those of ushaped.RestormerBlocks):
    prompt_dims: prompt widths (p1, p2, p3) of decoder levels 1, 2, 3.
    prompt_len: number of prompt components per level.
    prompt_sizes: spatial size of the components of levels 1, 2, 3.
  """

  layernorm_type: str = "WithBias"
  prompt_dims: Sequence[int] = (64, 128, 320)
  prompt_len: int = 5
  prompt_sizes: Sequence[int] = (64, 32, 16)

  def fuse(self, x: jax.Array, level: int) -> jax.Array:
    """x + prompt of `level` -> noise_level{level} block -> reduce_noise_level{level} conv."""
    prompt = PromptGenBlock(
        self.prompt_dims[level - 1],
        self.prompt_len,
        self.prompt_sizes[level - 1],
        self.dtype,
        name=f"prompt{level}",
    )(x)
    x = jnp.concatenate([x, prompt], axis=-1)
    # The noise_level blocks use level 3's heads (heads[2]) at every level, as the official code.
    x = self.block(2)(name=f"noise_level{level}")(x)
    return self._conv(x, _FUSED_WIDTH[level] * self.dim, 1, f"reduce_noise_level{level}")

  def check_config(self) -> None:
    super().check_config()
    prompt_dims, prompt_sizes = tuple(self.prompt_dims), tuple(self.prompt_sizes)
    if len(prompt_dims) != 3 or len(prompt_sizes) != 3:
      raise ValueError(
          f"config.model.prompt_dims {prompt_dims} and prompt_sizes {prompt_sizes} "
          f"need 3 entries (decoder levels 1, 2, 3)."
      )
    nh = self.heads[2]
    for k in (1, 2, 3):
      c = _FUSE_WIDTH[k] * self.dim + prompt_dims[k - 1]
      if c % nh:
        raise ValueError(
            f"config.model: noise_level{k} width {c} (level width + prompt_dims"
            f"[{k - 1}]) does not split into heads[2]={nh}."
        )


# Every config.model key of this model, None = the preset's / field's value (config_lib).
CONFIG_DEFAULTS = common.config_defaults(PromptIR, unset=True, preset=None)


def create(config) -> PromptIR:
  """PromptIR from config.model: `preset` (a key of PRESETS) and/or Restormer's keys plus
  prompt_dims, prompt_len, prompt_sizes; dtype ('float32' | 'bfloat16'); explicit keys
  override the preset. (The official `decoder=False` switch is not offered: the official
  network does not run without prompts, its up4_3 expects the reduced 4*dim latent.)"""
  return common.create(PromptIR, PRESETS, config, defaults=CONFIG_DEFAULTS)
