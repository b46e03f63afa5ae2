"""MACL's quickstart pre-training must learn something: L_g at the end of
configs/macl.py:quickstart below 0.9x its collapse value (T / 0.07) ln(2B - 1) (issue 29).

Slow (100 pre-training steps each, ~2-4 min on 2 cores). The PCL baseline as released
(configs/macl.PCL_OVERRIDES) is the positive control. MACL itself does not reach it yet
(docs/macl.md: 4.91 = 1.00x at the end in the depth-3 geometry, as in the depth-4 one, and
also without L_ER and without downsampling); that test is a strict xfail so that it reports
the day it passes.
"""

from __future__ import annotations

import pytest

from jaxmilab import config_lib
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer
from jaxmilab.configs import macl as macl_configs
from jaxmilab.methods import macl


def _final_eval(tmp_path, overrides):
  config = config_lib.load("configs/macl.py:quickstart", overrides)
  trainer.train_to_end(config, str(tmp_path))
  final = metrics_lib.read_split(str(tmp_path), "eval")[-1]
  return final, macl.chance_l_g(config.batch_size, config.method.temperature)


@pytest.mark.slow
def test_pcl_quickstart_l_g_falls_below_chance(tmp_path):
  final, chance = _final_eval(tmp_path, dict(macl_configs.PCL_OVERRIDES))
  assert final["l_g"] <= 0.9 * chance, (final, chance)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="MACL's quickstart L_g ends at its collapse value "
    "(measured 4.91 vs 4.906; docs/macl.md); open, issue 29",
)
def test_macl_quickstart_l_g_falls_below_chance(tmp_path):
  final, chance = _final_eval(tmp_path, {})
  assert final["dead_i2"] < 1.0  # the dominant centre is not entirely dead
  assert final["l_g"] <= 0.9 * chance, (final, chance)
