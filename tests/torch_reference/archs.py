"""PyTorch Restormer, PromptIR and SwinIR, transcribed from the official definitions.

Sources (read, then written anew, NCHW like the originals, with the same module names so
the state-dict keys equal the official ones):
  Restormer  swz30/Restormer basicsr/models/archs/restormer_arch.py ("official") and
             MILab-PKU/dcpt basicsr/archs/restormer_arch.py `Restormer` ("dcpt": ReLU attention,
             LN eps 1e-6, stages wrapped in SequentialTransformerBlock, N(0, .02) conv init).
  PromptIR   va1shn9v/PromptIR net/model.py ("official", with its six unused modules) and
             MILab-PKU/dcpt basicsr/archs/promptir_arch.py ("dcpt", without them).
  SwinIR     JingyunLiang/SwinIR models/network_swinir.py ("official": relative position
             bias, shift mask, reflect padding inside forward) and MILab-PKU/dcpt
             basicsr/archs/swinir_arch.py ("dcpt": neither bias nor mask, RSTBs named
             encode_layers.{i} / decode_layers{i}, no padding inside forward: DCPT pads in
             `SRModel.pre_test`). Only the restoration head (upsampler '', upscale 1).

Inference transcriptions: dropout / drop-path (identity in eval mode) are left out. Every
forward takes `return_decoder_features=False`; with True it returns (output, features) with
the features jaxmilab's flax models return (see their module docstrings), in NCHW.

The independent reference of tests/test_backbones.py and tests/test_convert.py (kept out of
the jaxmilab package: it is test code, not a component). torch is imported lazily (on the
first `build`), so collecting the tests works without it.
"""

from __future__ import annotations

import functools
import types
from typing import Any

# Official constructor defaults of each network, by jaxmilab preset name.
OFFICIAL_KWARGS: dict[str, dict[str, Any]] = {
    # swz30 defaults with the denoising LayerNorm (Denoising/Options/*.yml: BiasFree).
    "restormer": dict(variant="official", LayerNorm_type="BiasFree"),
    # MILab-PKU/dcpt options/all_in_one/test/test_Restormer_5d.yml: `type: Restormer`, defaults.
    "restormer_dcpt": dict(variant="dcpt"),
    "promptir": dict(variant="official"),
    "promptir_dcpt": dict(variant="dcpt"),
    # JingyunLiang/SwinIR main_test_swinir.py, task color_dn.
    "swinir": dict(
        variant="official",
        img_size=128,
        embed_dim=180,
        depths=[6] * 6,
        num_heads=[6] * 6,
        window_size=8,
        mlp_ratio=2.0,
    ),
    # MILab-PKU/dcpt options/all_in_one/test/test_SwinIR_5d.yml.
    "swinir_dcpt": dict(
        variant="dcpt",
        img_size=128,
        embed_dim=180,
        depths=[6] * 6,
        num_heads=[6] * 6,
        window_size=8,
        mlp_ratio=2.0,
    ),
}


def build(name: str, **overrides):
  """The PyTorch network of a jaxmilab preset name (see OFFICIAL_KWARGS), official defaults
  updated by `overrides`; e.g. build("swinir_dcpt", embed_dim=12, depths=[2, 2])."""
  family = name.split("_")[0]
  if name not in OFFICIAL_KWARGS:
    raise ValueError(
        f"torch_reference.archs.build: unknown network {name!r}; choose one of "
        f"{sorted(OFFICIAL_KWARGS)}."
    )
  kwargs = dict(OFFICIAL_KWARGS[name], **overrides)
  cls = {"restormer": "Restormer", "promptir": "PromptIR", "swinir": "SwinIR"}[family]
  return getattr(_classes(), cls)(**kwargs)


def reflect_pad(x, multiple: int):
  """DCPT's `pre_test` / the official test scripts: F.pad(x, (0, pw, 0, ph), 'reflect')."""
  import torch  # pylint: disable=g-import-not-at-top

  h, w = x.shape[-2:]
  ph = (multiple - h % multiple) % multiple
  pw = (multiple - w % multiple) % multiple
  return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")


@functools.lru_cache(maxsize=None)
def _classes() -> types.SimpleNamespace:
  """Defines the torch modules on first use (imports torch)."""
  import torch  # pylint: disable=g-import-not-at-top

  nn = torch.nn
  F = torch.nn.functional

  # ------------------------------------------------------------------------------------------
  # Restormer building blocks (shared by PromptIR).

  class BiasFreeLN(nn.Module):
    """x / sqrt(var + eps) * weight over the last axis (no mean in the numerator)."""

    def __init__(self, dim, eps):
      super().__init__()
      self.weight = nn.Parameter(torch.ones(dim))
      self.eps = eps

    def forward(self, x):
      var = x.var(-1, keepdim=True, unbiased=False)
      return x / torch.sqrt(var + self.eps) * self.weight

  class WithBiasLN(nn.Module):

    def __init__(self, dim, eps):
      super().__init__()
      self.weight = nn.Parameter(torch.ones(dim))
      self.bias = nn.Parameter(torch.zeros(dim))
      self.eps = eps

    def forward(self, x):
      mu = x.mean(-1, keepdim=True)
      var = x.var(-1, keepdim=True, unbiased=False)
      return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias

  class LayerNorm(nn.Module):
    """Channel LayerNorm of an NCHW map through the tokens ("b c h w -> b (h w) c")."""

    def __init__(self, dim, layernorm_type, eps):
      super().__init__()
      self.body = BiasFreeLN(dim, eps) if layernorm_type == "BiasFree" else WithBiasLN(dim, eps)

    def forward(self, x):
      b, c, h, w = x.shape
      t = self.body(x.flatten(2).transpose(1, 2))
      return t.transpose(1, 2).reshape(b, c, h, w)

  class FeedForward(nn.Module):

    def __init__(self, dim, ffn_expansion_factor, bias):
      super().__init__()
      hidden = int(dim * ffn_expansion_factor)
      self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
      self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, 1, 1, groups=hidden * 2, bias=bias)
      self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
      x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
      return self.project_out(F.gelu(x1) * x2)

  class Attention(nn.Module):
    """MDTA; `relu=True` is DCPT's change (F.relu in place of softmax)."""

    def __init__(self, dim, num_heads, bias, relu):
      super().__init__()
      self.num_heads = num_heads
      self.relu = relu
      self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
      self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
      self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, 1, 1, groups=dim * 3, bias=bias)
      self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x):
      b, c, h, w = x.shape
      q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
      # "b (head c) h w -> b head c (h w)"
      q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
      q = F.normalize(q, dim=-1)
      k = F.normalize(k, dim=-1)
      attn = (q @ k.transpose(-2, -1)) * self.temperature
      attn = F.relu(attn) if self.relu else attn.softmax(dim=-1)
      out = (attn @ v).reshape(b, c, h, w)
      return self.project_out(out)

  class TransformerBlock(nn.Module):

    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, layernorm_type, eps, relu):
      super().__init__()
      self.norm1 = LayerNorm(dim, layernorm_type, eps)
      self.attn = Attention(dim, num_heads, bias, relu)
      self.norm2 = LayerNorm(dim, layernorm_type, eps)
      self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
      x = x + self.attn(self.norm1(x))
      return x + self.ffn(self.norm2(x))

  class OverlapPatchEmbed(nn.Module):

    def __init__(self, in_c, embed_dim):
      super().__init__()
      self.proj = nn.Conv2d(in_c, embed_dim, 3, 1, 1, bias=False)

    def forward(self, x):
      return self.proj(x)

  class Downsample(nn.Module):

    def __init__(self, n_feat):
      super().__init__()
      self.body = nn.Sequential(
          nn.Conv2d(n_feat, n_feat // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2)
      )

    def forward(self, x):
      return self.body(x)

  class Upsample(nn.Module):

    def __init__(self, n_feat):
      super().__init__()
      self.body = nn.Sequential(
          nn.Conv2d(n_feat, n_feat * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2)
      )

    def forward(self, x):
      return self.body(x)

  class SequentialTransformerBlock(nn.Module):
    """DCPT's stage wrapper (adds `.body` to the keys; its hook target)."""

    def __init__(self, blocks):
      super().__init__()
      self.body = nn.Sequential(*blocks)

    def forward(self, x):
      return self.body(x)

  class Restormer(nn.Module):
    """swz30 Restormer ("official") or DCPT's `Restormer` ("dcpt"); scale 1, no dual-pixel."""

    def __init__(
        self,
        variant="official",
        inp_channels=3,
        out_channels=3,
        dim=48,
        num_blocks=(4, 6, 6, 8),
        num_refinement_blocks=4,
        heads=(1, 2, 4, 8),
        ffn_expansion_factor=2.66,
        bias=False,
        LayerNorm_type=None,
    ):  # pylint: disable=invalid-name
      super().__init__()
      dcpt = variant == "dcpt"
      if variant not in ("official", "dcpt"):
        raise ValueError(f"Restormer variant {variant!r}: 'official' or 'dcpt'.")
      if LayerNorm_type is None:  # official default 'WithBias', DCPT default 'BiasFree'
        LayerNorm_type = "BiasFree" if dcpt else "WithBias"
      eps = 1e-6 if dcpt else 1e-5
      block_bias = False if dcpt else bias  # DCPT hard-codes bias=False in attention / FFN

      def stage(d, h, n):
        blocks = [
            TransformerBlock(d, h, ffn_expansion_factor, block_bias, LayerNorm_type, eps, dcpt)
            for _ in range(n)
        ]
        return SequentialTransformerBlock(blocks) if dcpt else nn.Sequential(*blocks)

      self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
      self.encoder_level1 = stage(dim, heads[0], num_blocks[0])
      self.down1_2 = Downsample(dim)
      self.encoder_level2 = stage(dim * 2, heads[1], num_blocks[1])
      self.down2_3 = Downsample(dim * 2)
      self.encoder_level3 = stage(dim * 4, heads[2], num_blocks[2])
      self.down3_4 = Downsample(dim * 4)
      self.latent = stage(dim * 8, heads[3], num_blocks[3])
      self.up4_3 = Upsample(dim * 8)
      self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
      self.decoder_level3 = stage(dim * 4, heads[2], num_blocks[2])
      self.up3_2 = Upsample(dim * 4)
      self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
      self.decoder_level2 = stage(dim * 2, heads[1], num_blocks[1])
      self.up2_1 = Upsample(dim * 2)
      self.decoder_level1 = stage(dim * 2, heads[0], num_blocks[0])
      self.refinement = stage(dim * 2, heads[0], num_refinement_blocks)
      self.output = nn.Conv2d(dim * 2, out_channels, 3, 1, 1, bias=bias)
      if dcpt:
        for m in self.modules():
          if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
              nn.init.zeros_(m.bias)

    def forward(self, inp_img, return_decoder_features=False):
      enc1 = self.encoder_level1(self.patch_embed(inp_img))
      enc2 = self.encoder_level2(self.down1_2(enc1))
      enc3 = self.encoder_level3(self.down2_3(enc2))
      latent = self.latent(self.down3_4(enc3))
      dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
      dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
      dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
      out = self.output(self.refinement(dec1)) + inp_img
      return (out, [dec3, dec2, dec1]) if return_decoder_features else out

  # ------------------------------------------------------------------------------------------
  # PromptIR.

  class PromptGenBlock(nn.Module):

    def __init__(self, prompt_dim, prompt_len, prompt_size, lin_dim):
      super().__init__()
      self.prompt_param = nn.Parameter(
          torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size)
      )
      self.linear_layer = nn.Linear(lin_dim, prompt_len)
      self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, 3, 1, 1, bias=False)

    def forward(self, x):
      b, _, h, w = x.shape
      weights = F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # [B, L]
      prompt = weights[:, :, None, None, None] * self.prompt_param.repeat(b, 1, 1, 1, 1)
      prompt = F.interpolate(prompt.sum(dim=1), (h, w), mode="bilinear")
      return self.conv3x3(prompt)

  class PromptIR(nn.Module):
    """PromptIR; the official file's constants for dim 48 written as functions of dim and the
    prompt widths (p1, p2, p3) = prompt_dims, equal for the defaults."""

    def __init__(
        self,
        variant="official",
        inp_channels=3,
        out_channels=3,
        dim=48,
        num_blocks=(4, 6, 6, 8),
        num_refinement_blocks=4,
        heads=(1, 2, 4, 8),
        ffn_expansion_factor=2.66,
        bias=False,
        LayerNorm_type="WithBias",  # pylint: disable=invalid-name
        prompt_dims=(64, 128, 320),
        prompt_len=5,
        prompt_sizes=(64, 32, 16),
    ):
      super().__init__()
      if variant not in ("official", "dcpt"):
        raise ValueError(f"PromptIR variant {variant!r}: 'official' or 'dcpt'.")
      p1, p2, p3 = prompt_dims
      d = dim

      def block(c, h):
        return TransformerBlock(c, h, ffn_expansion_factor, bias, LayerNorm_type, 1e-5, False)

      def stage(c, h, n):
        return nn.Sequential(*[block(c, h) for _ in range(n)])

      self.patch_embed = OverlapPatchEmbed(inp_channels, d)
      self.prompt1 = PromptGenBlock(p1, prompt_len, prompt_sizes[0], 2 * d)  # lin_dim 96
      self.prompt2 = PromptGenBlock(p2, prompt_len, prompt_sizes[1], 4 * d)  # 192
      self.prompt3 = PromptGenBlock(p3, prompt_len, prompt_sizes[2], 8 * d)  # 384
      self.encoder_level1 = stage(d, heads[0], num_blocks[0])
      self.down1_2 = Downsample(d)
      self.encoder_level2 = stage(2 * d, heads[1], num_blocks[1])
      self.down2_3 = Downsample(2 * d)
      self.encoder_level3 = stage(4 * d, heads[2], num_blocks[2])
      self.down3_4 = Downsample(4 * d)
      self.latent = stage(8 * d, heads[3], num_blocks[3])
      self.up4_3 = Upsample(4 * d)
      self.reduce_chan_level3 = nn.Conv2d(2 * d + 4 * d, 4 * d, 1, bias=bias)  # 2d + 192
      self.noise_level3 = block(8 * d + p3, heads[2])  # 4d + 512
      self.reduce_noise_level3 = nn.Conv2d(8 * d + p3, 4 * d, 1, bias=bias)
      self.decoder_level3 = stage(4 * d, heads[2], num_blocks[2])
      self.up3_2 = Upsample(4 * d)
      self.reduce_chan_level2 = nn.Conv2d(4 * d, 2 * d, 1, bias=bias)
      self.noise_level2 = block(4 * d + p2, heads[2])  # 2d + 224
      self.reduce_noise_level2 = nn.Conv2d(4 * d + p2, 4 * d, 1, bias=bias)
      self.decoder_level2 = stage(2 * d, heads[1], num_blocks[1])
      self.up2_1 = Upsample(2 * d)
      self.noise_level1 = block(2 * d + p1, heads[2])  # 2d + 64
      self.reduce_noise_level1 = nn.Conv2d(2 * d + p1, 2 * d, 1, bias=bias)
      self.decoder_level1 = stage(2 * d, heads[0], num_blocks[0])
      self.refinement = stage(2 * d, heads[0], num_refinement_blocks)
      self.output = nn.Conv2d(2 * d, out_channels, 3, 1, 1, bias=bias)
      if variant == "official" and tuple(prompt_dims) == (64, 128, 320):
        # Created by va1shn9v/PromptIR but never used in forward (in its checkpoints' keys).
        self.chnl_reduce1 = nn.Conv2d(64, 64, 1, bias=bias)
        self.chnl_reduce2 = nn.Conv2d(128, 128, 1, bias=bias)
        self.chnl_reduce3 = nn.Conv2d(320, 256, 1, bias=bias)
        self.reduce_noise_channel_1 = nn.Conv2d(d + 64, d, 1, bias=bias)
        self.reduce_noise_channel_2 = nn.Conv2d(2 * d + 128, 2 * d, 1, bias=bias)
        self.reduce_noise_channel_3 = nn.Conv2d(4 * d + 256, 4 * d, 1, bias=bias)

    def forward(self, inp_img, return_decoder_features=False):
      enc1 = self.encoder_level1(self.patch_embed(inp_img))
      enc2 = self.encoder_level2(self.down1_2(enc1))
      enc3 = self.encoder_level3(self.down2_3(enc2))
      latent = self.latent(self.down3_4(enc3))
      latent = torch.cat([latent, self.prompt3(latent)], 1)
      latent = self.reduce_noise_level3(self.noise_level3(latent))
      x = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
      dec3 = self.decoder_level3(x)
      x = torch.cat([dec3, self.prompt2(dec3)], 1)
      x = self.reduce_noise_level2(self.noise_level2(x))
      x = self.reduce_chan_level2(torch.cat([self.up3_2(x), enc2], 1))
      dec2 = self.decoder_level2(x)
      x = torch.cat([dec2, self.prompt1(dec2)], 1)
      x = self.reduce_noise_level1(self.noise_level1(x))
      dec1 = self.decoder_level1(torch.cat([self.up2_1(x), enc1], 1))
      out = self.output(self.refinement(dec1)) + inp_img
      return (out, [dec3, dec2, dec1]) if return_decoder_features else out

  # ------------------------------------------------------------------------------------------
  # SwinIR.

  def window_partition(x, ws):  # [B, H, W, C] -> [nW*B, ws, ws, C]
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(-1, ws, ws, c)

  def window_reverse(windows, ws, h, w):  # [nW*B, ws, ws, C] -> [B, H, W, C]
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.contiguous().view(b, h, w, -1)

  class Mlp(nn.Module):

    def __init__(self, in_features, hidden_features):
      super().__init__()
      self.fc1 = nn.Linear(in_features, hidden_features)
      self.act = nn.GELU()
      self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
      return self.fc2(self.act(self.fc1(x)))

  class WindowAttention(nn.Module):

    def __init__(self, dim, ws, num_heads, qkv_bias, qk_scale, rel_bias):
      super().__init__()
      self.window_size = ws
      self.num_heads = num_heads
      self.scale = qk_scale or (dim // num_heads) ** -0.5
      self.rel_bias = rel_bias
      if rel_bias:
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * ws - 1) * (2 * ws - 1), num_heads)
        )
        coords = torch.stack(
            torch.meshgrid([torch.arange(ws), torch.arange(ws)], indexing="ij")
        )  # [2, ws, ws]
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
      self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
      self.proj = nn.Linear(dim, dim)

    def forward(self, x, mask=None):
      b_, n, c = x.shape
      qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, c // self.num_heads)
      q, k, v = qkv.permute(2, 0, 3, 1, 4)
      attn = (q * self.scale) @ k.transpose(-2, -1)
      if self.rel_bias:
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
      if mask is not None:
        nw = mask.shape[0]
        attn = attn.view(b_ // nw, nw, self.num_heads, n, n) + mask[None, :, None]
        attn = attn.view(-1, self.num_heads, n, n)
      attn = attn.softmax(dim=-1)
      return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))

  class SwinTransformerBlock(nn.Module):

    def __init__(
        self,
        dim,
        input_resolution,
        num_heads,
        ws,
        shift,
        mlp_ratio,
        qkv_bias,
        qk_scale,
        rel_bias,
        use_mask,
    ):
      super().__init__()
      if min(input_resolution) <= ws:  # official rule (depends on img_size, not the input)
        shift, ws = 0, min(input_resolution)
      self.window_size, self.shift_size, self.use_mask = ws, shift, use_mask
      self.norm1 = nn.LayerNorm(dim)
      self.attn = WindowAttention(dim, ws, num_heads, qkv_bias, qk_scale, rel_bias)
      self.norm2 = nn.LayerNorm(dim)
      self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def calculate_mask(self, h, w):
      ws, s = self.window_size, self.shift_size
      img_mask = torch.zeros((1, h, w, 1))
      cnt = 0
      for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
        for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
          img_mask[:, hs, wsl, :] = cnt
          cnt += 1
      mw = window_partition(img_mask, ws).view(-1, ws * ws)
      attn_mask = mw.unsqueeze(1) - mw.unsqueeze(2)
      return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)

    def forward(self, x, x_size):
      h, w = x_size
      b, _, c = x.shape
      ws, s = self.window_size, self.shift_size
      shortcut = x
      x = self.norm1(x).view(b, h, w, c)
      if s > 0:
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
      windows = window_partition(x, ws).view(-1, ws * ws, c)
      mask = self.calculate_mask(h, w).to(x.device) if (s > 0 and self.use_mask) else None
      x = window_reverse(self.attn(windows, mask).view(-1, ws, ws, c), ws, h, w)
      if s > 0:
        x = torch.roll(x, shifts=(s, s), dims=(1, 2))
      x = shortcut + x.reshape(b, h * w, c)
      return x + self.mlp(self.norm2(x))

  class BasicLayer(nn.Module):

    def __init__(
        self,
        dim,
        input_resolution,
        depth,
        num_heads,
        ws,
        mlp_ratio,
        qkv_bias,
        qk_scale,
        rel_bias,
        use_mask,
    ):
      super().__init__()
      self.blocks = nn.ModuleList(
          [
              SwinTransformerBlock(
                  dim,
                  input_resolution,
                  num_heads,
                  ws,
                  0 if i % 2 == 0 else ws // 2,
                  mlp_ratio,
                  qkv_bias,
                  qk_scale,
                  rel_bias,
                  use_mask,
              )
              for i in range(depth)
          ]
      )

    def forward(self, x, x_size):
      for blk in self.blocks:
        x = blk(x, x_size)
      return x

  class RSTB(nn.Module):
    """residual_group + conv 3x3 ('1conv'); PatchEmbed/UnEmbed (no params) inlined."""

    def __init__(
        self,
        dim,
        input_resolution,
        depth,
        num_heads,
        ws,
        mlp_ratio,
        qkv_bias,
        qk_scale,
        rel_bias,
        use_mask,
    ):
      super().__init__()
      self.residual_group = BasicLayer(
          dim,
          input_resolution,
          depth,
          num_heads,
          ws,
          mlp_ratio,
          qkv_bias,
          qk_scale,
          rel_bias,
          use_mask,
      )
      self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, x_size):
      b, _, c = x.shape
      y = self.residual_group(x, x_size).transpose(1, 2).view(b, c, *x_size)  # unembed
      return self.conv(y).flatten(2).transpose(1, 2) + x  # embed

  class PatchEmbed(nn.Module):

    def __init__(self, dim, patch_norm):
      super().__init__()
      self.norm = nn.LayerNorm(dim) if patch_norm else None

    def forward(self, x):
      x = x.flatten(2).transpose(1, 2)
      return self.norm(x) if self.norm is not None else x

  class SwinIR(nn.Module):
    """SwinIR with the denoising / JPEG head (upsampler '', upscale 1, '1conv')."""

    def __init__(
        self,
        variant="official",
        img_size=64,
        in_chans=3,
        embed_dim=96,
        depths=(6, 6, 6, 6),
        num_heads=(6, 6, 6, 6),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        img_range=1.0,
        patch_norm=True,
    ):
      super().__init__()
      if variant not in ("official", "dcpt"):
        raise ValueError(f"SwinIR variant {variant!r}: 'official' or 'dcpt'.")
      self.dcpt = variant == "dcpt"
      self.img_range = img_range
      self.window_size = window_size
      self.register_buffer(
          "mean",
          torch.tensor((0.4488, 0.4371, 0.4040)).view(1, 3, 1, 1)
          if in_chans == 3
          else torch.zeros(1, 1, 1, 1),
          persistent=False,
      )
      res = (img_size, img_size)
      self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
      self.patch_embed = PatchEmbed(embed_dim, patch_norm)
      rstb = lambda i: RSTB(
          embed_dim,
          res,
          depths[i],
          num_heads[i],
          window_size,
          mlp_ratio,
          qkv_bias,
          qk_scale,
          not self.dcpt,
          not self.dcpt,
      )
      self.num_layers = len(depths)
      half = self.num_layers // 2
      if self.dcpt:
        self.encode_layers = nn.ModuleList([rstb(i) for i in range(half)])
        for i in range(self.num_layers - half):
          setattr(self, f"decode_layers{i}", rstb(half + i))  # DCPT: depths[i + 3]
      else:
        self.layers = nn.ModuleList([rstb(i) for i in range(self.num_layers)])
      self.norm = nn.LayerNorm(embed_dim)
      self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
      self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)
      for m in self.modules():  # official _init_weights
        if isinstance(m, nn.Linear):
          nn.init.trunc_normal_(m.weight, std=0.02)
          if m.bias is not None:
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
          nn.init.ones_(m.weight)
          nn.init.zeros_(m.bias)

    def rstbs(self):
      """The RSTBs in forward order."""
      if not self.dcpt:
        return list(self.layers)
      half = self.num_layers // 2
      return list(self.encode_layers) + [
          getattr(self, f"decode_layers{i}") for i in range(self.num_layers - half)
      ]

    def forward(self, x, return_decoder_features=False):
      h, w = x.shape[2:]
      if not self.dcpt:  # official check_image_size; DCPT pads in pre_test
        x = reflect_pad(x, self.window_size)
      mean = self.mean.type_as(x)
      x = (x - mean) * self.img_range
      first = self.conv_first(x)
      b, c, hp, wp = first.shape
      t = self.patch_embed(first)
      feats = []
      rstbs = self.rstbs()
      for i, layer in enumerate(rstbs):
        t = layer(t, (hp, wp))
        if i >= len(rstbs) // 2:
          feats.append(t.transpose(1, 2).reshape(b, c, hp, wp))
      t = self.norm(t).transpose(1, 2).reshape(b, c, hp, wp)
      res = self.conv_after_body(t) + first
      x = x + self.conv_last(res)
      out = (x / self.img_range + mean)[:, :, :h, :w]
      return (out, feats) if return_decoder_features else out

  return types.SimpleNamespace(Restormer=Restormer, PromptIR=PromptIR, SwinIR=SwinIR)
