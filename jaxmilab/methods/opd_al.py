"""OPD-AL: alienation loss L_E - lambda * L_A (paper's sign), lambda = config.method.alienation_weight.

The recipe lives in jaxmilab/methods/opd.py; this module only selects it by name.
"""

from __future__ import annotations

from jaxmilab.methods import opd


class Method(opd.Method):
  """`opd.Method` with recipe "opd_al"."""
  RECIPE = "opd_al"
