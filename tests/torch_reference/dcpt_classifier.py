"""PyTorch DCPT degradation classifier, transcribed from `PromptIR_NoImg_DC` of MILab-PKU/dcpt
basicsr/archs/degrad_classify_arch.py (detectron2 BottleneckBlock with channels-first
LayerNorm, mixing weights, conv1x1 + maxpool + ReLU per level, last stage, mean, fc).

The independent reference of tests/test_dcpt_classifier.py; kept out of the jaxmilab package (it
is test code). torch is imported lazily (on the first `build`).
"""

from __future__ import annotations

import functools
import types

from tests.torch_reference import nafnet


def build(feature_dims, num_classes, num_res_blocks=2):
  """The classifier as a torch.nn.Module; forward takes the decoder maps FINEST first, NCHW,
  with channels `feature_dims` (as the official training code calls it on `hook_outputs[::-1]`),
  and returns the logits [B, num_classes]."""
  return _classes().Classifier(feature_dims, num_classes, num_res_blocks)


@functools.lru_cache(maxsize=None)
def _classes() -> types.SimpleNamespace:
  """Defines the torch modules on first use (imports torch)."""
  import torch  # pylint: disable=g-import-not-at-top

  nn = torch.nn
  F = torch.nn.functional

  class Conv2d(nn.Conv2d):  # detectron2 Conv2d with a norm

    def __init__(self, *args, norm=None, **kwargs):
      super().__init__(*args, **kwargs)
      self.norm = norm

    def forward(self, x):
      return self.norm(super().forward(x))

  class Bottleneck(nn.Module):

    def __init__(self, c):
      super().__init__()
      b = 2 * c
      self.conv1 = Conv2d(c, b, 1, bias=False, norm=nafnet.layer_norm_2d(b))
      self.conv2 = Conv2d(b, b, 3, padding=1, bias=False, norm=nafnet.layer_norm_2d(b))
      self.conv3 = Conv2d(b, c, 1, bias=False, norm=nafnet.layer_norm_2d(c))

    def forward(self, x):
      out = F.relu(self.conv1(x))
      out = F.relu(self.conv2(out))
      return F.relu(self.conv3(out) + x)

  class Classifier(nn.Module):

    def __init__(self, feature_dims, num_classes, num_res_blocks):
      super().__init__()
      self.bottleneck_layers = nn.ModuleList()
      self.downsample_layers = nn.ModuleList()
      for l, dim in enumerate(feature_dims):
        self.bottleneck_layers.append(
            nn.Sequential(*[Bottleneck(dim) for _ in range(num_res_blocks)])
        )
        out_dim = feature_dims[l + 1] if l < len(feature_dims) - 1 else dim
        self.downsample_layers.append(
            nn.Sequential(nn.Conv2d(dim, out_dim, 1, bias=False), nn.MaxPool2d(2, 2), nn.ReLU())
        )
      self.last_stage = nn.Sequential(
          *[Bottleneck(feature_dims[-1]) for _ in range(num_res_blocks)]
      )
      self.mixing_weights = nn.Parameter(torch.ones(len(feature_dims)))
      self.fc = nn.Linear(feature_dims[-1], num_classes)

    def forward(self, features):
      z = 0
      w = F.softmax(self.mixing_weights, dim=0)
      for i, feature in enumerate(features):
        z = self.bottleneck_layers[i](z + w[i] * feature)
        z = self.downsample_layers[i](z)
      return self.fc(self.last_stage(z).mean(dim=[-1, -2]))

  return types.SimpleNamespace(Bottleneck=Bottleneck, Classifier=Classifier)
