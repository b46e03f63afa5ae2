r"""CDSP (class-driven scribble promotion, AAAI 2024): scribble-supervised semantic segmentation.

  python -m jaxmilab.main --config=configs/cdsp.py:smoke --workdir=/tmp/cdsp_smoke
  python -m jaxmilab.main --config=configs/cdsp.py:quickstart --workdir=/tmp/cdsp_qs
  python -m jaxmilab.main --config=configs/cdsp.py:paper --workdir=/tmp/cdsp_v3p \
      --config.data.root=/data/ScribbleSup/VOC2012 --config.method.init_from=resnet101-63fe2227.pth

Variants:
  smoke            tiny DeepLabV3+ on the synthetic scribble set (32 px), 3 steps (seconds).
  quickstart       tiny DeepLabV3+ on the synthetic set (64 px, 4 shapes + background), 300 steps
                   (under a CPU-minute after compiling).
  paper            = deeplabv3plus_r101: DeepLabV3+ ResNet-101 on ScribbleSup (VOC2012 + SBD
                   scribbles, BMP pseudo-labels), the released training recipe.
  deeplabv2_r101   the same with DeepLabV2 (released head; --config.model.head=sum for the
                   paper's summed ASPP).
  deeplabv3plus_r50, deeplabv2_r50  ResNet-50 trunks.
Ablations: --config.method.<term>_weight=0 (pseudo, scribble_entropy, contour_entropy, lorm)
switches a loss term off; all four off is the scribble-only baseline.
Metrics (metrics.jsonl, split "eval"): mIoU, pixel_accuracy, IoU/<class index> (percent).
"""

from __future__ import annotations

import math

from jaxmilab import config_lib
from jaxmilab.configs import _common

VARIANTS = (
    "smoke",
    "quickstart",
    "paper",
    "deeplabv3plus_r101",
    "deeplabv2_r101",
    "deeplabv3plus_r50",
    "deeplabv2_r50",
)
# ScribbleSup training set: SBD train_aug, 10,582 images with scribbles (CDSP paper, Sec. 4.1).
SCRIBBLESUP_TRAIN = 10_582
# Released evaluate.py: scales 0.5..2.0 step 0.25, crop 465, stride 2/3 of the crop, base 512.
EVAL_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def _method(c, **overrides) -> None:
  c.method.update(
      name="cdsp",
      init_from="",
      # Loss weights: all 1 (CDSP paper Eq. for the total loss); label smoothing 0.1 (paper,
      # Sec. 3).
      scribble_weight=1.0,
      pseudo_weight=1.0,
      label_smoothing=0.1,
      scribble_entropy_weight=1.0,
      contour_entropy_weight=1.0,
      lorm_weight=1.0,
      align_corners=True,  # released train.py: F.interpolate(align_corners=True)
      # Released LoRM zeroes the pseudo-label's 255 pixels in place before the pseudo-label CE
      # (jaxmilab/methods/cdsp.py docstring); False = 255 ignored (the paper's reading).
      lorm_zeroes_pseudo_ignore=True,
      eval_scales=(1.0,),
      eval_flip=False,  # released evaluate.py leaves flip off
      eval_crop_size=0,  # 0 = whole image, no sliding window
      eval_stride_rate=2 / 3,
      eval_images=4,
  )
  c.method.update(overrides)


def _model(c, arch: str, depth: int, preset: str) -> None:
  c.model.name = "deeplab"
  c.model.arch = arch
  c.model.depth = depth
  c.model.preset = preset
  c.model.style = "cdsp"  # released trunk (jaxmilab/models/resnet.py)
  c.model.output_stride = 8  # released code: layer3 dilation 2, layer4 4/8/16
  c.model.multi_grid = (4, 8, 16)
  c.model.head = "concat"  # deeplabv2 only: released layer5; "sum" = paper
  c.model.lorm = True
  c.model.dropout = 0.5  # released ASPP projection dropout (DeepLabV3+)
  c.model.dtype = "float32"


def _augment(c, crop_size: int, scale_range: tuple[float, float]) -> None:
  """Training transforms and distance maps (jaxmilab/data/scribble_common.py).

  The paper's crop and scale range are 465 and (0.5, 2.0) (`paper` variants).
  """
  c.data.crop_size = crop_size
  c.data.scale_range = scale_range
  c.data.rotate_degrees = 10.0  # paper: rotate +-10
  # Released transform_exten.py RandomGaussianBlur(radius=5): 5x5 kernel, p = 0.5.
  c.data.blur_prob = 0.5
  c.data.flip = True  # paper: flip
  # Distance-map lambdas as the released training read them: train.py's defaults
  # --distancemap_s distancemap/scribble/dsmp_lambd_e and --distancemap_c
  # distancemap/cam/dsmp_lambd_e6, and the repository's shipped sample maps
  # (dataset/ScribbleSup/VOC2012/distance_map, distance_pseudo) are reproduced exactly with
  # lambda = e (D_s) and e^6 (D_c) (tests/test_cdsp.py). The release contradicts itself:
  # distancemp/Readme.md (and the paper's text) give e^2 = 7.389 for both maps; set
  # --config.data.scribble_lambda / contour_lambda to math.e ** 2 for that reading.
  c.data.scribble_lambda = math.e
  c.data.contour_lambda = math.e**6
  c.data.quantize_distance = True  # released maps are uint8 PNGs
  # Released transform_exten.py: distance maps resized / rotated nearest-neighbour, padded with
  # 255 = weight 1.0 (like label maps); "linear" / 0.0 = this repository's earlier reading.
  c.data.distance_interpolation = "nearest"
  c.data.distance_pad = 1.0


def _synthetic(c, size: int, num_train: int, num_eval: int, eval_batch: int) -> None:
  c.data.update(
      name="scribble_synthetic",
      image_size=size,
      num_classes=5,
      max_objects=2,
      num_train=num_train,
      num_eval=num_eval,
      eval_batch_size=eval_batch,
      background="photos",
      scribble_variant="full",
      drop_rate=0.5,
      shrink_ratio=0.5,
      false_positive_rate=0.3,
      eval_seed=0,
      worker_count=0,
      read_threads=2,
  )
  # Milder augmentation than the paper's at 64 px (ASSUMPTION, CPU scale): scale 0.75-1.25.
  _augment(c, crop_size=size, scale_range=(0.75, 1.25))


def get_config(variant: str = "smoke"):
  c = config_lib.base_config()
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9  # paper / released train.py
  c.optimizer.nesterov = False  # torch.optim.SGD default
  c.optimizer.weight_decay = 5e-4  # paper / released train.py (coupled, as torch SGD)
  if variant in ("smoke", "quickstart"):
    _method(c)
    _model(c, "deeplabv3plus", 50, "tiny")
    if variant == "smoke":
      _synthetic(c, 32, 32, 8, 8)
      _common.cadence(c, batch_size=8, total_steps=3, log_every=1, learning_rate=0.01)
    else:
      _synthetic(c, 64, 1024, 64, 16)
      # From scratch (no ImageNet weights offline): a larger lr than the paper's fine-tuning
      # lr 1e-3, same shape of schedule (warm-up then cosine). ASSUMPTION, tuned for CPU scale.
      # checkpoint_every=50: an interruption (Ctrl-C, SIGTERM) loses at most 50 steps.
      _common.cadence(
          c,
          batch_size=16,
          total_steps=300,
          log_every=50,
          checkpoint_every=50,
          learning_rate=0.02,
          schedule="cosine",
          warmup_steps=30,
      )
    return c

  if variant == "paper":
    variant = "deeplabv3plus_r101"
  arch, _, trunk = variant.partition("_")
  if arch not in ("deeplabv3plus", "deeplabv2") or trunk not in ("r50", "r101"):
    raise ValueError(f"configs/cdsp.py: unknown variant {variant!r}; use one of {VARIANTS}.")
  _method(c, eval_scales=EVAL_SCALES, eval_crop_size=465)
  _model(c, arch, int(trunk[1:]), "paper")
  c.data.name = "scribble_folders"
  c.data.root = "/path/to/ScribbleSup/VOC2012"  # layout: jaxmilab/data/scribble_folders.py
  c.data.image_dir = "JPEGImages"
  c.data.scribble_dir = "pascal_2012_scribble"  # or scribble_drop / scribble_shrink
  c.data.pseudo_dir = "bmp_pseudolabel"  # BMP pseudo-labels (paper's main table)
  c.data.gt_dir = "SegmentationClassAug"
  c.data.train_list = "ImageSets/SegmentationAug/train.txt"
  c.data.val_list = "ImageSets/SegmentationAug/val.txt"
  c.data.num_classes = 21
  c.data.eval_pad_size = 512  # released evaluate.py base_size
  c.data.eval_batch_size = 8  # ASSUMPTION (the released evaluation uses 1)
  c.data.worker_count = 8
  c.data.read_threads = 4
  _augment(c, crop_size=465, scale_range=(0.5, 2.0))  # paper: crop 465, scale 0.5-2
  # Paper: batch 16, 50 epochs with 5 of warm-up, lr 1e-3, cosine to 0.
  steps_per_epoch = _common.epoch_cadence(
      c,
      batch_size=16,
      examples=SCRIBBLESUP_TRAIN,
      epochs=50,
      log_every=50,
      eval_every_epochs=5,
      learning_rate=1e-3,
      schedule="cosine",
  )
  c.optimizer.warmup_steps = 5 * steps_per_epoch
  return c
