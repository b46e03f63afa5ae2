"""Pallas kernels with pure-jnp references.

`tea_attention` (the public contract) is the dispatcher in `tea_api`; `tea_reference` (XLA
reference and argument checks) and `tea_pallas` (fused kernel) are leaf modules it chooses between.
"""

from jaxmilab.kernels.tea_api import tea_attention

__all__ = ["tea_attention"]
