r"""OPD (one-pot multi-frame denoising, BMVC 2022 / IJCV 2023) and its N2C / N2N baselines.

  python -m jaxmilab.main --config=configs/opd.py:smoke --workdir=/tmp/opd_smoke \
      --config.method.recipe=opd_al

`config.method.recipe` picks the recipe: n2c, n2n, opd_rc (default) or opd_al
(jaxmilab/methods/opd.py, `config.method.name = "opd"`). `python -m jaxmilab.opd_quickstart`
trains all four.

Variants:
  smoke       tiny U-Net, 32px crops, 3 frames, 2 steps (seconds on a CPU; the tests run it).
  quickstart  small U-Net on the embedded photos, AWGN sigma 25, 4 frames; equal steps per
              recipe (a few minutes each on a laptop CPU).
  paper       the official setting (numbers below, from LujiaJin/One-Pot_Multi-Frame_Denoising
              train.py / dataset.py / add_noise.py and the OPD paper): the full 5-level U-Net,
              m = 8 frames of AWGN sigma 25 per ImageNet-val image, top-left 256px crops,
              batch 64, Adam(amsgrad) lr 0.0072, StepLR(10 epochs, 0.5), 300 epochs; eval on
              BSD300 / KODAK / SET14 (set the folders below).
"""

from __future__ import annotations

from jaxmilab import config_lib
from jaxmilab.configs import _common

# The paper's data (OPD paper; official train.py trains on a random 90% of the 50,000 ImageNet
# validation images, --trainsize 0.9).
PAPER_TRAIN_IMAGES = 45_000
PAPER_BATCH = 64  # train.py --batchsize 64
PAPER_EPOCHS = 300  # train.py --epochnum 300
PAPER_DECAY_EPOCHS = 10  # train.py --stepsize 10 (StepLR)
PAPER_DECAY_FACTOR = 0.5  # train.py --gamma 0.5


def paper_schedule(steps_per_epoch: int, epochs: int, every: int) -> tuple[int, ...]:
  """Step boundaries of the official StepLR: trainRC/AL.py call scheduler.step() at the START
  of every epoch (before any optimizer.step), so epoch e (0-based) runs at
  lr * gamma ** ((e + 1) // every): the first decay comes after every - 1 epochs."""
  return tuple(
      (every * k - 1) * steps_per_epoch
      for k in range(1, epochs // every + 1)
      if every * k - 1 < epochs
  )


VARIANTS = ("smoke", "quickstart", "paper")


def get_config(variant: str = "smoke"):
  c = config_lib.base_config()
  c.method.name = "opd"
  c.method.recipe = "opd_rc"
  # OPD-AL: L_E + w * L_A as the released utils/loss.py calc_loss_AL, w = train.py --balance 1.0;
  # "minus" is the paper's printed sign (refused for w >= 1, where it has no lower bound).
  c.method.alienation_weight = 1.0
  c.method.alienation_sign = "plus"
  # Per-pixel loss; "auto" = MSE for zero-mean noise (the released code, AWGN / Poisson),
  # masked MSE for Bernoulli / mixed, L1 for impulse / text (jaxmilab/methods/opd.py).
  c.method.loss = "auto"
  c.model.name = "unet"
  c.data.name = "multiframe"
  c.data.noise = "awgn"
  c.data.noise_params = {"sigma": 25.0}  # the OPD paper's headline table: AWGN sigma 25
  c.data.root = ""  # a folder of clean images (else the embedded photos)
  c.data.crop = "random"
  c.data.fixed_noise = True  # m fixed noisy frames per scene (the multi-frame setting)
  c.data.eval_sets = {"embedded": "embedded"}  # the held-out embedded photos (chelsea, rocket)
  c.data.worker_count = 0
  # train.py: optim.Adam(lr=0.0072, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=True).
  c.optimizer.name = "amsgrad"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.999

  if variant == "smoke":
    c.model.width, c.model.depth = 4, 2
    c.data.num_frames = 3
    c.data.patch_size = 32
    c.data.eval_size = 32
    c.data.eval_batch_size = 8
    _common.cadence(c, batch_size=8, total_steps=2, log_every=1, learning_rate=1e-3)
  elif variant == "quickstart":
    c.model.width, c.model.depth = 16, 4
    c.data.num_frames = 4
    c.data.patch_size = 48
    c.data.eval_size = 0  # whole held-out photos (chelsea, rocket)
    c.data.eval_frames = 1
    c.data.eval_batch_size = 2
    # Plain Adam: on runs this short amsgrad (the paper's) learns more slowly (300 steps of
    # N2C: 24.1 dB with amsgrad vs 25.3 dB with adam on the held-out photos, same lr).
    # checkpoint_every=100: an interruption (Ctrl-C, SIGTERM) loses at most 100 steps.
    _common.cadence(
        c,
        batch_size=8,
        total_steps=400,
        log_every=25,
        checkpoint_every=100,
        name="adam",
        learning_rate=3e-3,
        schedule="cosine",
    )
  elif variant == "paper":
    c.model.width, c.model.depth = 32, 5  # unet_dc.py: 32-64-128-256-512, bottleneck 512
    c.data.num_frames = 8  # train.py --multiplicity 8
    c.data.root = "/path/to/ILSVRC2012_img_val"
    c.data.crop = "top_left"  # dataset.py: img[:, 0:256, 0:256]
    c.data.patch_size = 256
    c.data.fixed_noise = True  # add_noise.py writes m fixed noisy copies of the set
    c.data.eval_sets = {
        "bsd300": "/path/to/BSD300/test",
        "kodak": "/path/to/KODAK",
        "set14": "/path/to/SET14",
    }
    c.data.eval_size = 0  # whole test images (padded to one shape, scored uncropped)
    c.data.eval_frames = 1  # test.py denoises one noisy image per scene
    c.data.eval_batch_size = 8
    c.data.worker_count = 8
    # OPD-AL runs the U-Net on all batch * m = 512 frames of 256px per step: some 0.1-0.3 GB of
    # activations per frame in float32, far more than one accelerator holds. Spread the batch
    # over devices (the mesh's data axis), or use --config.batch_size=8
    # --config.optimizer.accumulate_steps=8 (BatchNorm then sees 8 scenes per micro-batch).
    # The DataLoader keeps the last batch; train.py --lr 0.0072.
    steps_per_epoch = _common.epoch_cadence(
        c,
        batch_size=PAPER_BATCH,
        examples=PAPER_TRAIN_IMAGES,
        epochs=PAPER_EPOCHS,
        log_every=100,
        eval_every_epochs=10,
        drop_last=False,
        learning_rate=0.0072,
        schedule="multistep",
    )
    c.optimizer.decay_steps = paper_schedule(steps_per_epoch, PAPER_EPOCHS, PAPER_DECAY_EPOCHS)
    c.optimizer.decay_factor = PAPER_DECAY_FACTOR
  else:
    raise ValueError(
        f"configs/opd.py: unknown variant {variant!r}; use smoke, quickstart or paper."
    )
  return c
