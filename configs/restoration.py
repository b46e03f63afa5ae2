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
  del c.method.focal_gamma
  del c.method.cls_weight
  if variant == "quickstart":
    c.total_steps = 200
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 100
  return c
