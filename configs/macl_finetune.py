r"""Segmentation fine-tuning after MACL / PCL pre-training (or from scratch), pooled Dice.

  python -m jaxmilab.main --config=configs/macl_finetune.py:smoke --workdir=/tmp/ft_smoke
  python -m jaxmilab.main --config=configs/macl_finetune.py:paper --workdir=/tmp/acdc_10 \
      --config.data.root=/data/ACDC/training --config.method.init_from=/tmp/macl_chd

Without method.init_from this is the scratch baseline. Variants:
  smoke       tiny 3-level U-Net, 32 px phantom slices, 2 steps (seconds; the tests run it).
  quickstart  width-4 U-Net, 10% of 20 phantom training volumes (2 volumes), 10 test volumes
              (python -m jaxmilab.macl_quickstart compares scratch / PCL / MACL).
  paper       ACDC 10% (8 of 80 training volumes, fixed list) -> 20 test volumes.
  acdc_25     ACDC 25% (20 volumes).
  mmwhs_10, mmwhs_25   MMWHS CT with 2 / 4 labelled volumes, 4 test volumes.
Paper settings: stevezs315/MACL finetune.sh, train_supervised.py and data_split_list.txt
(CE loss, Adam lr 5e-4 with weight decay 1e-5, cosine to min_lr 5e-6, 100 epochs, batch 5
per GPU on 2 GPUs; ACDC 352 px, MMWHS 256 px).
"""

from __future__ import annotations

from jaxmilab import config_lib
from jaxmilab.configs import _common
from jaxmilab.configs import macl as _macl

VARIANTS = ("smoke", "quickstart", "paper", "acdc_25", "mmwhs_10", "mmwhs_25")
PAPER_EPOCHS = 100  # finetune.sh --epochs 100
PAPER_GPUS = 2  # finetune.sh: nproc_per_node=2 (DDP), --batch_size 5 per process
# data_split_list.txt (stevezs315/MACL): fixed labelled and test volumes.
ACDC_TEST = (5, 10, 14, 21, 26, 29, 34, 36, 41, 43, 50, 52, 61, 64, 66, 70, 76, 79, 87, 89)
ACDC_TRAIN = {
    10: (73, 18, 1, 15, 95, 6, 13, 16),
    25: (73, 18, 1, 15, 95, 6, 13, 16, 58, 39, 3, 4, 90, 57, 80, 77, 24, 7, 97, 92),
}
MMWHS_TEST = (1001, 1011, 1013, 1016)
MMWHS_TRAIN = {10: (1019, 1003), 25: (1019, 1003, 1002, 1020)}
# ASSUMPTION: labelled slices per volume (ED + ES frames of ~10 slices for ACDC; ~200 axial
# slices for MMWHS CT); they only set total_steps = 100 epochs.
SLICES_PER_VOLUME = {"acdc": 2 * 10, "mmwhs": 200}


def get_config(variant: str = "smoke"):
  c = config_lib.base_config()
  c.method.name = "macl_finetune"
  c.method.init_from = ""
  c.model.name = "pcl_unet"
  c.model.num_classes = 0  # from the data
  c.data.name = "medical_seg"
  # train_supervised.py: torch.optim.Adam(lr, weight_decay=1e-5) = Adam + coupled L2.
  c.optimizer.name = "adam"
  c.method.l2_weight = 1e-5
  c.optimizer.schedule = "cosine"

  if variant == "smoke":
    _macl.phantom_setup(c, variant)  # as configs/macl.py:smoke, so init_from fits
    c.data.phantom_volumes = 4
    c.data.phantom_test_volumes = 1
    c.data.eval_batch_size = 8
    _common.cadence(
        c, batch_size=8, total_steps=2, log_every=1, learning_rate=5e-4, min_lr_ratio=0.01
    )
  elif variant == "quickstart":
    _macl.phantom_setup(c, variant)
    c.data.phantom_volumes = 20
    c.data.labeled_fraction = 0.1  # 2 of 20 volumes, the same 2 in every run
    c.data.phantom_test_volumes = 10
    c.data.eval_batch_size = 32
    # ASSUMPTION: lr 4x the paper's 5e-4 for a 100-step run.
    _common.cadence(
        c, batch_size=8, total_steps=100, log_every=25, learning_rate=2e-3, min_lr_ratio=0.01
    )
  elif variant in ("paper", "acdc_25", "mmwhs_10", "mmwhs_25"):
    dataset = "mmwhs" if variant.startswith("mmwhs") else "acdc"
    percent = 25 if variant.endswith("25") else 10
    c.model.width = 32  # --initial_filter_size 32
    c.data.source = dataset
    c.data.root = f"/path/to/{'MMWHS/ct_train' if dataset == 'mmwhs' else 'ACDC/training'}"
    c.data.train_volumes = (MMWHS_TRAIN if dataset == "mmwhs" else ACDC_TRAIN)[percent]
    c.data.test_volumes = MMWHS_TEST if dataset == "mmwhs" else ACDC_TEST
    c.data.patch_size = 256 if dataset == "mmwhs" else 352  # --patch_size
    c.data.eval_batch_size = 10
    c.data.worker_count = 4
    # --batch_size 5 per process; drop_last=False; --val_interval 10; --lr 5e-4; --min_lr 5e-6
    # (official: clamp at it).
    _common.epoch_cadence(
        c,
        batch_size=5 * PAPER_GPUS,
        examples=len(c.data.train_volumes) * SLICES_PER_VOLUME[dataset],
        epochs=PAPER_EPOCHS,
        log_every=50,
        eval_every_epochs=10,
        checkpoint_every_epochs=10,
        drop_last=False,
        learning_rate=5e-4,
        min_lr_ratio=5e-6 / 5e-4,
    )
  else:
    raise ValueError(
        f"configs/macl_finetune.py: unknown variant {variant!r}; use one of {VARIANTS}."
    )
  return c
