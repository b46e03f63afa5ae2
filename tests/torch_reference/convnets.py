"""PyTorch pieces shared by the ResNet and VGG transcriptions of the DeepLab and WSOL parity tests
(tests/test_deeplab.py, tests/test_wsol_methods.py, tests/test_wsol_fidelity.py).

  bottleneck        the ResNet bottleneck block: torchvision models/resnet.py `Bottleneck`
                    (stride and dilation on conv2; also wsolevaluation and BCAM wsol/resnet.py)
                    or, with stride_on="conv1", the released CDSP trunk's (stride on conv1)
  downsample        the block's 1x1 projection shortcut, where torchvision's `_make_layer` puts it
  vgg16_features    VGG16's convolutional part as wsolevaluation wsol/vgg.py builds it (no
                    fifth pooling; widths / d)
  randomize_batchnorm  BatchNorm weights and running statistics away from their init, so that a
                    wrong mapping of any of them shows in the outputs

The modules keep the official attribute names, so their state-dict keys are the official ones.
torch is imported lazily (collecting the tests works without it).
"""

from __future__ import annotations

import functools
import types

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def bottleneck(
    inplanes: int,
    planes: int,
    stride: int = 1,
    *,
    dilation: int = 1,
    downsample=None,
    stride_on: str = "conv2",
):
  """A bottleneck block (1x1, 3x3 with `dilation`, 1x1 to 4 x planes) with its stride on
  "conv2" (torchvision) or "conv1" (released CDSP); `downsample` = the shortcut or None."""
  if stride_on not in ("conv1", "conv2"):
    raise ValueError(
        f"torch_reference.convnets.bottleneck: stride_on={stride_on!r}; " f"use conv1 or conv2."
    )
  return _classes().Bottleneck(inplanes, planes, stride, dilation, downsample, stride_on)


def downsample(inplanes: int, planes: int, stride: int = 1, *, force: bool = False):
  """torchvision `_make_layer`'s shortcut (1x1 conv with `stride`, BatchNorm) when the block
  changes the stride or the width (or `force`), else None."""
  import torch  # pylint: disable=g-import-not-at-top

  nn = torch.nn
  if stride == 1 and inplanes == planes * 4 and not force:
    return None
  return nn.Sequential(
      nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
  )


def vgg16_features(d: int):
  """(nn.Sequential of VGG16's convolutions and ReLUs with widths / d, its output channels)."""
  import torch  # pylint: disable=g-import-not-at-top

  nn = torch.nn
  layers, c = [], 3
  for v in VGG16:
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(c, v // d, 3, padding=1), nn.ReLU()]
      c = v // d
  return nn.Sequential(*layers), c


def randomize_batchnorm(net, generator=None) -> None:
  """Every BatchNorm2d: running mean U(-0.5, 0.5), running variance and weight U(0.5, 1.5),
  bias U(-0.2, 0.2), drawn from `generator` (None: torch's global generator)."""
  import torch  # pylint: disable=g-import-not-at-top

  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.5, 0.5, generator=generator)
      m.running_var.uniform_(0.5, 1.5, generator=generator)
      m.weight.data.uniform_(0.5, 1.5, generator=generator)
      m.bias.data.uniform_(-0.2, 0.2, generator=generator)


@functools.lru_cache(maxsize=None)
def _classes() -> types.SimpleNamespace:
  """Defines the torch modules on first use (imports torch)."""
  import torch  # pylint: disable=g-import-not-at-top

  nn = torch.nn

  class Bottleneck(nn.Module):

    def __init__(self, inplanes, planes, stride, dilation, shortcut, stride_on):
      super().__init__()
      s1, s2 = (stride, 1) if stride_on == "conv1" else (1, stride)
      self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, s2, padding=dilation, dilation=dilation, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(planes * 4)
      self.relu = nn.ReLU()
      self.downsample = shortcut

    def forward(self, x):
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.relu(self.bn2(self.conv2(out)))
      out = self.bn3(self.conv3(out))
      return self.relu(out + (x if self.downsample is None else self.downsample(x)))

  return types.SimpleNamespace(Bottleneck=Bottleneck)
