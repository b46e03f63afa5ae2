"""vgg16 with the wsolevaluation modifications (see jaxmilab/models/wsol_backbones.py)."""

from __future__ import annotations

from jaxmilab.models import wsol_backbones

ARCH = "vgg16"
CONFIG_DEFAULTS = wsol_backbones.CONFIG_DEFAULTS  # its config.model keys (read by config_lib)


def create(config):
  """config.model: preset ("paper" | "small" | "tiny"), num_classes (set by the method),
  large_feature_map, width_divisor, blocks (resnet50), with_classifier."""
  return wsol_backbones.create_backbone(ARCH, config)
