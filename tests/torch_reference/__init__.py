"""PyTorch transcriptions of the official networks: the independent references of the parity
tests (and the PyTorch baseline of the train_step benchmark). Not part of the jaxmilab package.

  archs            Restormer, PromptIR, SwinIR (official and MILab-PKU/dcpt variants)
  nafnet           NAFNet (megvii-research/NAFNet, as used by MILab-PKU/dcpt)
  dcpt_classifier  DCPT's degradation classifier (MILab-PKU/dcpt `PromptIR_NoImg_DC`)
  convnets         ResNet / VGG pieces of the DeepLab and WSOL parity tests

`build(arch, **kwargs)` builds any of the first three by name, `random_net` the same in eval
mode with `randomize`d weights.
"""

from __future__ import annotations

import math
import re


def build(arch: str, **kwargs):
  """The torch network `arch` with constructor arguments `kwargs`: "nafnet" or "nafnet_dcpt"
  (`nafnet.build`; DCPT's NAFNet is the same network, only its checkpoint names its decoders
  `decoder{i}`), "dcpt_classifier" (`dcpt_classifier.build`), else a name of
  `archs.OFFICIAL_KWARGS` (`archs.build`, official defaults updated by `kwargs`)."""
  # pylint: disable=g-import-not-at-top
  from tests.torch_reference import archs, dcpt_classifier, nafnet

  if arch in ("nafnet", "nafnet_dcpt"):
    return nafnet.build(**kwargs)
  if arch == "dcpt_classifier":
    return dcpt_classifier.build(**kwargs)
  return archs.build(arch, **kwargs)


def random_net(arch: str, **kwargs):
  """`build(arch, **kwargs)` in eval mode, its init seeded (torch.manual_seed(0)), then
  `randomize`d."""
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  net = build(arch, **kwargs).eval()
  randomize(net)
  return net


def randomize(net) -> None:
  """Seeded random weights where every norm, bias, scale, temperature and position-bias table
  matters (their official inits are 0 / 1 / constant, which would hide a wrong mapping)."""
  import torch  # pylint: disable=g-import-not-at-top

  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith("prompt_param"):
        continue  # torch.rand already
      if name.endswith(("beta", "gamma")):
        p.normal_(0.0, 0.5, generator=g)
      elif name.endswith("relative_position_bias_table"):
        p.normal_(0.0, 0.5, generator=g)
      elif p.ndim >= 2:
        p.uniform_(-1.0, 1.0, generator=g).mul_(1.0 / math.sqrt(p[0].numel()))
      elif name.endswith("temperature"):
        p.uniform_(0.5, 2.0, generator=g)
      elif re.search(r"norm\d?(\.body)?\.weight$", name):
        p.uniform_(0.5, 1.5, generator=g)
      else:
        p.normal_(0.0, 0.2, generator=g)
