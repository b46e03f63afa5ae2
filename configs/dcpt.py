r"""DCPT pre-training (ICLR 2025, arXiv 2501.15510) of NAFNet with a degradation classifier.

  python -m jaxmilab.main --config=configs/dcpt.py:smoke --workdir=/tmp/dcpt_smoke

Variants:
  smoke       tiny NAFNet, 32px patches, a few steps (seconds on a CPU; the tests run it).
  quickstart  small NAFNet pre-trained on the embedded skimage photos with Gaussian noise and
              JPEG at random levels; `python -m jaxmilab.quickstart` chains it with fine-tuning
              (configs/restoration.py:quickstart) and a from-scratch baseline.
  paper       DCPT's NAFNet (width 64, enc [1,1,1,28], middle 1, dec [1,1,1,1]) on the 5D
              all-in-one sets read from paired folders (jaxmilab/data/paired_folders.py).
"""

from __future__ import annotations

from jaxmilab import config_lib
from jaxmilab.configs import _common

# 5D all-in-one tasks (DCPT Table 1): derain Rain100L, denoise (BSD400+WED, sigma 15/25/50),
# dehaze SOTS-outdoor, deblur GoPro, low-light LOL-v1. Folder names under config.data.root.
TASKS_5D = ("derain", "denoise", "dehaze", "deblur", "lowlight")
SYNTHETIC_5 = ("gaussian_noise", "gaussian_blur", "jpeg", "haze", "low_light")
# The quickstart's degradation types: DCPT pre-trains on them at random levels, and
# configs/restoration.py:quickstart fine-tunes on them at fixed levels.
QUICKSTART_TYPES = ("gaussian_noise", "jpeg")


VARIANTS = ("smoke", "quickstart", "paper")


def get_config(variant: str = "smoke"):
  c = config_lib.base_config()
  c.method.name = "dcpt"
  c.method.mode = "pretrain"  # DCPTModel; probe / joint / transfer: jaxmilab/methods/dcpt.py
  c.method.focal_gamma = 0.0  # DCPT: focal loss with gamma 0 and no alpha (= cross-entropy)
  c.method.cls_weight = 1.0  # L = L_pix + L_cls
  c.method.classifier_learning_rate = 0.0  # 0 = the network's (separate optimizer, same lr)
  # PSNR / SSIM on uint8-rounded images: MILab-PKU/dcpt options/all_in_one/test/
  # test_NAFNet_5d.yml `val.metrics.psnr.image_range: 255.0`, crop_border 0, test_y_channel false.
  c.method.float_metrics = False
  c.model.name = "nafnet"
  c.data.name = "degraded_photos"
  c.data.degradations = SYNTHETIC_5
  c.data.worker_count = 0
  c.optimizer.name = "adamw"
  c.optimizer.b1, c.optimizer.b2 = 0.9, 0.9  # ASSUMPTION for paper: NAFNet's betas (see paper)

  if variant == "smoke":
    _common.restoration_cpu_size(
        c,
        variant,
        preset="nafnet_tiny",
        batch_size=8,
        eval_batch_size=8,
        total_steps=6,
        checkpoint_every=2,
    )
  elif variant == "quickstart":
    # Sized for the README's 10-minute budget on a 2-core CPU (with configs/restoration.py:
    # quickstart twice); a DCPT step costs ~3.7x an L1 step (benchmarks/train_step).
    _common.restoration_cpu_size(
        c,
        variant,
        preset="nafnet_small",
        batch_size=8,
        eval_batch_size=8,
        total_steps=300,
        checkpoint_every=100,
    )
    # Ours, for a 2-core CPU (docs/results.md): the fine-tuning task's two types at random levels,
    # at its lr 3e-3. (The five basic types at lr 1e-3 left the fine-tuned network below scratch.)
    c.data.degradations = QUICKSTART_TYPES
    c.optimizer.learning_rate = 3e-3
    # The classifier at a tenth of that, for 300 steps, as configs/maskdcpt.py:quickstart
    # (docs/maskdcpt.md, "Why the classifier sat at chance"): at 3e-3 and 150 steps seed 2 reached
    # 86 % training accuracy at step 80 and collapsed to chance (50 % held-out); at 3e-4 and 300
    # steps it collapsed at step 110-120 too but recovered (80.5 % held-out).
    c.method.classifier_learning_rate = 3e-4
    # Held-out set that can measure (shared by restoration.py and maskdcpt.py quickstarts): the
    # two held-out photos x 50 fixed 64 px crops each (data/degraded_photos.py grid_crops) x every
    # type = 100 examples per type, each at its own level (fixed per-example seeds).
    c.data.eval_size = 64
    c.data.eval_crops = 50
  elif variant == "paper":
    c.model.preset = "nafnet_dcpt"
    del c.data.degradations  # real data: the label is the task folder
    c.data.name = "paired_folders"
    c.data.root = "/path/to/5d"  # <root>/<task>/{lq,gt}/
    c.data.tasks = TASKS_5D  # test_NAFNet_5d.yml: Rain100L, CBSD68, SOTS, GoPro, LOL
    # test_NAFNet_5d.yml test_2 (CBSD68): PairedImageDenoiseDataset, sigma_type constant,
    # sigma_range 25: the noisy input is made from gt at test time (float, unclipped, seed 0).
    c.data.denoise_sigma = 25.0
    c.data.eval_size = 256  # ASSUMPTION: the official test runs whole images
    c.data.eval_batch_size = 32
    c.data.worker_count = 8
    # Training recipe: ASSUMPTION, all of it. The DCPT release has test options only (README:
    # pre-training "coming soon"); these numbers follow the all-in-one recipe of PromptIR
    # (va1shn9v/PromptIR options.py: AdamW, lr 2e-4, patch_size 128, warm-up then cosine) with
    # NAFNet's AdamW betas (0.9, 0.9) and weight decay 0 (megvii-research/NAFNet
    # options/train/*/NAFNet-width64.yml); the batch of 32 and the step count are ours. Change
    # them when the authors publish theirs.
    c.data.patch_size = 128  # ASSUMPTION (PromptIR patch_size 128)
    # An EMA of the parameters, evaluated and saved as params_ema: the released test options load
    # it (MILab-PKU/dcpt and MILab-PKU/MaskDCPT options/all_in_one/test/test_NAFNet_5d.yml
    # `param_key_g: params_ema`; BasicSR sr_model.py keeps net_g_ema only when train ema_decay > 0).
    # The decay itself is in the unreleased train options: 0.999 is BasicSR's usual value.
    c.ema_decay = 0.999
    _common.cadence(
        c,
        batch_size=32,  # ASSUMPTION
        total_steps=200_000,  # ASSUMPTION
        log_every=100,
        eval_every=10_000,
        checkpoint_every=5_000,
        learning_rate=2e-4,  # ASSUMPTION (PromptIR lr 2e-4)
        schedule="cosine",  # ASSUMPTION
        min_lr_ratio=5e-3,  # ASSUMPTION: cosine down to 1e-6
        weight_decay=0.0,
    )  # ASSUMPTION (NAFNet weight_decay 0)
  else:
    raise ValueError(
        f"configs/dcpt.py: unknown variant {variant!r}; use smoke, quickstart or " f"paper."
    )
  return c
