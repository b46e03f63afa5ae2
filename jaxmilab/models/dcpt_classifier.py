"""DCPT's degradation classifier and focal loss (ICLR 2025, arXiv 2501.15510).

Transcribes `PromptIR_NoImg_DC` of MILab-PKU/dcpt `basicsr/archs/degrad_classify_arch.py`
(an ODISE-style feature aggregator) and `FocalLoss` of `basicsr/losses/classify_loss.py`.

Order of levels. The official training code (`degradation_classification_pretrain_model.py`)
hooks the decoder stages, which fire coarse to fine, and calls `net_dc(lq, hook_outputs[::-1])`:
the classifier reads the FINEST map first (64@H, 128@H/2, 256@H/4, 512@H/8 for NAFNet-64), and
each level's conv 1x1 + max-pool 2 brings z to the next, coarser level's width and size.
`DegradationClassifier` takes the features in the backbone's forward order (coarse to fine,
as `NAFNet(..., return_decoder_features=True)` returns them) and reverses them itself.

Per level i (fine to coarse), with w = softmax(mixing_weights), z = 0:
  z = Bottleneck(Bottleneck(z + w_i * F_i))
  z = ReLU(MaxPool2x2(Conv1x1_{C_i -> C_{i+1}}(z)))   (last level: C_L -> C_L, still pooled)
then two more Bottlenecks, global average pool, Linear -> num_classes.
Bottleneck (detectron2 BottleneckBlock, norm "LN"): conv1x1 (C->2C) LN ReLU, conv3x3 (2C->2C)
LN ReLU, conv1x1 (2C->C) LN, + x, ReLU; convs without bias, LN = channels-first eps 1e-6.

The official `downsample=True` mode (SwinIR tokens at one resolution, level i resized by
1/2**i) is not built in: give this module maps already at pyramid sizes.

Parameter names (torch -> flax): bottleneck_layers.{i}.{j}.convK.weight ->
bottleneck_layers_{i}_{j}/convK/kernel, .convK.norm.weight/.bias -> convK/norm/scale, /bias;
downsample_layers.{i}.0.weight -> downsample_layers_{i}/kernel; last_stage.{j}.* ->
last_stage_{j}/*; mixing_weights -> mixing_weights; fc.weight [N, C] -> fc/kernel [C, N],
fc.bias -> fc/bias. Conv weights OIHW -> HWIO.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxmilab.models import layers

# detectron2 `c2_msra_fill`: kaiming_normal_(mode="fan_out", nonlinearity="relu"), no bias.
_msra_fill = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvNorm(nn.Module):
  """detectron2 `Conv2d(..., bias=False, norm=LayerNorm)`: conv then channels-first LayerNorm."""

  features: int
  kernel_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", _msra_fill, (k, k, x.shape[-1], self.features), jnp.float32)
    pad = (k - 1) // 2
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype),
        kernel.astype(self.dtype),
        window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return layers.LayerNorm2d(dtype=self.dtype, name="norm")(y)


class Bottleneck(nn.Module):
  """ResNet bottleneck with width 2C and identity shortcut (C in = C out), ReLU after the sum."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    h = nn.relu(ConvNorm(2 * c, 1, dtype=self.dtype, name="conv1")(x))
    h = nn.relu(ConvNorm(2 * c, 3, dtype=self.dtype, name="conv2")(h))
    h = ConvNorm(c, 1, dtype=self.dtype, name="conv3")(h)
    return nn.relu(h + x)


class DegradationClassifier(nn.Module):
  """Predicts the degradation type from a backbone's decoder maps (official `PromptIR_NoImg_DC`).

  Attributes:
    num_classes: number of degradation types.
    num_res_blocks: bottlenecks per level and in the last stage (official default 2).
    dtype: compute dtype; parameters are float32.
  """

  num_classes: int
  num_res_blocks: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], visible: jax.Array | None = None) -> jax.Array:
    """features: decoder maps in forward order (coarse to fine), each [B, h_k, w_k, C_k];
    the finest must halve (floor) into the next finer-to-coarser one. Returns [B, num_classes].

    visible: optional [B, gh, gw] 0/1 patch mask (1 = visible) of the image the maps come from
    (MaskDCPT's masked forward). The classifier then reads visible positions only: its maps are
    zeroed at hidden positions after every block and the global average pool is the mean over
    visible positions, so a half-masked map and a dense one are pooled on the same scale (the
    released k-NN probe reads `x[mask]`, the decoder map at visible positions:
    MILab-PKU/MaskDCPT mask_*_arch.py "for knn"). Mask pooling follows the map pooling
    (max-pool: a coarse cell is visible if any of its pixels is). None = DCPT's classifier.
    """
    feats = list(features)[::-1]  # fine to coarse (official order)
    _check_pyramid(feats)
    dims = [f.shape[-1] for f in feats]
    m = None if visible is None else _expand_mask(visible, feats[0].shape[1:3]).astype(self.dtype)
    keep = (lambda t: t) if m is None else (lambda t: t * m)
    mixing = self.param("mixing_weights", nn.initializers.ones, (len(feats),), jnp.float32)
    weights = jax.nn.softmax(mixing).astype(self.dtype)
    z = jnp.zeros((), self.dtype)
    for i, f in enumerate(feats):
      z = keep(z + weights[i] * f.astype(self.dtype))  # [B, h_i, w_i, C_i]
      for j in range(self.num_res_blocks):
        z = keep(Bottleneck(dtype=self.dtype, name=f"bottleneck_layers_{i}_{j}")(z))
      out_dim = dims[i + 1] if i + 1 < len(dims) else dims[i]
      z = layers.conv2d(
          z, out_dim, 1, name=f"downsample_layers_{i}", use_bias=False, dtype=self.dtype
      )
      z = nn.relu(nn.max_pool(z, (2, 2), strides=(2, 2), padding="VALID"))
      if m is not None:
        m = nn.max_pool(m, (2, 2), strides=(2, 2), padding="VALID")
    for j in range(self.num_res_blocks):
      z = keep(Bottleneck(dtype=self.dtype, name=f"last_stage_{j}")(z))
    if m is None:
      pooled = jnp.mean(z.astype(jnp.float32), axis=(1, 2))  # [B, C_L]
    else:
      m32 = m.astype(jnp.float32)
      pooled = jnp.sum(z.astype(jnp.float32) * m32, axis=(1, 2)) / jnp.maximum(
          jnp.sum(m32, axis=(1, 2)), 1.0
      )
    fan_in = dims[-1]
    return nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=layers.torch_default_kernel_init,
        bias_init=layers.torch_default_bias_init(fan_in),
        name="fc",
    )(pooled)


def _expand_mask(visible: jax.Array, size: Sequence[int]) -> jax.Array:
  """[B, gh, gw] patch mask -> [B, h, w, 1] by nearest-neighbour repetition (h, w multiples)."""
  _, gh, gw = visible.shape
  h, w = int(size[0]), int(size[1])
  if h % gh or w % gw:
    raise ValueError(
        f"DegradationClassifier: the finest map {h} x {w} does not divide into the "
        f"{gh} x {gw} visibility grid."
    )
  return jnp.repeat(jnp.repeat(visible, h // gh, axis=1), w // gw, axis=2)[..., None]


def _check_pyramid(feats: list[jax.Array]) -> None:
  """Raises ValueError unless feats (fine to coarse) are NHWC maps halving level by level."""
  if not feats:
    raise ValueError(
        "DegradationClassifier got no features; pass the backbone's decoder maps "
        "(NAFNet: return_decoder_features=True)."
    )
  shapes = [tuple(f.shape) for f in feats]
  if any(len(s) != 4 for s in shapes):
    raise ValueError(f"DegradationClassifier expects [B, h, w, C] maps, got shapes {shapes[::-1]}.")
  for fine, coarse in zip(shapes, shapes[1:]):
    if coarse[0] != fine[0] or coarse[1] != fine[1] // 2 or coarse[2] != fine[2] // 2:
      raise ValueError(
          f"DegradationClassifier: decoder maps (forward order) {shapes[::-1]} are not a pyramid "
          f"whose size doubles from each map to the next; map {coarse} does not pair with {fine}."
      )


def focal_loss(
    logits: jax.Array, labels: jax.Array, gamma: float = 0.0, alpha: jax.Array | None = None
) -> jax.Array:
  """Focal loss (Lin et al. 2017) as DCPT's `FocalLoss`: mean_b -alpha[y_b] (1 - p_b)^gamma log p_b.

  logits [B, N], labels [B] int, alpha optional per-class weights [N]. gamma=0 and no alpha is
  softmax cross-entropy. Like the official loss, the mean is a plain mean over the batch.
  """
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
        f"focal_loss expects logits [B, N] and labels [B]; got {logits.shape} and "
        f"{labels.shape}."
    )
  logits = logits.astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  log_pt = -optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B]
  loss = -log_pt
  if alpha is not None:
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha.shape != logits.shape[1:]:
      raise ValueError(
          f"focal_loss: alpha must be [num_classes]={logits.shape[1:]}, got {alpha.shape}."
      )
    loss = alpha[labels] * loss
  if not (isinstance(gamma, (int, float)) and gamma == 0):
    one_minus_pt = -jnp.expm1(log_pt)  # 1 - p, accurate near p = 1
    loss = jnp.power(jnp.maximum(one_minus_pt, 0.0), gamma) * loss
  return jnp.mean(loss)
