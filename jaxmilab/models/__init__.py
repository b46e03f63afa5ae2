"""flax.linen backbones. `jaxmilab/models/<name>.py` exposes `create(config) -> nn.Module`."""
