"""One-pot multi-frame denoising (OPD, Jin et al. BMVC 2022 / IJCV 2023) and its baselines.

`config.method.name = "opd"` with `config.method.recipe` in {n2c, n2n, opd_rc, opd_al}
(the only way to pick a recipe). With m noisy frames x_1..x_m of a scene (batch "noisy"
[B, m, H, W, C]) and the network f:

* n2c     l(f(x_1), I), supervised by the clean image "clean" (upper reference). Like the
          other recipes it sees only frame 1 as input (the released code has no N2C
          script; one input per clean target is the usual supervised baseline).
* n2n     l(f(x_1), x_2) (Noise2Noise, fixed pairing).
* opd_rc  l(f(x_i), x_j) with i, j drawn uniformly from 1..m per sample (they may be
          equal, probability 1/m) with the step rng (random coupling; official
          utils/trainRC.py; N2N is the case i=1, j=2).
* opd_al  L = L_E + w * L_A (alienation loss as released: utils/loss.py `calc_loss_AL`
          adds the output-consistency term; the released OPD-AL model was trained so):
            L_E = 1/(m(m-1)) sum_j sum_{k != j} l(f(x_j), x_k)
            L_A = 1/m^2 sum_{j<k} ||f(x_j) - f(x_k)||^2
          w = config.method.alienation_weight (1.0, train.py `--balance`).
          `alienation_sign="minus"` gives the paper's printed L_E - w L_A instead. With
          f_j = f_bar + e_j and S_f = sum_j ||e_j||^2, L_E = S_f / m + (2 / (m(m-1)))
          sum_j <e_j, x_j> + (terms without e) and L_A = S_f / m, so L_E - w L_A has the
          quadratic part (1 - w) S_f / m: it is bounded below only for w < 1 (at w = 1 it
          is linear in e), and weights w >= 1 are refused.

The per-pixel loss l (`config.method.loss`): "mse" (the released code, nn.MSELoss), "l1",
or "masked_mse" (pixels where the target frame is exactly 0 are left out). "auto" (default)
picks by `config.data.noise`: MSE estimates E[x_j | x_i], which is I only for zero-mean
noise (awgn, poisson); multiplicative Bernoulli noise has E[x_j] = (1 - p) I, so its
unbiased loss is MSE over the kept (non-zero) target pixels (masked_mse, also for the
mixed chain, whose last stage is Bernoulli); impulse and text noise replace a minority of
values, so their conditional median (l1) is close to I while the mean is not (Noise2Noise,
Lehtinen et al. 2018, uses L1 for text). N2C's target is clean, so it always uses MSE.
L_A is always MSE (it compares two outputs).

||.||^2 is the mean over pixels and channels (nn.MSELoss(reduction="mean")), averaged over
the batch; `calc_loss_AL` sums over the batch instead (a factor B on the gradient, which
Adam's normalisation removes). The released utils/trainAL.py also aliases its output
tensor to the input tensor (`output_stddose = input_lowdose`, then writes f(x_j) into it),
so its L_E compares outputs with outputs; we compare f(x_j) with the noisy frames x_k, as
`calc_loss_AL`'s arguments and the paper intend. OPD-AL runs f on all B*m frames as one
batch (BatchNorm statistics over B*m frames); the others on B frames. Evaluation denoises
frame 1 with BatchNorm running averages and scores PSNR / SSIM (RGB, uint8, BasicSR
protocol) against "clean", per eval set ("psnr/<set>") and overall, streamed as sums
(`jaxmilab.evaluation.denoising.DenoisingEvaluator`).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import config_options
from jaxmilab import registry
from jaxmilab.data import multiframe
from jaxmilab.evaluation import denoising
from jaxmilab.methods import base
from jaxmilab.models import common as model_common

RECIPES = ("n2c", "n2n", "opd_rc", "opd_al")
LOSSES = ("auto", "mse", "l1", "masked_mse")
# "auto": the per-pixel loss whose minimiser is the clean image for each noise model of
# jaxmilab.data.noise (see the module docstring).
AUTO_LOSS = {
    "awgn": "mse",
    "poisson": "mse",
    "bernoulli": "masked_mse",
    "mixed": "masked_mse",
    "impulse": "l1",
    "text": "l1",
}
# Every config.method key of opd but `recipe` (RECIPES; required, no default), read as self.opts
# (config_lib fills the missing ones).
CONFIG_DEFAULTS = dict(
    alienation_weight=1.0,  # w of OPD-AL (train.py `--balance`)
    alienation_sign="plus",  # "plus" (released calc_loss_AL) | "minus"
    loss="auto",  # LOSSES; "auto" = AUTO_LOSS[config.data.noise]
    init_from="",  # a run whose parameters start this one ("" = none)
)


def pixel_loss(kind: str, out: jax.Array, target: jax.Array) -> jax.Array:
  """Per-sample loss over all but the leading axis: [B, ...] x [B, ...] -> [B]."""
  axes = tuple(range(1, out.ndim))
  out, target = out.astype(jnp.float32), target.astype(jnp.float32)
  if kind == "mse":
    return jnp.mean(jnp.square(out - target), axis=axes)
  if kind == "l1":
    return jnp.mean(jnp.abs(out - target), axis=axes)
  if kind == "masked_mse":
    keep = (target != 0).astype(jnp.float32)
    return jnp.sum(keep * jnp.square(out - target), axis=axes) / jnp.maximum(
        jnp.sum(keep, axis=axes), 1.0
    )
  raise ValueError(f"config.method.loss={kind!r}: use one of {LOSSES}.")


def alienation_terms(outputs: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-sample (L_E, L_A) with MSE, from outputs f(x_j) and frames x_k, both [B, m, H, W, C].

  Uses sum_{j,k} ||f_j - x_k||^2 = m S_f + m S_x + m^2 ||f_bar - x_bar||^2 and
  sum_{j<k} ||f_j - f_k||^2 = m S_f, with S_f = sum_j ||f_j - f_bar||^2 (same for x):
  O(m) instead of O(m^2) image differences, and no cancellation of large terms.
  """
  m = outputs.shape[1]
  outputs, frames = outputs.astype(jnp.float32), frames.astype(jnp.float32)
  pixel_mean = lambda t: jnp.mean(t, axis=tuple(range(2, t.ndim)))  # [B, m, ...] -> [B, m]
  f_bar = jnp.mean(outputs, axis=1, keepdims=True)  # [B, 1, H, W, C]
  x_bar = jnp.mean(frames, axis=1, keepdims=True)
  s_f = jnp.sum(pixel_mean(jnp.square(outputs - f_bar)), axis=1)  # [B]
  s_x = jnp.sum(pixel_mean(jnp.square(frames - x_bar)), axis=1)
  d = pixel_mean(jnp.square(f_bar - x_bar))[:, 0]
  diag = jnp.sum(pixel_mean(jnp.square(outputs - frames)), axis=1)  # sum_j ||f_j - x_j||^2
  all_pairs = m * s_f + m * s_x + m * m * d  # sum_{j,k} ||f_j - x_k||^2
  loss_e = (all_pairs - diag) / (m * (m - 1))
  loss_a = m * s_f / (m * m)
  return loss_e, loss_a


def exchange_term(kind: str, outputs: jax.Array, frames: jax.Array) -> jax.Array:
  """Per-sample L_E = 1/(m(m-1)) sum_{j != k} l(f_j, x_k) for any per-pixel loss (m^2 pairs)."""
  m = outputs.shape[1]
  total = 0.0
  for j in range(m):
    for k in range(m):
      if j != k:
        total = total + pixel_loss(kind, outputs[:, j], frames[:, k])
  return total / (m * (m - 1))


def check_alienation(weight: float, sign: str) -> None:
  """Refuses an unknown sign, a negative weight, and the unbounded L_E - w L_A with w >= 1."""
  if sign not in ("plus", "minus"):
    raise ValueError(
        f"config.method.alienation_sign={sign!r}: use 'plus' (released code) or 'minus'."
    )
  if weight < 0:
    raise ValueError(f"config.method.alienation_weight={weight} must be >= 0.")
  if sign == "minus" and weight >= 1.0:
    raise ValueError(
        f"config.method.alienation_weight={weight} with alienation_sign='minus': "
        "L_E - w L_A has no lower bound for w >= 1 (its quadratic part in the spread of "
        "the outputs is (1 - w) S_f / m); use w < 1 or alienation_sign='plus' (the "
        "released calc_loss_AL)."
    )


# ------------------------------------------------------------------- validation (noisy only)

# Per-scene terms of the validation loss, on held-out noisy frames only (no clean image).
VAL_TERMS = ("val_pairs", "val_same", "val_n2n", "val_spread")


def validation_terms(kind: str, outputs: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray]:
  """Per-scene loss terms from outputs f(x_j) and noisy frames x_k, numpy [N, m, H, W, C] -> [N].

    val_pairs   1/(m(m-1)) sum_{j != k} l(f_j, x_k)    (L_E; every ordered pair of frames)
    val_same    1/m sum_j l(f_j, x_j)                  (the pairs i = j random coupling draws)
    val_n2n     l(f_1, x_2)                            (N2N's fixed pair)
    val_spread  1/m^2 sum_{j<k} ||f_j - f_k||^2        (L_A, always MSE)

  l is the method's per-pixel loss `kind`. Only noisy frames enter: nothing here can read a
  clean image, so a step chosen from these terms never looks at the test set.
  """
  outputs, frames = np.asarray(outputs, np.float64), np.asarray(frames, np.float64)
  if outputs.shape != frames.shape or outputs.ndim != 5 or outputs.shape[1] < 2:
    raise ValueError(
        f"OPD validation: outputs {outputs.shape} and frames {frames.shape} must both "
        f"be [N, m, H, W, C] with m >= 2 noisy frames per held-out scene."
    )

  def loss(a, b):  # [N, ...] -> [N]
    axes = tuple(range(1, a.ndim))
    if kind == "mse":
      return np.mean(np.square(a - b), axis=axes)
    if kind == "l1":
      return np.mean(np.abs(a - b), axis=axes)
    if kind == "masked_mse":
      keep = (b != 0).astype(np.float64)
      return np.sum(keep * np.square(a - b), axis=axes) / np.maximum(np.sum(keep, axis=axes), 1.0)
    raise ValueError(f"config.method.loss={kind!r}: use one of {LOSSES}.")

  m = outputs.shape[1]
  pairs = sum(loss(outputs[:, j], frames[:, k]) for j in range(m) for k in range(m) if j != k)
  same = sum(loss(outputs[:, j], frames[:, j]) for j in range(m))
  spread = sum(
      np.mean(np.square(outputs[:, j] - outputs[:, k]), axis=(1, 2, 3))
      for j in range(m)
      for k in range(j + 1, m)
  )
  return {
      "val_pairs": pairs / (m * (m - 1)),
      "val_same": same / m,
      "val_n2n": loss(outputs[:, 0], frames[:, 1]),
      "val_spread": spread / (m * m),
  }


def validation_loss(
    recipe: str, terms: dict[str, float], m: int, weight: float = 1.0, sign: str = "plus"
) -> float:
  """The recipe's own training loss on the held-out noisy scenes (what the release selects by).

  The released utils/trainRC.py and trainAL.py run a 'val' phase each epoch on a held-out
  10 % of the noisy scenes (train.py `--valsize 0.1`, random_split) with the training loss
  (calc_loss_RC / calc_loss_AL) and keep the weights of the lowest val loss. Here:
    opd_rc  E[l(f_i, x_j)] over i, j uniform in 1..m = ((m - 1) val_pairs + val_same) / m
            (the expectation of the released random draw, computed exactly);
    opd_al  val_pairs +- w val_spread (calc_loss_AL);
    n2n     val_n2n (its fixed pair; N2N is not in the release);
    n2c     val_pairs (our choice: its own loss needs clean images, which selection must not read).
  """
  if recipe == "opd_rc":
    return ((m - 1) * terms["val_pairs"] + terms["val_same"]) / m
  if recipe == "opd_al":
    return terms["val_pairs"] + (1.0 if sign == "plus" else -1.0) * weight * terms["val_spread"]
  if recipe == "n2n":
    return terms["val_n2n"]
  if recipe == "n2c":
    return terms["val_pairs"]
  raise ValueError(f"config.method.recipe={recipe!r}: use one of {RECIPES}.")


def select_step(rows: list[dict], key: str = "val_loss") -> dict:
  """The eval row with the lowest `key` (earliest on ties): model selection on noisy data only.

  `rows` are the eval rows of one run (jaxmilab.metrics.read_split(workdir, "eval")); their
  "psnr" / "ssim" are then read at that step, never maximised over.
  """
  rows = [r for r in rows if key in r]
  if not rows:
    raise ValueError(
        f"OPD selection: no eval row has {key!r}; set config.data.val_scenes > 0 so "
        "the eval holds held-out noisy scenes."
    )
  return min(rows, key=lambda r: (r[key], r["step"]))


class Method(base.Method):
  """N2C / N2N / OPD-RC / OPD-AL training of a denoiser on multi-frame batches."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = config_options.options(
        config.method, CONFIG_DEFAULTS, component="opd", required=("recipe",)
    )
    recipe = self.opts.recipe
    if recipe not in RECIPES:
      raise ValueError(f"config.method.recipe={recipe!r}: use one of {RECIPES}.")
    self.recipe = recipe
    self.alienation_weight = float(self.opts.alienation_weight)
    self.alienation_sign = self.opts.alienation_sign
    check_alienation(self.alienation_weight, self.alienation_sign)
    loss = self.opts.loss
    if loss not in LOSSES:
      raise ValueError(f"config.method.loss={loss!r}: use one of {LOSSES}.")
    if loss == "auto":
      # config.data is multiframe's (the one reader of multi-frame batches); unset: its default.
      noise_name = config.get("data", {}).get("noise", multiframe.CONFIG_DEFAULTS["noise"])
      if noise_name not in AUTO_LOSS:
        raise ValueError(
            f"config.method.loss='auto' knows no loss for config.data.noise={noise_name!r}; "
            f"set config.method.loss to one of {LOSSES[1:]}."
        )
      loss = AUTO_LOSS[noise_name]
    self.pixel_loss = "mse" if recipe == "n2c" else loss
    if recipe == "n2c" and not data_info.extra.get("has_clean", True):
      raise ValueError(
          "recipe n2c needs clean images, but the training data has none (multiframe "
          "frames_root scenes without a clean reference). Use n2n / opd_rc / opd_al."
      )
    self.net = registry.get_model(config.model.name)(config.model)

  # ---------------------------------------------------------------------------- training

  def init_variables(self, rng, batch):
    return dict(self.net.init({"params": rng}, batch["noisy"][:, 0], train=False))

  def _apply_train(self, params, model_state, x):
    return model_common.apply_with_state(self.net, params, model_state, x, train=True)

  def draw_pairs(self, rng: jax.Array, batch_size: int, m: int) -> tuple[jax.Array, jax.Array]:
    """Random coupling: source i and target j per sample, uniform in 0..m-1 ([B] each)."""
    rng_i, rng_j = jax.random.split(rng)
    return (
        jax.random.randint(rng_i, (batch_size,), 0, m),
        jax.random.randint(rng_j, (batch_size,), 0, m),
    )

  def alienation_loss(self, outputs: jax.Array, frames: jax.Array) -> tuple[jax.Array, dict]:
    """Batch-mean L_E +- w L_A from outputs and frames [B, m, H, W, C]."""
    loss_e, loss_a = alienation_terms(outputs, frames)
    if self.pixel_loss != "mse":
      loss_e = exchange_term(self.pixel_loss, outputs, frames)
    loss_e, loss_a = jnp.mean(loss_e), jnp.mean(loss_a)
    sign = 1.0 if self.alienation_sign == "plus" else -1.0
    return loss_e + sign * self.alienation_weight * loss_a, {"loss_e": loss_e, "loss_a": loss_a}

  def loss(self, params, model_state, batch, rng):
    noisy = batch["noisy"]  # [B, m, H, W, C]
    b, m = noisy.shape[:2]
    if self.recipe in ("n2n", "opd_al") and m < 2:
      raise ValueError(
          f"recipe {self.recipe} needs >= 2 frames per scene; the batch has {m} "
          "(config.data.num_frames)."
      )
    if self.recipe == "opd_al":
      frames_flat = noisy.reshape((b * m,) + noisy.shape[2:])  # [B*m, H, W, C]
      out, model_state = self._apply_train(params, model_state, frames_flat)
      loss, metrics = self.alienation_loss(out.reshape(noisy.shape), noisy)
      return loss, (metrics, model_state)
    if self.recipe == "opd_rc":
      src, tgt = self.draw_pairs(rng, b, m)
      pick = lambda idx: jnp.take_along_axis(noisy, idx[:, None, None, None, None], axis=1)[:, 0]
      x, target = pick(src), pick(tgt)  # [B, H, W, C]
    elif self.recipe == "n2n":
      x, target = noisy[:, 0], noisy[:, 1]
    else:  # n2c
      x, target = noisy[:, 0], batch["clean"]
    out, model_state = self._apply_train(params, model_state, x)
    value = jnp.mean(pixel_loss(self.pixel_loss, out, target))
    return value, ({self.pixel_loss: value}, model_state)

  # ------------------------------------------------------------------------------ eval

  def eval_step(self, params, model_state, batch):
    restored = self.net.apply({"params": params, **model_state}, batch["noisy"][:, 0], train=False)
    return {"restored": restored.astype(jnp.float32)}

  def evaluator(self) -> denoising.DenoisingEvaluator:
    return denoising.DenoisingEvaluator(self.data_info.class_names)
