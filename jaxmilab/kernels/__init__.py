"""Pallas kernels with pure-jnp references."""

from jaxmilab.kernels.tea import tea_attention

__all__ = ["tea_attention"]
