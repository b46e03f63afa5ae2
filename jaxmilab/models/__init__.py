"""flax.linen networks. A model module (listed in jaxmilab.registry.MODELS) exposes
`create(config.model) -> nn.Module` (wsol_backbones one per architecture), built by
common.create; layers.py, common.py (config -> module) and ushaped.py
(Restormer's U-shaped body) are the shared pieces no model imports from a sibling model."""
