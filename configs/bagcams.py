r"""BagCAMs (Zhu et al., ECCV 2022): CAM training, evaluated with BagCAMs maps.

  python -m jaxmilab.main --config=configs/bagcams.py:smoke --workdir=/tmp/bagcams_smoke
  # post hoc on a trained or imported model: no training step, weights and BatchNorm
  # statistics only read (the trainer's eval-only mode)
  python -m jaxmilab.main --mode=eval --config=configs/bagcams.py:resnet50_cub --workdir=... \
      --config.method.init_from=/runs/cam_resnet50_cub

The `bagcams` method trains exactly like `cam` (the same variants and hyperparameters,
configs/cam.py) and evaluates BagCAMs maps at the ResNet50 layer3 (official run_test.sh:
target_layer "layer3") / VGG16 conv5_3 / InceptionV3 Mixed_6e split (the last two are our
ASSUMPTION); the plain CAM maps of the same network are reported as "cam/<metric>". BagCAMs
itself trains nothing.
"""

from __future__ import annotations

from jaxmilab.configs import cam as _cam

VARIANTS = _cam.VARIANTS


def get_config(variant: str = "smoke"):
  return _cam.wsol_config("bagcams", variant)
