"""MACL: multi-level asymmetric contrastive pre-training for volumetric medical segmentation.

Zeng et al., JBHI (arXiv 2309.11876); official code stevezs315/MACL (train_contrast.py,
network/unet2d.py `UNet2D_classification_MACL`, loss/contrast_loss.py), built on PCL
(dewenzeng/positional_cl). Where the paper and the released code differ this follows the
code, which produced the paper's numbers.

One shared encoder runs four times per step on the four views of a batch of slices
(jaxmilab/data/medical_pretrain.py: I1, I2 intensity views, V1, V2 spatial views):

  auxiliary pixel branch    Y~ = enc(I1) (16w ch at H/16) -> projector (conv3x3 16w->4w, BN,
                            LReLU, conv3x3 4w->4w, BN, LReLU) -> pixel map A [B, H/16, W/16, 4w]
  dominant pixel branch     Y = enc(down(I2)) at H/64 -> decoder blocks 1-2 -> map D
                            [B, H/16, W/16, 4w] (no projector)
  auxiliary image branch    enc(V1) -> GAP -> MLP 16w -> 4w -> ReLU -> E    (g_a)
  dominant image branch     enc(down(V2)) -> decoder blocks 1-2 -> GAP
                            -> MLP 4w -> 4w -> ReLU -> E  (g_d)

down() = bilinear resize by s = 0.25 with align_corners=True (F.interpolate in the official
loop). With w = 32: 16w = 512, 4w = 128, E = 128 (`--classes 512 --scale_factor 0.25`).

  L = L_g + pixel_weight * L_d + er_weight * L_ER       (official --alpha 0.5, --alpha_ER 1.0)
  L_g  = positional_contrastive_loss(g_a, g_d, positions)
  L_d  = the same loss at every location of (A, D), averaged over the locations
         (the official loops over locations; here one einsum over [P, 2B, C])
  L_ER = mean |down(Y~) - Y| (nn.L1Loss; gradients reach both branches, as in the code)

`variant="pcl"` is the PCL baseline (positional_cl `UNet2D_classification`): V1 and V2 at
full resolution through the encoder and one shared MLP head (16w -> 16w -> ReLU -> E),
L = L_g only; its released embedding is 512-d (--classes 512) and its views are spatial only
(config.data.views="pcl"). `symmetric=True` skips the downsampling (the official
--symmetric_net); the dominant pixel map is then resized to the auxiliary grid for L_d.

Logged with the losses: dead_<view> (i1, i2, v1, v2), the share of the BatchNorm-free ReLU
centre's channels that are 0 at every location of every example of the batch, per encoder
pass; cos_within and pair_margin (`embedding_similarity` of g_1, g_2: how alike the slices'
embeddings are inside a branch, and how much closer a slice's own cross-branch pair is than
other slices'). When the dominant bottleneck is 1 x 1 (e.g. 64 px patches, s = 0.25, 4 pooling
levels), L_ER ties it to one corner cell of the auxiliary bottleneck (align_corners) and the
cheapest way down is a dead centre: g_1 is then constant and L_g sits at its collapse value
`chance_l_g(B)` = (T / 0.07) ln(2B - 1); init_variables warns about that geometry.

The backbone is any model (config.model.name) with `encode(x, train)` and
`decode(bottleneck, skips, train, num_blocks)` (jaxmilab/models/pcl_unet.py); its parameters
live under params["backbone"], so fine-tuning (jaxmilab/methods/macl_finetune.py) takes the
encoder and decoder blocks 1-2 from there.

Evaluation (a monitor; the real test is fine-tuning): the three losses on fixed eval views
(running BatchNorm averages; padding examples excluded from every sum) and the positional
retrieval accuracy: the share of image embeddings whose most similar other embedding of
the batch (own other view excluded) is a positive (|position difference| < threshold),
averaged by `jaxmilab.evaluation.pretraining.MACLEvaluator`.
"""

from __future__ import annotations

from typing import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxmilab import config_options
from jaxmilab import registry
from jaxmilab.evaluation import pretraining
from jaxmilab.methods import base
from jaxmilab.models import layers as model_layers
from jaxmilab.models import pcl_unet

# Every config.method key this method reads (official values: pretrain.sh / train_contrast.py;
# read as self.opts).
CONFIG_DEFAULTS = dict(
    init_from="",  # continue from another run's parameters ("" = none)
    variant="macl",  # "macl" | "pcl" (L_g only, encoder + one MLP head, full resolution)
    threshold=0.1,  # --slice_threshold (0.1 CT / cardiac sets, 0.05 BraTS)
    temperature=0.1,  # --temp 0.1
    base_temperature=0.07,  # SupConLoss base_temperature
    scale=0.25,  # --scale_factor: dominant branch input downsampling s
    decoder_blocks=2,  # decoder blocks in the dominant branches
    embed_dim=0,  # image embedding size; 0 = the released one of the variant: MACL
    # int(--classes 512 * --scale_factor 0.25) = 128 (stevezs315/MACL
    # pretrain.sh), PCL --classes 512 (dewenzeng/positional_cl run_script.sh)
    pixel_weight=0.5,  # --alpha (L_d)
    er_weight=1.0,  # --alpha_ER (L_ER)
    symmetric=False,
)  # --symmetric_net: no downsampling of the dominant inputs
VARIANTS = ("macl", "pcl")
RELEASED_EMBED_DIM = {"macl": 128, "pcl": 512}
VIEW_KEYS = ("view_i1", "view_i2", "view_v1", "view_v2")
VARIANT_VIEWS = {"macl": VIEW_KEYS, "pcl": ("view_v1", "view_v2")}


# ---------------------------------------------------------------------------------- loss


def _l2_normalize(z: jax.Array, eps: float = 1e-8) -> jax.Array:
  z = z.astype(jnp.float32)
  return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), eps)


def contrastive_terms(
    features: jax.Array,
    positions: jax.Array,
    *,
    threshold: float,
    temperature: float,
    base_temperature: float = 0.07,
    valid: jax.Array | None = None,
) -> jax.Array:
  """Per-anchor positional SupCon losses of features [..., 2B, C] (rows 0..B-1 view 1,
  B..2B-1 view 2 of the same B slices) -> [..., 2B].

  Anchor i: -(temperature / base_temperature) * mean over its positives p of
  log( exp(s_ip) / sum_{j != i} exp(s_ij) ), s = cosine / temperature; positives = every
  j != i whose position differs by less than `threshold` (its own other view included).
  `valid` [B] (bool) removes padding slices from the contrasts; their anchors get 0.
  """
  two_b = features.shape[-2]
  if two_b % 2:
    raise ValueError(f"contrastive features need 2B rows (two views), got shape {features.shape}.")
  pos = jnp.concatenate([positions, positions]).astype(jnp.float32)  # [2B]
  f = _l2_normalize(features)
  logits = jnp.einsum("...ic,...jc->...ij", f, f, precision=jax.lax.Precision.HIGHEST) / temperature
  eye = jnp.eye(two_b, dtype=bool)
  keep = ~eye
  if valid is not None:
    v = jnp.concatenate([valid, valid]).astype(bool)
    keep = keep & v[None, :]
  positive = (jnp.abs(pos[:, None] - pos[None, :]) < threshold) & keep  # [2B, 2B]
  denominator = jax.nn.logsumexp(jnp.where(keep, logits, -jnp.inf), axis=-1, keepdims=True)
  log_prob = logits - denominator
  mean_log_prob = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=-1) / jnp.maximum(
      jnp.sum(positive, axis=-1), 1
  )
  loss = -(temperature / base_temperature) * mean_log_prob
  if valid is not None:
    loss = jnp.where(jnp.concatenate([valid, valid]).astype(bool), loss, 0.0)
  return loss


def positional_contrastive_loss(
    z1: jax.Array,
    z2: jax.Array,
    positions: jax.Array,
    *,
    threshold: float,
    temperature: float,
    base_temperature: float = 0.07,
) -> jax.Array:
  """PCL / MACL's position-aware SupCon loss of two views z1, z2 [B, C] (scalar).

  The 2B L2-normalised embeddings are all anchors and all contrasts; logits = cosine /
  temperature, self-pairs excluded from numerator and denominator; the positives of an
  anchor are every other embedding whose slice position (positions [B], in (0, 1]) differs
  by less than `threshold` (its own other view included); per anchor the mean
  log-probability over its positives; loss = -(temperature / base_temperature) x the mean
  over the 2B anchors (official SupConLoss with contrastive_method="pcl").
  """
  if z1.shape != z2.shape or z1.ndim != 2:
    raise ValueError(f"z1 and z2 must both be [B, C]; got {z1.shape} and {z2.shape}.")
  features = jnp.concatenate([z1, z2], axis=0)
  return jnp.mean(
      contrastive_terms(
          features,
          positions,
          threshold=threshold,
          temperature=temperature,
          base_temperature=base_temperature,
      )
  )


def dense_contrastive_loss(
    a: jax.Array,
    d: jax.Array,
    positions: jax.Array,
    *,
    threshold: float,
    temperature: float,
    base_temperature: float = 0.07,
    valid: jax.Array | None = None,
) -> jax.Array:
  """L_d: the positional loss at every location of pixel maps a, d [B, h, w, C], averaged over
  locations (and valid anchors) -> scalar. One einsum over [P, 2B, C], P = h w."""
  if a.shape != d.shape:
    raise ValueError(f"Pixel maps must have the same shape; got {a.shape} and {d.shape}.")
  b, h, w, c = a.shape
  features = jnp.concatenate([a.reshape(b, h * w, c), d.reshape(b, h * w, c)], axis=0)  # [2B, P, C]
  terms = contrastive_terms(
      jnp.swapaxes(features, 0, 1),
      positions,
      threshold=threshold,
      temperature=temperature,
      base_temperature=base_temperature,
      valid=valid,
  )
  return _masked_mean(terms, valid)


def _masked_mean(terms: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Mean of [..., 2B] anchor terms over the valid anchors."""
  if valid is None:
    return jnp.mean(terms)
  count = jnp.maximum(2 * jnp.sum(valid.astype(jnp.float32)), 1.0) * np.prod(terms.shape[:-1])
  return jnp.sum(terms) / count


def dead_fraction(y: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Share of the channels of centre features y [B, h, w, C] (after the centre's last ReLU)
  that are 0 at every location of every (valid) example: dead BatchNorm-free ReLU units."""
  alive = y.astype(jnp.float32) > 0
  if valid is not None:
    alive = alive & valid.astype(bool)[:, None, None, None]
  return 1.0 - jnp.mean(jnp.any(alive, axis=(0, 1, 2)).astype(jnp.float32))


def embedding_similarity(
    z1: jax.Array, z2: jax.Array, valid: jax.Array | None = None
) -> dict[str, jax.Array]:
  """Cosine-similarity diagnostics of the L_g pair z1, z2 [B, C] (rows i: the same slice).

  cos_within: mean cosine between different slices inside each view set (z1 with z1, z2
  with z2), averaged over the two; near 1 = every slice gets the same embedding.
  pair_margin: mean cosine of a slice's own pair (z1_i, z2_i) minus the mean cosine of z1_i
  with the other slices' z2_j; 0 = the two branches agree on a common direction but not on
  which slice is which (the state in which L_g sits at `chance_l_g`), > 0 once the two
  heads' per-slice deviations correlate. `valid` [B] excludes padding slices.
  """
  b = z1.shape[0]
  f1, f2 = _l2_normalize(z1), _l2_normalize(z2)
  v = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
  pair_ok = v[:, None] & v[None, :]
  other = pair_ok & ~jnp.eye(b, dtype=bool)

  def mean_over(s, mask):
    return jnp.sum(jnp.where(mask, s, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

  hi = jax.lax.Precision.HIGHEST
  s11 = jnp.einsum("ic,jc->ij", f1, f1, precision=hi)
  s22 = jnp.einsum("ic,jc->ij", f2, f2, precision=hi)
  s12 = jnp.einsum("ic,jc->ij", f1, f2, precision=hi)
  own = jnp.sum(jnp.where(v, jnp.diagonal(s12), 0.0)) / jnp.maximum(jnp.sum(v), 1)
  return {
      "cos_within": (mean_over(s11, other) + mean_over(s22, other)) / 2,
      "pair_margin": own - mean_over(s12, other),
  }


def chance_l_g(batch_size: int, temperature: float = 0.1, base_temperature: float = 0.07) -> float:
  """L_g when every embedding is the same vector (collapse): each anchor's positives and all
  its 2B - 1 contrasts have logit 1 / T, so the loss is (T / T_base) ln(2B - 1)."""
  return temperature / base_temperature * float(np.log(2 * batch_size - 1))


# Centre outputs of MACLNet and the view each pass encodes (logged as dead_<view>).
CENTRES = {"y_aux": "i1", "y_dom": "i2", "y_v1": "v1", "y_v2": "v2"}


def bilinear_align_corners_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out, in] matrix of F.interpolate(mode="bilinear", align_corners=True) along one axis."""
  return model_layers.resize_matrix(out_size, in_size, True)


def downsample(x: jax.Array, scale: float) -> jax.Array:
  """F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True) on [B, H, W, C]
  (output size floor(H * scale), floor(W * scale), as PyTorch)."""
  h, w = x.shape[1:3]
  oh, ow = int(np.floor(h * scale)), int(np.floor(w * scale))
  if oh < 1 or ow < 1:
    raise ValueError(f"Downsampling {x.shape} by {scale} leaves no pixels; use larger patches.")
  rh = jnp.asarray(bilinear_align_corners_matrix(oh, h))
  rw = jnp.asarray(bilinear_align_corners_matrix(ow, w))
  return jnp.einsum(
      "Hh,bhwc,Ww->bHWc", rh, x.astype(jnp.float32), rw, precision=jax.lax.Precision.HIGHEST
  ).astype(x.dtype)


# ------------------------------------------------------------------------------- network


class _MLP(nn.Module):
  """Linear -> ReLU -> Linear (PyTorch default Linear init)."""

  hidden: int
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    from jaxmilab.models import layers  # pylint: disable=g-import-not-at-top

    x = nn.Dense(
        self.hidden,
        kernel_init=layers.torch_default_kernel_init,
        bias_init=layers.torch_default_bias_init(x.shape[-1]),
        name="fc_1",
    )(x)
    x = nn.relu(x)
    return nn.Dense(
        self.features,
        kernel_init=layers.torch_default_kernel_init,
        bias_init=layers.torch_default_bias_init(self.hidden),
        name="fc_2",
    )(x)


class PixelProjector(nn.Module):
  """(conv3x3 -> BN -> LeakyReLU) x 2 to `features` channels (official target_pixel_projector)."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = pcl_unet.ConvBNAct(self.features, name="conv_1")(x, train)
    return pcl_unet.ConvBNAct(self.features, name="conv_2")(x, train)


class MACLNet(nn.Module):
  """Backbone (params["backbone"]) + MACL / PCL heads; returns every branch's output."""

  backbone: nn.Module
  variant: str = "macl"
  decoder_blocks: int = 2
  embed_dim: int = 128
  scale: float = 0.25
  symmetric: bool = False

  @nn.compact
  def __call__(self, views: Mapping[str, jax.Array], train: bool) -> dict[str, jax.Array]:
    down = (lambda x: x) if self.symmetric else (lambda x: downsample(x, self.scale))
    gap = lambda x: jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    if self.variant == "pcl":
      head = None
      out = {}
      for i, key in enumerate(("view_v1", "view_v2")):
        y, _ = self.backbone.encode(views[key], train)
        if head is None:
          head = _MLP(y.shape[-1], self.embed_dim, name="image_head")
        out[f"g_{i + 1}"] = head(gap(y))
        out[f"y_v{i + 1}"] = y
      return out
    # The official call order (BatchNorm running statistics are updated in this order).
    y_aux, _ = self.backbone.encode(views["view_i1"], train)  # [B, H/16, W/16, 16w]
    y_dom, skips_dom = self.backbone.encode(down(views["view_i2"]), train)  # [B, H/64, W/64, 16w]
    y_v1, _ = self.backbone.encode(views["view_v1"], train)
    y_v2, skips_v2 = self.backbone.encode(down(views["view_v2"]), train)
    pixel_dom = self.backbone.decode(y_dom, skips_dom, train, self.decoder_blocks)
    if self.symmetric:
      # Full-resolution dominant input: its pixel map is 1/scale times the auxiliary grid.
      # OUR READING: resized to that grid (bilinear, align_corners). The released
      # train_contrast.py (--symmetric_net) feeds both maps to its per-location loop
      # unresized, pairing location p of the auxiliary map with the p-th (row-major) location
      # of the larger dominant map.
      pixel_dom = downsample(pixel_dom, self.scale)
    image_dom = self.backbone.decode(y_v2, skips_v2, train, self.decoder_blocks)
    channels = pixel_dom.shape[-1]
    pixel_aux = PixelProjector(channels, name="pixel_projector")(y_aux, train)
    g_1 = _MLP(channels, self.embed_dim, name="aux_image_head")(gap(y_v1))
    g_2 = _MLP(channels, self.embed_dim, name="dom_image_head")(gap(image_dom))
    return {
        "g_1": g_1,
        "g_2": g_2,
        "pixel_aux": pixel_aux,
        "pixel_dom": pixel_dom,
        "y_aux": y_aux,
        "y_dom": y_dom,
        "y_v1": y_v1,
        "y_v2": y_v2,
    }


# -------------------------------------------------------------------------------- method


class Method(base.Method):
  """MACL (or PCL with variant="pcl") pre-training on medical_pretrain batches."""

  def __init__(self, config, data_info):
    super().__init__(config, data_info)
    self.opts = m = config_options.options(config.method, CONFIG_DEFAULTS, component="macl")
    self.variant = m.variant
    if self.variant not in VARIANTS:
      raise ValueError(f"config.method.variant={self.variant!r}: use one of {VARIANTS}.")
    self.threshold = float(m.threshold)
    self.temperature = float(m.temperature)
    self.base_temperature = float(m.base_temperature)
    self.pixel_weight = float(m.pixel_weight)
    self.er_weight = float(m.er_weight)
    if self.threshold <= 0 or self.temperature <= 0:
      raise ValueError(
          f"config.method.threshold={self.threshold} and temperature="
          f"{self.temperature} must be > 0."
      )
    backbone = registry.get_model(config.model.name)(config.model)
    for needed in ("encode", "decode"):
      if not hasattr(backbone, needed):
        raise ValueError(
            f"config.model.name={config.model.name!r} has no `{needed}` method; MACL "
            f"needs a backbone with encode() / decode() (see jaxmilab/models/pcl_unet.py)."
        )
    self.net = MACLNet(
        backbone=backbone,
        variant=self.variant,
        decoder_blocks=int(m.decoder_blocks),
        embed_dim=int(m.embed_dim) or RELEASED_EMBED_DIM[self.variant],
        scale=float(m.scale),
        symmetric=bool(m.symmetric),
    )

  def _views(self, batch):
    keys = VARIANT_VIEWS[self.variant]
    missing = [k for k in keys + ("position",) if k not in batch]
    if missing:
      raise ValueError(
          f"method.variant={self.variant!r} batches need {keys + ('position',)}; "
          f"missing {missing}. Use config.data.name='medical_pretrain' with "
          f"config.data.views='macl' for MACL."
      )
    return {k: batch[k] for k in keys}

  def init_variables(self, rng, batch):
    views = self._views(batch)
    if self.variant == "pcl" and "view_i1" in batch:
      logging.warning(
          "method.variant='pcl' on MACL's views (V = spatial(intensity jitter)); the "
          "released PCL views are spatial only: set config.data.views='pcl'."
      )
    if self.variant == "macl":
      out = jax.eval_shape(
          lambda v: self.net.init_with_output({"params": rng}, v, train=False)[0], views
      )
      dom, aux = out["y_dom"].shape[1:3], out["y_aux"].shape[1:3]
      if min(dom) < 2:
        logging.warning(
            "MACL: the dominant branch's bottleneck is %s (auxiliary %s): L_ER then ties it to "
            "one corner cell of the auxiliary bottleneck and the cheapest way down is a dead "
            "centre (L_g at chance). Use patches >= 2^depth / scale * 2 pixels (or a smaller "
            "config.model.depth).",
            "x".join(map(str, dom)),
            "x".join(map(str, aux)),
        )
    return dict(self.net.init({"params": rng}, views, train=False))

  def _terms(self, out, positions, valid=None) -> dict[str, jax.Array]:
    kw = dict(
        threshold=self.threshold,
        temperature=self.temperature,
        base_temperature=self.base_temperature,
    )
    g = jnp.concatenate([out["g_1"], out["g_2"]], axis=0)
    terms = {"l_g": _masked_mean(contrastive_terms(g, positions, valid=valid, **kw), valid)}
    similarity = embedding_similarity(out["g_1"], out["g_2"], valid)
    terms.update({k: jax.lax.stop_gradient(v) for k, v in similarity.items()})
    for key, view in CENTRES.items():
      if key in out:
        terms[f"dead_{view}"] = jax.lax.stop_gradient(dead_fraction(out[key], valid))
    if self.variant == "macl":
      terms["l_d"] = dense_contrastive_loss(
          out["pixel_aux"], out["pixel_dom"], positions, valid=valid, **kw
      )
      y_aux = downsample(out["y_aux"], self.net.scale) if not self.net.symmetric else out["y_aux"]
      diff = jnp.abs(y_aux.astype(jnp.float32) - out["y_dom"].astype(jnp.float32))
      if valid is None:
        terms["l_er"] = jnp.mean(diff)
      else:
        per = jnp.mean(diff, axis=(1, 2, 3))
        terms["l_er"] = jnp.sum(jnp.where(valid, per, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    return terms

  def logged(self) -> tuple[str, ...]:
    """The names `_terms` returns (losses, dead centre fractions, `embedding_similarity`)."""
    similarity = ("cos_within", "pair_margin")
    if self.variant == "pcl":
      return ("l_g", "dead_v1", "dead_v2") + similarity
    return ("l_g", "l_d", "l_er") + tuple(f"dead_{v}" for v in CENTRES.values()) + similarity

  def combine(self, terms: Mapping[str, jax.Array]) -> jax.Array:
    loss = terms["l_g"]
    if self.variant == "macl":
      loss = loss + self.pixel_weight * terms["l_d"] + self.er_weight * terms["l_er"]
    return loss

  def loss(self, params, model_state, batch, rng):
    del rng
    out, updates = self.net.apply(
        {"params": params, **model_state},
        self._views(batch),
        train=True,
        mutable=list(model_state.keys()),
    )
    terms = self._terms(out, batch["position"])
    return self.combine(terms), (terms, dict(updates))

  def eval_step(self, params, model_state, batch):
    out = self.net.apply({"params": params, **model_state}, self._views(batch), train=False)
    valid = (
        batch["valid"].astype(bool) if "valid" in batch else jnp.ones(batch["position"].shape, bool)
    )
    terms = self._terms(out, batch["position"], valid)
    # Positional retrieval: nearest other embedding (own other view excluded) is a positive.
    g = _l2_normalize(jnp.concatenate([out["g_1"], out["g_2"]], axis=0))
    b = out["g_1"].shape[0]
    sim = g @ g.T
    idx = jnp.arange(2 * b)
    other_view = (idx + b) % (2 * b)
    v2 = jnp.concatenate([valid, valid])
    blocked = (idx[:, None] == idx[None, :]) | (idx[None, :] == other_view[:, None]) | ~v2[None, :]
    nearest = jnp.argmax(jnp.where(blocked, -jnp.inf, sim), axis=-1)
    pos = jnp.concatenate([batch["position"], batch["position"]])
    hit = (jnp.abs(pos - pos[nearest]) < self.threshold).astype(jnp.float32)
    per_example = (hit[:b] + hit[b:]) / 2
    # Every example carries its batch's losses: the evaluator's mean over valid examples then
    # weighs each batch by its number of valid examples.
    outputs = {name: jnp.broadcast_to(value, per_example.shape) for name, value in terms.items()}
    outputs["loss"] = jnp.broadcast_to(self.combine(terms), per_example.shape)
    outputs["retrieval_accuracy"] = per_example
    return outputs

  def evaluator(self) -> pretraining.MACLEvaluator:
    return pretraining.MACLEvaluator(("loss",) + self.logged())
