r"""MACL pre-training (JBHI, arXiv 2309.11876): four views per slice, L = L_g + 0.5 L_d + L_ER.

  python -m jaxmilab.main --config=configs/macl.py:smoke --workdir=/tmp/macl_smoke
  python -m jaxmilab.main --config=configs/macl.py:paper --workdir=/tmp/macl_chd \
      --config.data.root=/data/ImageCHD
  # then fine-tune: configs/macl_finetune.py with --config.method.init_from=<this workdir>

Variants:
  smoke       tiny 3-level U-Net on 32 px phantom slices, 2 steps (seconds on a CPU; the tests
              run it).
  quickstart  width-4, depth-3 U-Net on 64 px synthetic phantom slices (dominant bottleneck
              2 x 2), 1000 steps; python -m jaxmilab.macl_quickstart runs it, with
              PCL_OVERRIDES for the PCL arm, then fine-tunes.
  paper       the official CHD pre-training (stevezs315/MACL pretrain.sh, train_contrast.py):
              512 px, width 32, SGD momentum 0.9 (no Nesterov), wd 1e-5, lr 0.01 cosine to 0
              (lr_scheduler.py "cos"), 100 epochs, batch 16 per GPU on 2 GPUs, threshold 0.1,
              temperature 0.1, s = 0.25, alpha 0.5, alpha_ER 1.0.
  paper_brats the official BraTS pre-training (pretrain.sh): 4 channels, 192 px, batch 32 per
              GPU on 2 GPUs, threshold 0.05.
"""

from __future__ import annotations

from jaxmilab import config_lib
from jaxmilab.configs import _common

VARIANTS = ("smoke", "quickstart", "paper", "paper_brats")
PAPER_EPOCHS = 100  # pretrain.sh --epochs 100
PAPER_GPUS = 2  # pretrain.sh: CUDA_VISIBLE_DEVICES=0,1, nproc_per_node=2 (DDP)
# ASSUMPTION: slice counts of the pre-training sets (they set the steps of 100 epochs; the
# released code counts epochs over every slice of every volume). Adjust total_steps to yours.
CHD_SLICES = 68 * 250
BRATS_SLICES = 369 * 155


def phantom_setup(c, variant: str) -> None:
  """The U-Net size and the phantom slices of the `smoke` and `quickstart` variants.

  configs/macl_finetune.py uses the same, so its method.init_from loads a run of this config.
  """
  if variant == "smoke":
    c.model.width, c.model.depth = 2, 3  # a smaller program: compiles in seconds
    c.data.phantom_slices, c.data.phantom_size, c.data.patch_size = 8, 32, 32
  elif variant == "quickstart":
    # Depth 3 (3 pooling levels) so that the dominant branch's bottleneck is 2 x 2: 64 px
    # patches at s = 0.25 give 16 px dominant inputs, 16 / 2^3 = 2 (the auxiliary bottleneck
    # is 8 x 8, decoder blocks 1-2 bring the dominant maps to that grid, as 512 px / 4 levels
    # give 8 x 8 and 32 x 32 in the paper). With 4 levels it was 1 x 1: L_ER then ties it to
    # one corner cell of the auxiliary bottleneck, the BatchNorm-free ReLU centre died and
    # L_g stayed at its collapse value 4.91 (docs/macl.md).
    c.model.width, c.model.depth = 4, 3
    c.data.phantom_slices, c.data.patch_size = 24, 64
  else:
    raise ValueError(
        f"configs/macl.py phantom_setup: no phantom set-up for variant {variant!r}; "
        f"use smoke or quickstart."
    )


# The PCL baseline as released (dewenzeng/positional_cl run_script.sh, train_contrast.py,
# dataset/chd.py): L_g only, encoder + MLP head 16w -> 16w -> 512 (--classes 512), views
# spatial only (mirror + elastic / rotate / scale; no intensity jitter), SGD lr 0.1 cosine
# (its batch is 32, --epochs 300). Applied on top of a MACL variant:
#   config_lib.load("configs/macl.py:quickstart", macl.PCL_OVERRIDES)
PCL_OVERRIDES = {
    "method.variant": "pcl",
    "method.embed_dim": 512,
    "data.views": "pcl",
    "optimizer.learning_rate": 0.1,
}


def get_config(variant: str = "smoke"):
  c = config_lib.base_config()
  c.method.name = "macl"
  c.model.name = "pcl_unet"
  c.data.name = "medical_pretrain"
  # train_contrast.py: torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-5) (coupled, no Nesterov).
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-5
  c.optimizer.schedule = "cosine"
  c.optimizer.min_lr_ratio = 0.0  # LR_Scheduler("cos") without min_lr

  if variant == "smoke":
    phantom_setup(c, variant)
    c.data.update(phantom_volumes=4, eval_slices=8, eval_batch_size=8)
    _common.cadence(c, batch_size=8, total_steps=2, log_every=1, learning_rate=0.01)
  elif variant == "quickstart":
    # Small enough for CPU minutes: width 4 (4-32 channels), 64 px phantom slices with 4
    # classes; the official lr 0.01 (at 0.05 the MACL run collapsed: the BatchNorm-free ReLU
    # centre went to zero within 50 steps, L_ER ~ 1e-5 and L_g stuck at its chance value).
    # QUICKSTART CHOICE (not the release, which runs 100 epochs, ~50k steps): 1000 steps.
    # MACL's two image heads are separate networks on different inputs: within ~10 steps they
    # agree on one common direction (L_g at its collapse value, pair_margin 0) and only
    # around step 350-450 do their per-slice deviations start to correlate; after 100 steps
    # L_g was 1.00x chance on seeds 0-2, after 1000 it is below 0.9x (docs/macl.md). The
    # PCL arm (PCL_OVERRIDES) gets the same 1000 steps.
    phantom_setup(c, variant)
    c.data.update(phantom_volumes=48, eval_slices=64, eval_batch_size=16)
    # checkpoint_every=100: an interruption (Ctrl-C, SIGTERM) loses at most 100 steps.
    _common.cadence(
        c,
        batch_size=16,
        total_steps=1000,
        log_every=100,
        eval_every=200,
        checkpoint_every=100,
        learning_rate=0.01,
    )
  elif variant in ("paper", "paper_brats"):
    brats = variant == "paper_brats"
    c.model.width = 32  # --initial_filter_size 32
    c.data.source = "brats" if brats else "chd"
    c.data.root = "/path/to/BraTS" if brats else "/path/to/ImageCHD"
    c.data.patch_size = 192 if brats else 512  # --patch_size 192 192 / 512 512
    c.data.eval_slices = 256
    c.data.eval_batch_size = 32
    c.data.worker_count = 8
    c.method.threshold = 0.05 if brats else 0.1  # --slice_threshold
    # --batch_size per GPU; the loader drops the last partial batch; --lr 0.01.
    _common.epoch_cadence(
        c,
        batch_size=(32 if brats else 16) * PAPER_GPUS,
        examples=BRATS_SLICES if brats else CHD_SLICES,
        epochs=PAPER_EPOCHS,
        log_every=100,
        eval_every_epochs=10,
        learning_rate=0.01,
    )
  else:
    raise ValueError(f"configs/macl.py: unknown variant {variant!r}; use one of {VARIANTS}.")
  return c
