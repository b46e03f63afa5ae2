"""Official PyTorch / safetensors checkpoints -> flax parameters, never executing pickled code."""
