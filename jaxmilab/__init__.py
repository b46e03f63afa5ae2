"""jaxmilab: JAX/Flax reimplementations of MILab-PKU papers for TPU pods and GPUs."""

__version__ = "0.1.0"
