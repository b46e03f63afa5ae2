"""PyTorch NAFNet, transcribed from the official definition (megvii-research/NAFNet
basicsr/models/archs/NAFNet_arch.py, as used by MILab-PKU/dcpt).

The independent reference of tests/test_nafnet.py and tests/test_convert.py, and the PyTorch
baseline of `python -m jaxmilab.benchmarks.train_step` (run from a checkout). Its LayerNorm2d
also serves tests/torch_reference/dcpt_classifier.py. Kept out of the jaxmilab package: it is
test code. torch is imported lazily (on the first `build` / `layer_norm_2d`).
"""

from __future__ import annotations

import functools
import types


def build(width, enc_blk_nums, middle_blk_num, dec_blk_nums, img_channel=3):
  """The official NAFNet as a torch.nn.Module; forward returns (output, decoder features)."""
  return _classes().NAFNet(width, enc_blk_nums, middle_blk_num, dec_blk_nums, img_channel)


def layer_norm_2d(channels: int, eps: float = 1e-6):
  """basicsr arch_util `LayerNorm2d`: LayerNorm over the channels of an NCHW map, with weight
  and bias (the same computation as the channels-first `LayerNorm` of MILab-PKU/dcpt
  degrad_classify_arch.py)."""
  return _classes().LayerNorm2d(channels, eps)


@functools.lru_cache(maxsize=None)
def _classes() -> types.SimpleNamespace:
  """Defines the torch modules on first use (imports torch)."""
  import torch  # pylint: disable=g-import-not-at-top

  nn = torch.nn
  F = torch.nn.functional

  class LayerNorm2d(nn.Module):

    def __init__(self, c, eps=1e-6):
      super().__init__()
      self.weight = nn.Parameter(torch.ones(c))
      self.bias = nn.Parameter(torch.zeros(c))
      self.eps = eps

    def forward(self, x):
      mu = x.mean(1, keepdim=True)
      var = (x - mu).pow(2).mean(1, keepdim=True)
      y = (x - mu) / (var + self.eps).sqrt()
      return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)

  def gate(x):
    x1, x2 = x.chunk(2, dim=1)
    return x1 * x2

  class NAFBlock(nn.Module):

    def __init__(self, c):
      super().__init__()
      dw = 2 * c
      self.conv1 = nn.Conv2d(c, dw, 1)
      self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw)
      self.conv3 = nn.Conv2d(dw // 2, c, 1)
      self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
      self.conv4 = nn.Conv2d(c, 2 * c, 1)
      self.conv5 = nn.Conv2d(c, c, 1)
      self.norm1 = LayerNorm2d(c)
      self.norm2 = LayerNorm2d(c)
      self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
      self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp):
      x = gate(self.conv2(self.conv1(self.norm1(inp))))
      x = self.conv3(x * self.sca(x))
      y = inp + x * self.beta
      x = self.conv5(gate(self.conv4(self.norm2(y))))
      return y + x * self.gamma

  class NAFNet(nn.Module):

    def __init__(self, width, enc_blk_nums, middle_blk_num, dec_blk_nums, img_channel=3):
      super().__init__()
      self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
      self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
      self.encoders, self.decoders = nn.ModuleList(), nn.ModuleList()
      self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
      chan = width
      for num in enc_blk_nums:
        self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
        chan *= 2
      self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
      for num in dec_blk_nums:
        self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
        chan //= 2
        self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
      self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp):
      _, _, h, w = inp.shape
      ph = (self.padder_size - h % self.padder_size) % self.padder_size
      pw = (self.padder_size - w % self.padder_size) % self.padder_size
      inp = F.pad(inp, (0, pw, 0, ph))
      x = self.intro(inp)
      encs = []
      for encoder, down in zip(self.encoders, self.downs):
        x = encoder(x)
        encs.append(x)
        x = down(x)
      x = self.middle_blks(x)
      feats = []
      for decoder, up, skip in zip(self.decoders, self.ups, encs[::-1]):
        x = decoder(up(x) + skip)
        feats.append(x)
      x = self.ending(x) + inp
      return x[:, :, :h, :w], feats

  return types.SimpleNamespace(LayerNorm2d=LayerNorm2d, NAFBlock=NAFBlock, NAFNet=NAFNet)
