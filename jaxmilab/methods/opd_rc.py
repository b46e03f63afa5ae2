"""OPD-RC: random coupling f(x_i) -> x_j, i and j uniform in 1..m per sample.

The recipe lives in jaxmilab/methods/opd.py; this module only selects it by name.
"""

from __future__ import annotations

from jaxmilab.methods import opd


class Method(opd.Method):
  """`opd.Method` with recipe "opd_rc"."""
  RECIPE = "opd_rc"
