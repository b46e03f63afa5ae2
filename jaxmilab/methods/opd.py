"""One-pot multi-frame denoising (OPD, Jin et al. BMVC 2022 / IJCV 2023) and its baselines.

One `Method` serves four recipes, chosen by the method name (jaxmilab/methods/n2c.py,
n2n.py, opd_rc.py, opd_al.py) or, for `config.method.name = "opd"`, by
`config.method.recipe`. With m noisy frames x_1..x_m of a scene (batch "noisy"
[B, m, H, W, C]) and the network f:

* n2c     ||f(x_1) - I||^2 (supervised by the clean image "clean"; upper reference).
* n2n     ||f(x_1) - x_2||^2 (Noise2Noise, fixed pairing).
* opd_rc  ||f(x_i) - x_j||^2 with i, j drawn uniformly from 1..m per sample (may be
          equal) with the step rng (random coupling; N2N is the case i=1, j=2).
* opd_al  L = L_E - lambda * L_A (alienation loss, paper's sign; opd.md):
            L_E = 1/(m(m-1)) sum_j sum_{k != j} ||f(x_j) - x_k||^2
            L_A = 1/m^2 sum_{j<k} ||f(x_j) - f(x_k)||^2
          lambda = config.method.alienation_weight (1.0, the official train.py `--balance`).

||.||^2 is the mean over pixels and channels (the official nn.MSELoss(reduction="mean")),
averaged over the batch. The official calc_loss_AL adds lambda * L_A (opposite sign) and
sums over the batch instead of averaging, and its trainAL.py writes network outputs into
the input tensor in place; we follow the paper. OPD-AL runs f on all B*m frames as one
batch (BatchNorm statistics over B*m frames); the others on B frames. Evaluation denoises
frame 1 with BatchNorm running averages and scores PSNR / SSIM (RGB, uint8, BasicSR
protocol) against "clean", per eval set ("psnr/<set>") and overall.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import registry
from jaxmilab.evaluation import restoration as restoration_metrics
from jaxmilab.methods import base
from jaxmilab.methods import common

RECIPES = ("n2c", "n2n", "opd_rc", "opd_al")
_CONFIG_KEYS = ("name", "recipe", "alienation_weight", "init_from")


def _mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-sample mean squared error over all but the leading axis: [B, ...] -> [B]."""
  return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def alienation_terms(outputs: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-sample (L_E, L_A) of opd.md from outputs f(x_j) and frames x_k, both [B, m, H, W, C].

  Uses sum_{j,k} ||f_j - x_k||^2 = m S_f + m S_x + m^2 ||f_bar - x_bar||^2 and
  sum_{j<k} ||f_j - f_k||^2 = m S_f, with S_f = sum_j ||f_j - f_bar||^2 (same for x):
  O(m) instead of O(m^2) image differences, and no cancellation of large terms.
  """
  m = outputs.shape[1]
  outputs, frames = outputs.astype(jnp.float32), frames.astype(jnp.float32)
  pixel_mean = lambda t: jnp.mean(t, axis=tuple(range(2, t.ndim)))  # [B, m, ...] -> [B, m]
  f_bar = jnp.mean(outputs, axis=1, keepdims=True)                  # [B, 1, H, W, C]
  x_bar = jnp.mean(frames, axis=1, keepdims=True)
  s_f = jnp.sum(pixel_mean(jnp.square(outputs - f_bar)), axis=1)    # [B]
  s_x = jnp.sum(pixel_mean(jnp.square(frames - x_bar)), axis=1)
  d = pixel_mean(jnp.square(f_bar - x_bar))[:, 0]
  diag = jnp.sum(pixel_mean(jnp.square(outputs - frames)), axis=1)  # sum_j ||f_j - x_j||^2
  all_pairs = m * s_f + m * s_x + m * m * d                         # sum_{j,k} ||f_j - x_k||^2
  loss_e = (all_pairs - diag) / (m * (m - 1))
  loss_a = m * s_f / (m * m)
  return loss_e, loss_a


class Method(base.Method):
  """N2C / N2N / OPD-RC / OPD-AL training of a denoiser on multi-frame batches."""

  RECIPE: str | None = None  # set by the thin modules n2c / n2n / opd_rc / opd_al

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    unknown = sorted(k for k in config.method.keys() if k not in _CONFIG_KEYS)
    if unknown:
      raise ValueError(f"config.method: unknown key(s) {unknown} for {config.method.name!r}; "
                       f"known keys: {list(_CONFIG_KEYS)}.")
    recipe = config.method.get("recipe") or self.RECIPE
    if self.RECIPE is not None and recipe != self.RECIPE:
      raise ValueError(f"config.method.recipe={recipe!r} contradicts config.method.name="
                       f"{config.method.name!r}; drop config.method.recipe.")
    if recipe not in RECIPES:
      raise ValueError(f"config.method.recipe={recipe!r}: use one of {RECIPES} (or set "
                       f"config.method.name to one of them).")
    self.recipe = recipe
    self.alienation_weight = float(config.method.get("alienation_weight", 1.0))
    if recipe == "n2c" and not data_info.extra.get("has_clean", True):
      raise ValueError("n2c needs clean images, but the training data has none (multiframe "
                       "frames_root scenes without a clean reference). Use n2n / opd_rc / opd_al.")
    self.net = registry.get_model(config.model.name)(config.model)

  # ---------------------------------------------------------------------------- training

  def init_variables(self, rng, batch):
    return dict(self.net.init({"params": rng}, batch["noisy"][:, 0], train=False))

  def _apply_train(self, params, model_state, x):
    out, updates = self.net.apply({"params": params, **model_state}, x, train=True,
                                  mutable=list(model_state.keys()))
    return out, dict(updates)

  def draw_pairs(self, rng: jax.Array, batch_size: int, m: int) -> tuple[jax.Array, jax.Array]:
    """Random coupling: source i and target j per sample, uniform in 0..m-1 ([B] each)."""
    rng_i, rng_j = jax.random.split(rng)
    return (jax.random.randint(rng_i, (batch_size,), 0, m),
            jax.random.randint(rng_j, (batch_size,), 0, m))

  def loss(self, params, model_state, batch, rng):
    noisy = batch["noisy"]  # [B, m, H, W, C]
    b, m = noisy.shape[:2]
    if self.recipe == "opd_al":
      frames_flat = noisy.reshape((b * m,) + noisy.shape[2:])  # [B*m, H, W, C]
      out, model_state = self._apply_train(params, model_state, frames_flat)
      outputs = out.reshape(noisy.shape)                        # [B, m, H, W, C]
      loss_e, loss_a = alienation_terms(outputs, noisy)
      loss_e, loss_a = jnp.mean(loss_e), jnp.mean(loss_a)
      loss = loss_e - self.alienation_weight * loss_a
      return loss, ({"loss_e": loss_e, "loss_a": loss_a}, model_state)
    if self.recipe == "opd_rc":
      src, tgt = self.draw_pairs(rng, b, m)
      pick = lambda idx: jnp.take_along_axis(noisy, idx[:, None, None, None, None], axis=1)[:, 0]
      x, target = pick(src), pick(tgt)                          # [B, H, W, C]
    elif self.recipe == "n2n":
      x, target = noisy[:, 0], noisy[:, 1]
    else:  # n2c
      x, target = noisy[:, 0], batch["clean"]
    out, model_state = self._apply_train(params, model_state, x)
    mse = jnp.mean(_mse(out, target))
    return mse, ({"mse": mse}, model_state)

  # ------------------------------------------------------------------------------ eval

  def eval_step(self, params, model_state, batch):
    restored = self.net.apply({"params": params, **model_state}, batch["noisy"][:, 0], train=False)
    return {"restored": restored.astype(jnp.float32)}

  def summarize_eval(self, outputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """psnr / ssim of f(x_1) and psnr_input / ssim_input of x_1 vs clean; per set as "<k>/<set>"."""
    valid = np.flatnonzero(outputs["valid"])
    per_image: dict[str, list[float]] = {"psnr": [], "ssim": [], "psnr_input": [], "ssim_input": []}
    for i in valid:
      h, w = int(outputs["height"][i]), int(outputs["width"][i])
      clean = restoration_metrics.to_uint8(outputs["clean"][i, :h, :w])
      for suffix, image in (("", outputs["restored"][i, :h, :w]), ("_input", outputs["noisy"][i, 0, :h, :w])):
        image = restoration_metrics.to_uint8(image)
        # PSNR of identical images is inf (BasicSR); cap at 100 dB so averages stay finite.
        per_image["psnr" + suffix].append(min(restoration_metrics.psnr(image, clean), 100.0))
        per_image["ssim" + suffix].append(restoration_metrics.ssim(image, clean))
    per_image_arr = {k: np.asarray(v) for k, v in per_image.items()}
    summary = {k: float(v.mean()) for k, v in per_image_arr.items()}
    labels = outputs["label"][valid]
    names = self.data_info.class_names
    if len(names) > 1:
      for index, name in enumerate(names):
        sel = labels == index
        if sel.any():
          summary.update({f"{k}/{name}": float(v[sel].mean()) for k, v in per_image_arr.items()})
    return summary

  def eval_images(self, outputs):
    grid = {"lq": outputs["noisy"][:, 0], "restored": outputs["restored"], "gt": outputs["clean"],
            "valid": outputs["valid"], "label": outputs["label"]}
    image = common.image_grid(grid)
    if image.shape[-1] == 1:
      image = np.repeat(image, 3, axis=-1)
    return image
