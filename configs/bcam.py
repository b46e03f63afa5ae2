r"""B-CAM (Zhu et al., arXiv 2112.14379): background-aware CAM with the stagger loss.

  python -m jaxmilab.main --config=configs/bcam.py:smoke --workdir=/tmp/bcam_smoke

Variants as configs/cam.py (smoke, quickstart, paper = resnet50_cub, <arch>_<set>), with the
B-CAM recipe (official SingleObjectLocalization/Train.sh): CUB ResNet50 lr 1.7e-4, 20 epochs,
decay at 15, loss weights 1/1/1/1; VGG16 lr 1.7e-5, 20 epochs, 1/0.4/0.4/0.2; InceptionV3
lr 1.7e-3, 50 epochs, 1/0.4/0.4/0.2, `--lr_bias_ratio 2`; 100 attention heads. The 10x group
adds the B-CAM head (official main.py `_set_optimizer`: 'aggregator', 'classifier'); with
InceptionV3 the biases of the feature extractor get 2x (its lr_bias_ratio; the head's biases
stay at 10x, as main.py puts them in the classifier group). `method.inference` picks the mode reported
under the protocol names ("prob" or "mask"; the other goes to "<mode>/<name>").
"""

from __future__ import annotations

from jaxmilab.configs import cam as _cam

VARIANTS = _cam.VARIANTS

# Official Train.sh (CUB): (lr, epochs, lr decay period, loss weights r1..r4).
RECIPE = {"resnet50": (1.7e-4, 20, 15, (1.0, 1.0, 1.0, 1.0)),
          "vgg16": (1.7e-5, 20, 15, (1.0, 0.4, 0.4, 0.2)),
          "inceptionv3": (1.7e-3, 50, 15, (1.0, 0.4, 0.4, 0.2))}


def get_config(variant: str = "smoke"):
  c = _cam.wsol_config("bcam", variant)
  c.method.num_heads = 100
  c.method.inference = "prob"
  c.method.map_mode = "cub"
  arch = c.model.name.replace("_wsol", "")
  # B-CAM's own grouping (BCAM main.py): ResNet layer4 + head, VGG / Inception outside the
  # feature extractor, at 10x.
  c.optimizer.lr_multipliers = ((_cam.CLASSIFIER_GROUP[arch] + r"|bcam_head", 10.0),)
  if variant in ("smoke", "quickstart"):
    c.method.num_heads = 8 if variant == "smoke" else 16
    c.method.loss_weights = RECIPE["resnet50"][3]
    return c
  lr, epochs, decay_every, weights = RECIPE[arch]
  c.method.loss_weights = weights
  if arch == "inceptionv3":  # first match wins: the head's 10x rule comes first
    c.optimizer.lr_multipliers = c.optimizer.lr_multipliers + ((r"\['bias'\]", 2.0),)
  dataset = c.data.dataset
  # B-CAM's map modes follow the dataset (official inference.py `Generator`).
  c.method.map_mode = {"CUB": "cub", "ILSVRC": "ilsvrc", "OpenImages": "openimages"}[dataset]
  if dataset == "CUB":  # The official recipe is for CUB; other sets keep cam.py's schedule.
    steps_per_epoch = _cam.TRAIN_SIZE["cub"] // c.batch_size
    c.total_steps = epochs * steps_per_epoch
    c.optimizer.decay_steps = _cam.decay_steps(steps_per_epoch, epochs, decay_every)
  c.optimizer.learning_rate = lr
  return c
