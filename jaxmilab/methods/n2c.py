"""N2C: supervised f(x_1) -> clean, MSE (the upper reference of OPD's tables).

The recipe lives in jaxmilab/methods/opd.py; this module only selects it by name.
"""

from __future__ import annotations

from jaxmilab.methods import opd


class Method(opd.Method):
  """`opd.Method` with recipe "n2c"."""
  RECIPE = "n2c"
