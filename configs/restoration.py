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
# configs/restoration.py:quickstart's fine-tuning task (see get_config): fixed levels, eval too.
QUICKSTART_TYPES = _dcpt.QUICKSTART_TYPES  # the types DCPT pre-trains on
QUICKSTART_LEVELS = (25, 10)  # noise sigma (0-255), JPEG quality


def get_config(variant: str = "smoke"):
  c = _dcpt_config(variant)
  c.method.name = "restoration"
  c.method.init_from = ""  # a dcpt / maskdcpt / restoration workdir, or "" for scratch
  # Zero the last conv at the start, so with the global residual a scratch network starts as the
  # identity and its PSNR starts at the input's (jaxmilab/methods/restoration_common.py
  # zero_output_conv).
  # With init_from the pre-trained output conv is kept when the pre-training trained it (dcpt,
  # maskdcpt reconstruction="backbone") and zeroed when it did not ("spark";
  # methods/restoration.py init_from). Ours, for short CPU runs; the official fine-tuning keeps
  # the loaded / PyTorch-default conv, so `paper` turns it off.
  c.method.zero_init_output = variant != "paper"
  del c.method.focal_gamma, c.method.cls_weight, c.method.mode, c.method.classifier_learning_rate
  if variant == "quickstart":
    # 100 steps: the fine-tuning budget at which a head start can still show. Scratch trained for
    # the pre-training's steps plus these (the positive control) gains 1.98 dB over scratch at 100
    # steps, 0.16 dB at 200 (docs/results.md); `--steps` / `--config.total_steps` change it.
    c.total_steps = 100
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 50
    # The task a 100-step restorer can learn on a 2-core CPU (ours; measured in
    # docs/results.md, "Choosing the quickstart's fine-tuning task"): Gaussian denoising at
    # sigma 25 (CBSD68's middle level) and JPEG deblocking at quality 10 (LIVE1's hardest usual
    # level), one network for both as in DnCNN-3 (Zhang et al., TIP 2017). With blur in the mix
    # the network smooths blurred inputs too (blur lost 0.08-0.69 dB in every mix with noise,
    # while blur alone gained 0.31 dB), and a large-error type (haze, low light, rain) pulls JPEG
    # down to or below its input; pre-training (configs/dcpt.py, configs/maskdcpt.py) still sees
    # all types. tests/test_quickstart_slow.py checks that the scratch restorer beats its input.
    c.data.degradations = QUICKSTART_TYPES
    c.data.levels = QUICKSTART_LEVELS
    # NAFNet's PSNR loss weighs each image's error on a log scale, so JPEG (27 dB input) counts
    # as much as noise (20 dB); with L1 the noise dominates (docs/results.md). lr 3e-3: measured.
    c.method.pixel_loss = "psnr"
    c.optimizer.learning_rate = 3e-3
  return c
