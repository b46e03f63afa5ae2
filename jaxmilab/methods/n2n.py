"""N2N: Noise2Noise with the fixed pairing f(x_1) -> x_2, MSE.

The recipe lives in jaxmilab/methods/opd.py; this module only selects it by name.
"""

from __future__ import annotations

from jaxmilab.methods import opd


class Method(opd.Method):
  """`opd.Method` with recipe "n2n"."""
  RECIPE = "n2n"
