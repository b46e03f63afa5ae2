"""PyTorch transcriptions of the official networks: the independent references of the parity
tests (and the PyTorch baseline of the train_step benchmark). Not part of the jaxmilab package.

  archs   Restormer, PromptIR, SwinIR (official and MILab-PKU/dcpt variants)
  nafnet  NAFNet (megvii-research/NAFNet, as used by MILab-PKU/dcpt)
"""
