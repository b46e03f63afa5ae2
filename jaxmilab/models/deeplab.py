"""DeepLabV2 and DeepLabV3+ on dilated ResNet trunks, as in the released CDSP code, plus LoRM.

Networks (Zxl19990529/Class-driven-Scribble-Promotion-Network; module names follow its state
dicts so that its keys map by name):

* "deeplabv3plus" (models/deeplabV3_lorm.py `ResNet_lorm`): ResNet (output stride 8) ->
  `layer_pred0` = ASPP(rates 1/6/12/18, `aspp_channels` 256 each: a 1x1 and three 3x3 atrous
  conv-BN-ReLU branches + image pooling (GAP, 1x1 conv-BN-ReLU, broadcast), concat, 1x1
  conv-BN-ReLU, dropout 0.5) -> bilinear (align_corners=True) to layer1's size, concat after
  `reduce` (layer1 1x1 conv -> 48, BN, ReLU) -> `fuse` (two 3x3 conv-BN-ReLU, 256) ->
  `classifier` (1x1 with bias). Logits at stride 4.
* "deeplabv2" with `head="concat"` (default, released models/deeplabV2.py `layer5`: the same
  five-branch ASPP with rates 6/12/18/24 straight to num_classes channels, concat, 1x1 conv,
  BN, no ReLU) or `head="sum"` (the DeepLabV2 paper's head, Chen et al. 2017, and the CDSP
  paper's description: four 3x3 atrous convs, rates 6/12/18/24, num_classes outputs with bias,
  weights N(0, 0.01), summed; `Classifier_Module_V2` in the released file, unused there).
  Logits at stride 8.
* LoRM (localization rectification module, `layer_lorm`, CDSP paper Sec. 3 / deeplabV3_lorm.py
  `LoRM`), training only: Q, K = 1x1 convs C -> C on X = layer4 (xavier-uniform, zero bias);
  A_ij = softmax_j cos(Q_i, K_j); rows of background queries (m_i = 0) zeroed; X^ = gamma A X
  (gamma a learnable scalar, init 1); loss = sum (X - X^)^2 / #{nonzero terms}. `m` is the
  pseudo-label foreground (class > 0, 255 -> 0) resized bilinearly (align_corners=True) to the
  feature grid, > 0.

`create(config)`: config.model keys arch, preset ("paper" | "small" | "tiny"), depth (50 | 101),
style ("cdsp" | "torchvision", see jaxmilab/models/resnet.py), output_stride, head, lorm,
num_classes (set by the method), dtype, and the preset's sizes (width_divisor, blocks,
aspp_channels, low_channels, decoder_channels; 0 or () = the preset's) as overrides.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab.models import common
from jaxmilab.models import layers
from jaxmilab.models import resnet

ARCHS = ("deeplabv3plus", "deeplabv2")
ASPP_RATES = {"deeplabv3plus": (1, 6, 12, 18), "deeplabv2": (6, 12, 18, 24)}
PRESETS = {
    # The released code: full-width ResNet, 256-channel ASPP / decoder, 48-channel skip.
    "paper": dict(
        width_divisor=1, blocks=None, aspp_channels=256, low_channels=48, decoder_channels=256
    ),
    "small": dict(
        width_divisor=4, blocks=(2, 2, 2, 2), aspp_channels=64, low_channels=16, decoder_channels=64
    ),
    "tiny": dict(
        width_divisor=16, blocks=(1, 1, 1, 1), aspp_channels=16, low_channels=8, decoder_channels=16
    ),
}


# ------------------------------------------------------------------------------------ resizing


resize_matrix = layers.resize_matrix  # [out, in] torch-bilinear matrix (align_corners either way)


def resize_bilinear(x: jax.Array, size: Sequence[int], align_corners: bool = True) -> jax.Array:
  """Bilinear resize of [B, h, w, C] (or [B, h, w]) to `size`, as torch's F.interpolate."""
  squeeze = x.ndim == 3
  if squeeze:
    x = x[..., None]
  h, w = int(size[0]), int(size[1])
  if (h, w) != tuple(x.shape[1:3]):
    rh = jnp.asarray(resize_matrix(h, x.shape[1], align_corners))
    rw = jnp.asarray(resize_matrix(w, x.shape[2], align_corners))
    x = jnp.einsum(
        "Hh,bhwc,Ww->bHWc",
        rh.astype(x.dtype),
        x,
        rw.astype(x.dtype),
        precision=jax.lax.Precision.HIGHEST,
    )
  return x[..., 0] if squeeze else x


# -------------------------------------------------------------------------------------- heads


class ConvBN(nn.Module):
  """An ASPP branch of the released code (`_ASPPModule`): atrous_conv (no bias) -> bn -> ReLU."""

  features: int
  kernel: int
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = resnet.conv(
        self.features, self.kernel, 1, self.dilation, name="atrous_conv", dtype=self.dtype
    )(x)
    return nn.relu(resnet.batch_norm(train, "bn", self.dtype)(x))


class ASPP(nn.Module):
  """Five-branch ASPP of the released code; `v3plus` adds ReLU + dropout after the projection."""

  features: int
  rates: Sequence[int]
  v3plus: bool = True
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    f, d = self.features, self.dtype
    branches = [
        ConvBN(f, 1 if i == 0 else 3, r, d, name=f"aspp{i + 1}")(x, train)
        for i, r in enumerate(self.rates)
    ]
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = resnet.conv(f, 1, name="global_avg_pool_1", dtype=d)(pooled)
    pooled = nn.relu(resnet.batch_norm(train, "global_avg_pool_2", d)(pooled))
    # Bilinear upsampling of a 1x1 map (align_corners=True) is a broadcast.
    branches.append(jnp.broadcast_to(pooled, branches[-1].shape[:3] + (f,)))
    y = jnp.concatenate(branches, axis=-1)
    if self.v3plus:
      y = resnet.conv(f, 1, name="prject_0", dtype=d)(y)
      y = nn.relu(resnet.batch_norm(train, "prject_1", d)(y))
      return nn.Dropout(self.dropout, deterministic=not train)(y)
    y = resnet.conv(f, 1, name="conv1", dtype=d)(y)
    return resnet.batch_norm(train, "bn1", d)(y)


class SummedASPP(nn.Module):
  """DeepLabV2 (paper) head: sum of 3x3 atrous convs with bias, weights N(0, 0.01)."""

  num_classes: int
  rates: Sequence[int] = (6, 12, 18, 24)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = 0.0
    for i, r in enumerate(self.rates):
      out = out + resnet.conv(
          self.num_classes,
          3,
          1,
          r,
          bias=True,
          name=f"conv2d_list_{i}",
          dtype=self.dtype,
          kernel_init=nn.initializers.normal(0.01),
      )(x)
    return out


class LoRM(nn.Module):
  """Localization rectification: L = sum (X - gamma A X)^2 / nnz (module docstring)."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, fg: jax.Array) -> jax.Array:
    """x [B, h, w, C] features, fg [B, h, w] bool query mask -> scalar loss (float32)."""
    b, h, w, c = x.shape
    xavier = nn.initializers.xavier_uniform()
    q = nn.Conv(c, (1, 1), kernel_init=xavier, name="query_conv", dtype=self.dtype)(x)
    k = nn.Conv(c, (1, 1), kernel_init=xavier, name="key_conv", dtype=self.dtype)(x)
    gamma = self.param("gamma", nn.initializers.ones, (1,), jnp.float32)
    q = q.reshape(b, h * w, c).astype(jnp.float32)
    k = k.reshape(b, h * w, c).astype(jnp.float32)
    xf = x.reshape(b, h * w, c).astype(jnp.float32)
    energy = jnp.einsum("bic,bjc->bij", q, k, precision=jax.lax.Precision.HIGHEST)
    norm = jnp.linalg.norm(q, axis=-1)[:, :, None] * jnp.linalg.norm(k, axis=-1)[:, None, :]
    attention = jax.nn.softmax(energy / jnp.maximum(norm, 1e-12), axis=-1)
    attention = attention * fg.reshape(b, h * w, 1).astype(jnp.float32)
    x_hat = gamma[0] * jnp.einsum(
        "bij,bjc->bic", attention, xf, precision=jax.lax.Precision.HIGHEST
    )
    sq = (xf - x_hat) ** 2
    return jnp.sum(sq) / jnp.maximum(jnp.count_nonzero(sq), 1).astype(jnp.float32)


def lorm_mask(pseudo: jax.Array, size: Sequence[int]) -> jax.Array:
  """Pseudo-label [B, H, W] (255 = ignore) -> bool [B, h, w] foreground on the feature grid."""
  fg = ((pseudo > 0) & (pseudo != 255)).astype(jnp.float32)
  return resize_bilinear(fg, size, align_corners=True) > 0


# -------------------------------------------------------------------------------------- model


class DeepLab(nn.Module):
  """DeepLabV3+ / DeepLabV2; returns {"logits", "features" (layer4)[, "lorm_loss"]}."""

  num_classes: int
  arch: str = "deeplabv3plus"
  blocks: Sequence[int] = (3, 4, 23, 3)
  style: str = "cdsp"
  output_stride: int = 8
  multi_grid: Sequence[int] = resnet.CDSP_MULTI_GRID
  width_divisor: int = 1
  aspp_rates: Sequence[int] | None = None
  aspp_channels: int = 256
  low_channels: int = 48
  decoder_channels: int = 256
  head: str = "concat"
  lorm: bool = True
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x, train: bool = False, lorm_fg: jax.Array | None = None
  ) -> dict[str, jax.Array]:
    """x: normalised images [B, H, W, 3]; lorm_fg: pseudo-label (class ids) [B, H', W'] or None."""
    d = self.dtype
    feats = resnet.ResNet(
        self.blocks,
        self.style,
        self.output_stride,
        self.multi_grid,
        self.width_divisor,
        d,
        name="backbone",
    )(x, train)
    x4 = feats["layer4"]
    rates = tuple(self.aspp_rates or ASPP_RATES[self.arch])
    if self.arch == "deeplabv3plus":
      y = ASPP(self.aspp_channels, rates, True, self.dropout, d, name="layer_pred0")(x4, train)
      x1 = feats["layer1"]
      y = resize_bilinear(y, x1.shape[1:3], align_corners=True)

      def conv_bn_relu(y, features, kernel, conv_name, bn_name):
        y = resnet.conv(features, kernel, name=conv_name, dtype=d)(y)
        return nn.relu(resnet.batch_norm(train, bn_name, d)(y))

      low = conv_bn_relu(x1, self.low_channels, 1, "reduce_0", "reduce_1")
      y = jnp.concatenate([low, y], axis=-1)
      y = conv_bn_relu(y, self.decoder_channels, 3, "fuse_0", "fuse_1")
      y = conv_bn_relu(y, self.decoder_channels, 3, "fuse_3", "fuse_4")
      logits = nn.Conv(self.num_classes, (1, 1), name="classifier", dtype=d)(y)
    elif self.arch == "deeplabv2":
      if self.head == "concat":
        logits = ASPP(self.num_classes, rates, False, 0.0, d, name="layer5")(x4, train)
      elif self.head == "sum":
        logits = SummedASPP(self.num_classes, rates, d, name="layer5")(x4)
      else:
        raise ValueError(
            f"config.model.head={self.head!r}: use 'concat' (released code) or 'sum' (paper)."
        )
    else:
      raise ValueError(f"config.model.arch={self.arch!r}: use one of {ARCHS}.")
    out = {"logits": logits.astype(jnp.float32), "features": x4}
    if self.lorm:
      layer = LoRM(d, name="layer_lorm")
      if lorm_fg is not None:
        out["lorm_loss"] = layer(x4, lorm_mask(lorm_fg, x4.shape[1:3]))
      elif self.is_initializing():
        layer(x4, jnp.ones(x4.shape[:3], bool))
    return out


# Every config.model key (config_lib fills the missing ones): the preset and the trunk depth
# (`_prepare` turns it into `blocks`), the DeepLab fields with their defaults and, for the
# preset's sizes, 0 / () = "the preset's value". num_classes is required and set by the method
# from the dataset; aspp_rates is no key (the arch's rates).
CONFIG_DEFAULTS = common.config_defaults(
    DeepLab,
    exclude=("aspp_rates",),
    preset="paper",
    depth=101,
    width_divisor=0,
    blocks=(),
    aspp_channels=0,
    low_channels=0,
    decoder_channels=0,
)


def _prepare(settings: dict[str, Any]) -> dict[str, Any]:
  """`depth` (50 | 101 | 152) gives the trunk's blocks unless the preset or the config does."""
  settings = dict(settings)
  depth = int(settings.pop("depth"))
  if depth not in resnet.BLOCKS:
    raise ValueError(f"config.model.depth={depth}: use one of {sorted(resnet.BLOCKS)}.")
  if not settings.get("blocks"):
    settings["blocks"] = resnet.BLOCKS[depth]
  return settings


def create(config: Mapping[str, Any]) -> DeepLab:
  """DeepLab from config.model (module docstring)."""
  if int(config.get("num_classes") or 0) < 2:
    raise ValueError("config.model.num_classes must be >= 2 (the method sets it from the dataset).")
  return common.create(DeepLab, PRESETS, config, defaults=CONFIG_DEFAULTS, prepare=_prepare)


_TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def variables_from_torch_params(tree: Mapping[str, Any]) -> dict[str, Any]:
  """{"params", "batch_stats"} (numpy float32) from a released CDSP / torchvision ResNet file.

  `tree` is the file as `jaxmilab.convert` reads a `.pth` (`mapping.convert_state_dict`: numeric
  parts joined, "layer_pred0.prject.0.weight" -> layer_pred0/prject_0/kernel HWIO, BatchNorm
  running statistics still beside the weights). The trunk (conv1, bn1, layer1-4) goes under
  "backbone", the head keys (layer_pred0, reduce, fuse, classifier, layer5, layer_lorm) stay at
  the top; running_mean / running_var -> batch_stats mean / var; `num_batches_tracked` and
  torchvision's classifier `fc` are dropped.
  """
  out: dict[str, Any] = {"params": {}, "batch_stats": {}}

  def put(node: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for key, value in node.items():
      if isinstance(value, Mapping):
        put(value, path + (key,))
      elif key != "num_batches_tracked":
        collection, leaf = (
            ("batch_stats", key[len("running_") :])
            if key.startswith("running_")
            else ("params", key)
        )
        target = out[collection]
        for p in path:
          target = target.setdefault(p, {})
        target[leaf] = np.asarray(value, np.float32)

  for key, value in tree.items():
    if key != "fc":
      put({key: value}, ("backbone",) if key.split("_")[0] in _TRUNK else ())
  return out
