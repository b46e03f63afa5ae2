"""PyTorch transcriptions of the official networks: the independent references of the parity
tests (and the PyTorch baseline of the train_step benchmark). Not part of the jaxmilab package.

  archs   Restormer, PromptIR, SwinIR (official and MILab-PKU/dcpt variants)
  nafnet  NAFNet (megvii-research/NAFNet, as used by MILab-PKU/dcpt)
"""

from __future__ import annotations

import math
import re


def randomize(net) -> None:
  """Seeded random weights where every norm, bias, scale, temperature and position-bias table
  matters (their official inits are 0 / 1 / constant, which would hide a wrong mapping)."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith("prompt_param"):
        continue                                     # torch.rand already
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
