r"""TEAFormer (ICCV 2025, arXiv 2506.18520): supervised restoration (L1) with TEA attention.

  python -m jaxmilab.main --config=configs/teaformer.py:smoke --workdir=/tmp/tea_smoke
  python -m jaxmilab.main --config=configs/teaformer.py:denoise25_quickstart --workdir=/tmp/tea_dn
  python -m jaxmilab.main --config=configs/teaformer.py:allinone_paper --workdir=/tmp/tea_5d \
      --config.data.root=/data/5d

Variants `<task>_<size>`: task in denoise15 / denoise25 / denoise50 / derain / allinone, size in
smoke / quickstart / paper; plain `smoke` = `allinone_smoke`.
  denoise*   degraded_photos with degradations=("gaussian_noise",) and levels=(sigma,): noise of
             a fixed sigma 15 / 25 / 50 on the 0-255 scale. paper: config.data.root = clean
             training images (DFWB:
             DIV2K + Flickr2K + WED + BSD400, as Restormer), eval_root = CBSD68.
  derain     paired_folders, task "derain": <root>/derain/{lq,gt}/ (Rain13K for paper, Rain100L
             for the quickstart; no rain is synthesized, so even smoke needs config.data.root).
  allinone   smoke/quickstart: degraded_photos with the five synthetic types (noise, blur, JPEG,
             haze, low light) on the embedded skimage photos; paper: the 5D paired folders of
             DCPT's all-in-one setting (derain, denoise, dehaze, deblur, lowlight).
Evaluation (every eval_every_steps and at the end): PSNR / SSIM (BasicSR protocol, RGB, uint8)
of the input and of the output, overall and per degradation type, in DIR/metrics.jsonl.

Architecture choices (jaxmilab/models/teaformer.py; the paper has no public code):
  * Layout: Restormer's 4-level U-Net (conv 3x3 embedding, pixel-(un)shuffle resampling, skip
    concatenation, refinement, global residual) with MDTA replaced by TEA attention, so that
    every part is translation-equivariant (convs, 1x1 projections, LayerNorm, GDFN, TEA). The
    paper size is Restormer's (dim 48, blocks (4, 6, 6, 8), refinement 4, heads (1, 2, 4, 8),
    GDFN 2.66): a like-for-like comparison with Restormer/PromptIR at ~the same width.
  * window (15, 11, 9, 7): the local receptive field of one block is window * 2^level pixels:
    15, 22, 36, 56 px. Cost per query is window^2 scores, so the big window sits at full
    resolution only where it buys the most detail (225 candidates ~ the cost of the 256 global
    keys of a 128-px crop), and the latent, whose map is 16x16 on 128-px crops, keeps 7.
  * top_k (32, 32, 24, 16): about 1/7, 1/4, 1/3, 1/3 of the window: each query keeps the keys
    most similar to it (the adaptive part of TEA), which matters most in the large level-1
    window; the softmax and A@V then cost top_k instead of window^2.
  * pool (8, 4, 2, 1): one global key per 8x8 pixel block at every level, so every query sees a
    summary of the whole image (HW/64 keys; the receptive field is global). These pools divide
    the token maps of ANY input once it is padded to a multiple of 8, and shifts that are
    multiples of 8 px keep the network equivariant (equivariance_step 8). Cost: HW/64 keys per
    query (quadratic, but 64x cheaper than full attention; at the latent it is full attention
    over H/8 x W/8 tokens).
  * smoke (teaformer_tiny: dim 8, one block per level, window 3, top_k 4) fits 32-px crops
    (latent 4x4); quickstart (teaformer_small: dim 8, one block per level, windows (5, 5, 3, 3),
    top_k (8, 8, 4, 4)) fits 64-px crops (latent 8x8); batch 4, 200 steps: ~1 s per step on
    a busy 2-core CPU, where XLA's gradient of the GDFN depthwise convs (not TEA) dominates.
  * implementation "auto": the fused Pallas kernel on GPU/TPU, the XLA reference on CPU.
Training recipe (paper): TEAFormer's is not public. ASSUMPTION: Restormer's, from swz30/Restormer
Deraining/Options/Deraining_Restormer.yml (the same in its Denoising / Motion_Deblurring
options): AdamW lr 3e-4, betas [0.9, 0.999], weight_decay 1e-4; scheduler
CosineAnnealingRestartCyclicLR periods [92000, 208000], eta_mins [0.0003, 0.000001] (lr held at
3e-4 for 92k iterations, then cosine to 1e-6: `hold_steps`); total_iter 300000;
use_grad_clip: true, which basicsr/models/image_restoration_model.py applies as
clip_grad_norm_(parameters, 0.01); batch_size_per_gpu 8 on 8 GPUs = 64. Not reproduced: the
progressive patches (mini_batch_sizes [8, 5, 4, 2, 1, 1] x gt_sizes [128 .. 384] over iters
[92000, 64000, 48000, 36000, 36000, 24000]): jit compiles one shape, so `paper` trains the first
stage's 128 px / batch 64 throughout.
"""

from __future__ import annotations

from jaxmilab import config_lib
from jaxmilab.configs import _common
from jaxmilab.configs import dcpt as _dcpt

TASKS = ("denoise15", "denoise25", "denoise50", "derain", "allinone")
SIZES = ("smoke", "quickstart", "paper")
# Fixed noise levels (0-255 scale) of the denoising variants (Restormer / DCPT tables: CBSD68 at
# sigma 15, 25, 50), applied through degraded_photos' `levels` key.
NOISE_SIGMA = {"denoise15": 15, "denoise25": 25, "denoise50": 50}
SYNTHETIC_5 = _dcpt.SYNTHETIC_5  # the five synthetic types of the allinone smoke / quickstart
TASKS_5D = _dcpt.TASKS_5D  # DCPT Table 1 (5D) folders of the allinone paper variant


def _size(c, size: str) -> None:
  """Model, crops and schedule of one size."""
  if size in ("smoke", "quickstart"):
    small = size == "quickstart"
    _common.restoration_cpu_size(
        c,
        size,
        preset="teaformer_small" if small else "teaformer_tiny",
        batch_size=4,
        eval_batch_size=4 if small else 8,
        total_steps=200 if small else 4,
        checkpoint_every=100 if small else 2,
    )
  else:  # paper: Restormer's recipe (see the module docstring).
    c.model.preset = "teaformer"
    c.data.update(patch_size=128, eval_size=256, eval_batch_size=16, worker_count=8)
    _common.cadence(
        c,
        batch_size=64,
        total_steps=300_000,
        log_every=100,
        eval_every=10_000,
        checkpoint_every=5_000,
        learning_rate=3e-4,  # Restormer options: optim_g lr
        b1=0.9,
        b2=0.999,  # betas [0.9, 0.999]
        schedule="cosine",
        hold_steps=92_000,  # periods[0] with eta_mins[0] = lr: held
        min_lr_ratio=1e-6 / 3e-4,  # eta_mins[1]
        weight_decay=1e-4,  # weight_decay 1e-4
        grad_clip_norm=0.01,
    )  # use_grad_clip: clip_grad_norm_(..., 0.01)


def _data(c, task: str, size: str) -> None:
  """Dataset of one task."""
  if task.startswith("denoise"):
    c.data.name = "degraded_photos"
    c.data.degradations = ("gaussian_noise",)
    c.data.levels = (NOISE_SIGMA[task],)  # fixed sigma (0-255 scale), train and eval
    if size == "paper":
      c.data.root = "/path/to/dfwb"  # clean DIV2K + Flickr2K + WED + BSD400 images
      c.data.eval_root = "/path/to/cbsd68"  # clean CBSD68
  elif task == "derain":
    c.data.name = "paired_folders"
    c.data.tasks = ("derain",)
    c.data.root = "/path/to/rain13k" if size == "paper" else "/path/to/rain100l"
  else:
    if size == "paper":
      c.data.name = "paired_folders"
      c.data.root = "/path/to/5d"  # <root>/<task>/{lq,gt}/
      c.data.tasks = TASKS_5D
    else:
      c.data.name = "degraded_photos"
      c.data.degradations = SYNTHETIC_5


VARIANTS = ("smoke",) + tuple(f"{t}_{s}" for t in TASKS for s in SIZES)


def get_config(variant: str = "smoke"):
  """`<task>_<size>` (see the module docstring) or plain `smoke`."""
  if variant == "smoke":
    variant = "allinone_smoke"
  task, _, size = variant.rpartition("_")
  if task not in TASKS or size not in SIZES:
    raise ValueError(
        f"configs/teaformer.py: unknown variant {variant!r}; use smoke or "
        f"<task>_<size> with task in {TASKS} and size in {SIZES}, e.g. "
        f"denoise25_quickstart."
    )
  c = config_lib.base_config()
  c.method.name = "restoration"
  c.method.init_from = ""  # a dcpt / maskdcpt / restoration run of the same model
  c.model.name = "teaformer"
  c.model.implementation = "auto"  # Pallas on GPU/TPU, XLA elsewhere
  c.data.worker_count = 0
  c.optimizer.name = "adamw"
  _size(c, size)
  _data(c, task, size)
  return c
