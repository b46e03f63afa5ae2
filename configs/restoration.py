r"""Supervised all-in-one restoration (L1), from scratch or fine-tuned from a DCPT run.

  python -m jaxmilab.main --config=configs/restoration.py:quickstart --workdir=/tmp/ft \
      --config.method.init_from=/tmp/dcpt_quickstart

Variants mirror configs/dcpt.py (same model and data), so a DCPT run's backbone loads
with `config.method.init_from=<its workdir>`; leave it empty to train from scratch.
"""

from __future__ import annotations

from jaxmilab.configs import dcpt as _dcpt


def _dcpt_config(variant):
  return _dcpt.get_config(variant)


VARIANTS = ("smoke", "quickstart", "paper")

def get_config(variant: str = "smoke"):
  c = _dcpt_config(variant)
  c.method.name = "restoration"
  c.method.init_from = ""          # a dcpt / maskdcpt / restoration workdir, or "" for scratch
  # Zero the last conv at the start (after init_from: a pre-trained body with a fresh head), so
  # with the global residual the network starts as the identity and its PSNR starts at the
  # input's (jaxmilab/methods/common.py zero_output_conv). Ours, for short CPU runs; the
  # official fine-tuning keeps the loaded / PyTorch-default conv, so `paper` turns it off.
  c.method.zero_init_output = variant != "paper"
  del c.method.focal_gamma, c.method.cls_weight, c.method.mode, c.method.classifier_learning_rate
  if variant == "quickstart":
    c.total_steps = 200
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 100
  return c
