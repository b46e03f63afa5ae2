"""The main job's promises, checked on its own configs (slow: scratch, MaskDCPT pre-training and
fine-tuning of seed 0, ~5 min on 2 cores):

1. every restorer beats its input on every degradation type the quickstart reports;
2. the MaskDCPT pre-trained network restores its own held-out inputs (dense, 150 steps; seed 0
   measured 26.91 vs 25.50 dB).

Its classifier is not checked: at this budget it is at chance on seeds 0 and 2 (50 %, every crop
called noise) and 83 % on seed 1, and single seeds move with float rounding (the CPU forms of
#33 took seed 0 from 74 to 80, 76.5 and 50 %); a threshold on one seed would test luck.
Whether pre-training beats scratch is an effect over seeds, not a single-seed check: over seeds
0-2 MaskDCPT + FT is -0.23 ± 0.71 dB against scratch at 100 steps (2026-12-06), with a positive
control at +1.98 dB (docs/results.md, `python -m jaxmilab.benchmarks.pretrain_effects`); seed 0,
run here, happens to be +0.54 dB. A config change that makes
a restorer harm a type (blur or a large-error type in the fine-tuning mix, L1 instead of the
PSNR loss; docs/results.md, "Choosing the quickstart's fine-tuning task") fails here.

Training is deterministic on CPU: the seed-0 numbers reproduce to every printed digit.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxmilab import metrics as metrics_lib

# Smallest gain (dB) each reported type must show over its input, per fine-tuned restorer.
MIN_GAIN_DB = {"gaussian_noise": 2.0, "jpeg": 0.0}
# The pre-trained network's margin over its input (dense, its own types; seed 0: +1.41 dB, seeds
# 1 and 2: -0.41 and +2.25).
MIN_PRETRAINED_GAIN_DB = 0.5


@pytest.mark.slow
def test_quickstart_restorers_and_the_pretrained_network_beat_their_input(tmp_path):
  # The main job's own command, in a subprocess (jaxmilab.quickstart's absl flags would clash
  # with other CLI modules imported by tests in this process).
  subprocess.run(
      [
          sys.executable,
          "-m",
          "jaxmilab.quickstart",
          "--pretrain=maskdcpt",
          f"--workdir={tmp_path}",
          "--compilation_cache=",
      ],
      check=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  finals = {
      stage: metrics_lib.read_split(str(tmp_path / stage), "eval")[-1]
      for stage in ("scratch", "maskdcpt/ft")
  }
  pretrain = metrics_lib.read_split(str(tmp_path / "maskdcpt" / "pretrain"), "eval")[-1]
  for stage, final in finals.items():
    types = sorted(k.split("/", 1)[1] for k in final if k.startswith("psnr_input/"))
    assert types == sorted(MIN_GAIN_DB), types  # the reported types are the ones checked here
    gains = {t: final[f"psnr/{t}"] - final[f"psnr_input/{t}"] for t in types}
    assert all(gains[t] > MIN_GAIN_DB[t] for t in types), (stage, gains)
  pretrained_gain = pretrain["psnr"] - pretrain["psnr_input"]
  assert pretrained_gain > MIN_PRETRAINED_GAIN_DB, pretrain
