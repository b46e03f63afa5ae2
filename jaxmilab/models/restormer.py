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

Implementation: the U-shaped body, the blocks (MDTA `Attention`, GDFN `FeedForward`,
`TransformerBlock`) and the resampling are `jaxmilab.models.ushaped` (shared with PromptIR and
TEAFormer); this module declares the presets and `create`. Every convolution (including the QKV
projection `attn/qkv` and its depthwise `attn/qkv_dwconv`) is its own `nn.Conv` and every
LayerNorm a `layers.ChannelLayerNorm`, which is what MaskDCPT's masking interceptor acts on.
"""

from __future__ import annotations

from typing import Any

from jaxmilab.models import common
from jaxmilab.models import ushaped

# Official hyperparameters: swz30 Restormer defaults (dim 48, blocks [4, 6, 6, 8], refinement 4,
# heads [1, 2, 4, 8], ffn 2.66, bias False) with the denoising LN; DCPT's `Restormer` defaults
# (MILab-PKU/dcpt basicsr/archs/restormer_arch.py, used as-is by test_Restormer_5d.yml).
_OFFICIAL = dict(
    dim=48,
    num_blocks=(4, 6, 6, 8),
    num_refinement_blocks=4,
    heads=(1, 2, 4, 8),
    ffn_expansion_factor=2.66,
    bias=False,
    layernorm_type="BiasFree",
)
_TINY = dict(_OFFICIAL, dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 2, 4))
_SWZ30 = dict(layernorm_eps=1e-5, attention="softmax", normal_init=False)
_DCPT = dict(layernorm_eps=1e-6, attention="relu", normal_init=True)
PRESETS: dict[str, dict[str, Any]] = {
    "restormer": dict(_OFFICIAL, **_SWZ30),
    "restormer_dcpt": dict(_OFFICIAL, **_DCPT),
    "restormer_tiny": dict(_TINY, **_SWZ30),
    "restormer_dcpt_tiny": dict(_TINY, **_DCPT),
}


class Restormer(ushaped.RestormerBlocks):
  """Restormer restorer on [B, H, W, img_channels] images in [0, 1]; see the module docstring.

  Attributes: those of `ushaped.UShapedRestorer` (dim, num_blocks, num_refinement_blocks,
  heads, bias, normal_init, img_channels, dtype) and `ushaped.RestormerBlocks`
  (ffn_expansion_factor, layernorm_type, layernorm_eps, attention).
  """


# Every config.model key of this model, None = the preset's / field's value (config_lib).
CONFIG_DEFAULTS = common.config_defaults(Restormer, unset=True, preset=None)


def create(config) -> Restormer:
  """Restormer from config.model: `preset` (a key of PRESETS) and/or any field of Restormer
  (dim, num_blocks, num_refinement_blocks, heads, ffn_expansion_factor, bias, layernorm_type,
  layernorm_eps, attention, normal_init, img_channels, dtype 'float32' | 'bfloat16');
  explicit keys override the preset, unset fields keep the official (swz30) defaults."""
  return common.create(Restormer, PRESETS, config, defaults=CONFIG_DEFAULTS)
