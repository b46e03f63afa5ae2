"""WSOL backbones of clovaai/wsolevaluation (VGG16-CAM, ResNet50-CAM, InceptionV3-CAM) in flax.

Each network is `features -> global average pooling -> linear classifier`, so the CAM of
class k is `sum_c W[c, k] F_c` (wsolevaluation; no bias, no ReLU). Modifications of the protocol:

* VGG16 (wsol/vgg.py `VggCam`): pool5 removed (pool4 too with `large_feature_map`),
  conv6 3x3 512->1024 + ReLU, GAP, fc.
* ResNet50 (wsol/resnet.py `ResNetCam`): layer4 stride 1, layer3 stride 1 with
  `large_feature_map` (28x28 maps at 224) else 2 (14x14).
* InceptionV3 (wsol/inception.py `InceptionCam`): Conv2d_1a padded, Mixed_6a stride 1,
  Mixed_7* removed, SPG head (two 3x3 convs 768->1024->1024 + ReLU, dropout 0.5) and a
  1x1 class conv SPG_A4 (here a Dense after GAP: identical logits by linearity).

Module and parameter names follow the official PyTorch modules ("layer3_1/conv2",
"features_28", "Mixed_6e/branch7x7_1/conv") so `jaxmilab.convert.torchvision_wsol` maps
state dicts by name. Outputs (dict):
  logits [B, K]; features [B, h, w, C] (the map the classifier pools; CAM input);
  low [B, h', w', C'] (BagCAMs' split point: ResNet layer3, VGG conv5_3, Inception Mixed_6e);
  classifier_kernel [C, K].
  map [B, h, w, C''] (B-CAM's gradient-map layer, the official Train.sh `--target_layer`:
  ResNet layer4 output, VGG conv6 BEFORE its ReLU, Inception SPG_A3_1b output).
`__call__(x, low_features=F)` runs only the part after the split (BagCAMs' f_high), and
`guided=True` makes every ReLU there a guided ReLU (backward passes only positive gradients).
`map_offset=D` adds D at the map layer: the gradient with respect to D (at D = 0) is the
gradient at that layer, which is how B-CAM's maps read it without forward/backward hooks.
NHWC layout; inputs are ImageNet-normalised images.

`BCAMHead` is B-CAM's head (zh460045050/BCAM wsol/{resnet,vgg,inception}.py `*BCAM`): two
attention aggregators and two classifiers; `BCAM_LAYOUT` says per architecture which
features it reads, whether its aggregators have a bias and the dropout before it.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab import config_options
from jaxmilab.models import common

# --------------------------------------------------------------------------------- guided ReLU


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
  """ReLU whose backward is relu(g) * 1[x > 0] (BagCAMs' hook: `F.relu(grad_in[0])`)."""
  return jnp.maximum(x, 0)


def _guided_fwd(x):
  return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
  return (jnp.where(x > 0, jnp.maximum(g, 0), jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


def _relu(guided: bool):
  return guided_relu if guided else nn.relu


# ------------------------------------------------------------------------------------ helpers


def _channels(c: int, divisor: int) -> int:
  return max(1, c // divisor)


def torch_max_pool(x: jax.Array, k: int, s: int, p: int = 0, ceil_mode: bool = False) -> jax.Array:
  """PyTorch MaxPool2d semantics (padding with -inf, optional ceil_mode) on NHWC."""
  pads = []
  for size in x.shape[1:3]:
    if ceil_mode:
      out = math.ceil((size + 2 * p - k) / s) + 1
      if (out - 1) * s >= size + p:  # PyTorch: the last window must start inside the input
        out -= 1
    else:
      out = (size + 2 * p - k) // s + 1
    extra = max(0, (out - 1) * s + k - (size + 2 * p))
    pads.append((p, p + extra))
  return nn.max_pool(
      jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf),
      (k, k),
      strides=(s, s),
      padding="VALID",
  )


def torch_avg_pool3(x: jax.Array) -> jax.Array:
  """F.avg_pool2d(kernel 3, stride 1, padding 1) with count_include_pad=True (PyTorch default)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=True)


def _conv(
    features: int,
    kernel,
    stride: int = 1,
    padding=0,
    bias: bool = True,
    name=None,
    dtype=jnp.float32,
) -> nn.Conv:
  kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
  padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return nn.Conv(
      features,
      kernel,
      strides=(stride, stride),
      padding=((padding[0], padding[0]), (padding[1], padding[1])),
      use_bias=bias,
      kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
      name=name,
      dtype=dtype,
  )


def _bn(train: bool, eps: float = 1e-5, name=None, zero: bool = False) -> nn.BatchNorm:
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=eps,
      name=name,
      scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
  )


def _head(
    features: jax.Array, num_classes: int, name: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """GAP + linear classifier; returns (logits [B, K], kernel [C, K], pooled [B, C])."""
  dense = nn.Dense(num_classes, name=name, dtype=jnp.float32)
  pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2))  # [B, C]
  logits = dense(pooled)
  return logits, dense.variables["params"]["kernel"], pooled


# ------------------------------------------------------------------------------------- ResNet


class Bottleneck(nn.Module):
  """torchvision Bottleneck (stride on conv2) as in wsolevaluation."""

  planes: int
  stride: int = 1
  downsample: bool = False
  guided: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    relu = _relu(self.guided)
    out = relu(_bn(train, name="bn1")(_conv(self.planes, 1, bias=False, name="conv1")(x)))
    out = relu(
        _bn(train, name="bn2")(_conv(self.planes, 3, self.stride, 1, bias=False, name="conv2")(out))
    )
    out = _bn(train, name="bn3")(_conv(self.planes * 4, 1, bias=False, name="conv3")(out))
    identity = x
    if self.downsample:
      identity = _bn(train, name="downsample_1")(
          _conv(self.planes * 4, 1, self.stride, bias=False, name="downsample_0")(x)
      )
    return relu(out + identity)


class ResNetCam(nn.Module):
  """ResNet50-CAM; `blocks` and `width_divisor` shrink it for CPU tests (paper: (3,4,6,3), 1)."""

  num_classes: int
  large_feature_map: bool = True
  blocks: Sequence[int] = (3, 4, 6, 3)
  width_divisor: int = 1
  with_classifier: bool = True
  guided: bool = False

  def _layer(self, x, index, planes, stride, train, guided):
    in_ch = x.shape[-1]
    for b in range(self.blocks[index - 1]):
      s = stride if b == 0 else 1
      down = b == 0 and (s != 1 or in_ch != planes * 4)
      x = Bottleneck(planes, s, down, guided, name=f"layer{index}_{b}")(x, train)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False, low_features=None, map_offset=None) -> dict[str, Any]:
    d = self.width_divisor
    if low_features is None:
      x = nn.relu(
          _bn(train, name="bn1")(_conv(_channels(64, d), 7, 2, 3, bias=False, name="conv1")(x))
      )
      x = torch_max_pool(x, 3, 2, 1)
      x = self._layer(x, 1, _channels(64, d), 1, train, False)
      x = self._layer(x, 2, _channels(128, d), 2, train, False)
      low = self._layer(x, 3, _channels(256, d), 1 if self.large_feature_map else 2, train, False)
    else:
      low = low_features
    feats = self._layer(low, 4, _channels(512, d), 1, train, self.guided)  # [B, h, w, 2048/d]
    if map_offset is not None:
      feats = feats + map_offset
    out = {"low": low, "features": feats, "map": feats}
    if self.with_classifier:
      out["logits"], out["classifier_kernel"], _ = _head(feats, self.num_classes, "fc")
    return out


# ---------------------------------------------------------------------------------------- VGG

# wsol/vgg.py configs_dict["cam"]; ints are 3x3 conv + ReLU, "M" 2x2 max pool stride 2.
VGG_CFG = {
    False: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    True: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, 512, 512, 512),
}


class VggCam(nn.Module):
  """VGG16-CAM: `features_<i>` use the torch Sequential index i, then conv6 (3x3 -> 1024), fc."""

  num_classes: int
  large_feature_map: bool = False
  width_divisor: int = 1
  with_classifier: bool = True
  guided: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, low_features=None, map_offset=None) -> dict[str, Any]:
    del train
    d = self.width_divisor
    if low_features is None:
      index = 0
      for v in VGG_CFG[bool(self.large_feature_map)]:
        if v == "M":
          x = nn.max_pool(x, (2, 2), strides=(2, 2))
          index += 1
        else:
          x = nn.relu(_conv(_channels(v, d), 3, 1, 1, name=f"features_{index}")(x))
          index += 2  # conv, ReLU
      low = x
    else:
      low = low_features
    conv6 = _conv(_channels(1024, d), 3, 1, 1, name="conv6")(low)
    if map_offset is not None:
      conv6 = conv6 + map_offset
    feats = _relu(self.guided)(conv6)
    out = {"low": low, "features": feats, "map": conv6}
    if self.with_classifier:
      out["logits"], out["classifier_kernel"], _ = _head(feats, self.num_classes, "fc")
    return out


# ---------------------------------------------------------------------------------- Inception


class BasicConv2d(nn.Module):
  """conv (no bias) + BN(eps 1e-3) + ReLU."""

  features: int
  kernel: Any
  stride: int = 1
  padding: Any = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _conv(self.features, self.kernel, self.stride, self.padding, bias=False, name="conv")(x)
    return nn.relu(_bn(train, 1e-3, name="bn")(x))


class InceptionA(nn.Module):
  pool_features: int
  d: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = lambda n: _channels(n, self.d)
    b1 = BasicConv2d(c(64), 1, name="branch1x1")(x, train)
    b5 = BasicConv2d(c(48), 1, name="branch5x5_1")(x, train)
    b5 = BasicConv2d(c(64), 5, padding=2, name="branch5x5_2")(b5, train)
    b3 = BasicConv2d(c(64), 1, name="branch3x3dbl_1")(x, train)
    b3 = BasicConv2d(c(96), 3, padding=1, name="branch3x3dbl_2")(b3, train)
    b3 = BasicConv2d(c(96), 3, padding=1, name="branch3x3dbl_3")(b3, train)
    bp = BasicConv2d(c(self.pool_features), 1, name="branch_pool")(torch_avg_pool3(x), train)
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  """Mixed_6a with wsolevaluation's stride 1, padding 1."""

  stride: int = 1
  padding: int = 1
  d: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = lambda n: _channels(n, self.d)
    b3 = BasicConv2d(c(384), 3, self.stride, self.padding, name="branch3x3")(x, train)
    bd = BasicConv2d(c(64), 1, name="branch3x3dbl_1")(x, train)
    bd = BasicConv2d(c(96), 3, padding=1, name="branch3x3dbl_2")(bd, train)
    bd = BasicConv2d(c(96), 3, self.stride, self.padding, name="branch3x3dbl_3")(bd, train)
    bp = torch_max_pool(x, 3, self.stride, 1)
    return jnp.concatenate([b3, bd, bp], -1)


class InceptionC(nn.Module):
  channels_7x7: int
  d: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = lambda n: _channels(n, self.d)
    c7 = c(self.channels_7x7)
    b1 = BasicConv2d(c(192), 1, name="branch1x1")(x, train)
    b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x, train)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7, train)
    b7 = BasicConv2d(c(192), (7, 1), padding=(3, 0), name="branch7x7_3")(b7, train)
    bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x, train)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd, train)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd, train)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd, train)
    bd = BasicConv2d(c(192), (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd, train)
    bp = BasicConv2d(c(192), 1, name="branch_pool")(torch_avg_pool3(x), train)
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionCam(nn.Module):
  """InceptionV3-CAM with the SPG-style head (dropout 0.5 before each head conv)."""

  num_classes: int
  large_feature_map: bool = False
  width_divisor: int = 1
  with_classifier: bool = True
  guided: bool = False
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False, low_features=None, map_offset=None) -> dict[str, Any]:
    d = self.width_divisor
    c = lambda n: _channels(n, d)
    if low_features is None:
      x = BasicConv2d(c(32), 3, 2, 1, name="Conv2d_1a_3x3")(x, train)
      x = BasicConv2d(c(32), 3, name="Conv2d_2a_3x3")(x, train)
      x = BasicConv2d(c(64), 3, padding=1, name="Conv2d_2b_3x3")(x, train)
      x = torch_max_pool(x, 3, 2, 1, ceil_mode=True)
      x = BasicConv2d(c(80), 1, name="Conv2d_3b_1x1")(x, train)
      x = BasicConv2d(c(192), 3, name="Conv2d_4a_3x3")(x, train)
      x = torch_max_pool(x, 3, 2, 1, ceil_mode=True)
      x = InceptionA(32, d, name="Mixed_5b")(x, train)
      x = InceptionA(64, d, name="Mixed_5c")(x, train)
      x = InceptionA(64, d, name="Mixed_5d")(x, train)
      if not self.large_feature_map:
        x = torch_max_pool(x, 3, 2, 0, ceil_mode=True)
      x = InceptionB(1, 1, d, name="Mixed_6a")(x, train)
      x = InceptionC(128, d, name="Mixed_6b")(x, train)
      x = InceptionC(160, d, name="Mixed_6c")(x, train)
      x = InceptionC(160, d, name="Mixed_6d")(x, train)
      low = InceptionC(192, d, name="Mixed_6e")(x, train)
    else:
      low = low_features
    relu = _relu(self.guided)
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    x = relu(_conv(c(1024), 3, 1, 1, name="SPG_A3_1b")(drop(low)))
    if map_offset is not None:
      x = x + map_offset
    feats = relu(_conv(c(1024), 3, 1, 1, name="SPG_A3_2b")(drop(x)))
    out = {"low": low, "features": feats, "map": x}
    if self.with_classifier:
      out["logits"], out["classifier_kernel"], _ = _head(drop(feats), self.num_classes, "SPG_A4")
    return out


# ------------------------------------------------------------------------------------- B-CAM


class BCAMHead(nn.Module):
  """B-CAM aggregators A / B and classifiers W_o / W_b; returns the four scores [B, K] each.

  Aggregators are 1x1 convs C_att -> K heads (here Dense), initialised to 0 (official
  `initialize_weights(..., 'contant')`) so they start as average pooling; softmax over
  positions per head; f_o = mean_heads(softmax(A F_att) F), f_b likewise with B, where F is
  the pooled feature map and F_att the aggregators' input (the same map for ResNet and
  Inception; VGG's aggregators read the 512-channel features before conv6). Scores:
    s_oo = W_o f_o,  s_bo = W_b f_o(stopgrad F),  s_bb = W_b f_b(stopgrad F),  s_ob = W_o f_b.
  `dropout` is applied to F (and F_att when it is F) in training (released Inception).
  """

  num_classes: int
  num_heads: int = 100
  attention_bias: bool = False
  dropout: float = 0.0

  @nn.compact
  def __call__(
      self, features: jax.Array, att_features: jax.Array | None = None, train: bool = False
  ) -> dict[str, jax.Array]:
    b, h, w, c = features.shape
    f = features.astype(jnp.float32)
    if self.dropout:
      f = nn.Dropout(self.dropout, deterministic=not train)(f)
    fa = f if att_features is None else att_features.astype(jnp.float32)
    if fa.shape[1:3] != (h, w):
      raise ValueError(
          f"B-CAM: attention features {fa.shape} and pooled features {f.shape} differ in size."
      )
    f = f.reshape(b, h * w, c)  # [B, N, C]
    fa = fa.reshape(b, h * w, fa.shape[-1])
    f_sg = jax.lax.stop_gradient(f)
    zeros = nn.initializers.zeros
    aggregator = lambda name: nn.Dense(
        self.num_heads, use_bias=self.attention_bias, kernel_init=zeros, bias_init=zeros, name=name
    )
    att_a = jax.nn.softmax(aggregator("aggregator_A")(fa), axis=1)  # [B, N, K]
    att_b = jax.nn.softmax(aggregator("aggregator_B")(fa), axis=1)
    # mean over heads of the per-head pooled features = pooling with the mean attention.
    pool = lambda att, x: jnp.einsum("bnk,bnc->bc", att, x) / self.num_heads  # [B, C]
    w_o = nn.Dense(self.num_classes, name="classifier_A")
    w_b = nn.Dense(self.num_classes, name="classifier_B")
    return {
        "s_oo": w_o(pool(att_a, f)),
        "s_bo": w_b(pool(att_a, f_sg)),
        "s_bb": w_b(pool(att_b, f_sg)),
        "s_ob": w_o(pool(att_b, f)),
        "att_a": att_a.sum(-1).reshape(b, h, w),
        "att_b": att_b.sum(-1).reshape(b, h, w),
        "att_a_heads": att_a,
        "att_b_heads": att_b,
    }  # [B, N, K], each head sums to 1 over N


# Per architecture (official wsol/*.py `*BCAM`): the output the aggregators read ("low" =
# VGG's features before conv6, else the pooled "features"), aggregator bias, dropout on the
# features before the head (Inception: F.dropout(0.5) after SPG_A3_2b).
BCAM_LAYOUT = {
    "resnet50": {"attention_input": "features", "attention_bias": False, "dropout": 0.0},
    "vgg16": {"attention_input": "low", "attention_bias": True, "dropout": 0.0},
    "inceptionv3": {"attention_input": "features", "attention_bias": False, "dropout": 0.5},
}


def bcam_head(arch: str, num_classes: int, num_heads: int) -> BCAMHead:
  """The B-CAM head of `arch` as released."""
  layout = BCAM_LAYOUT[arch]
  return BCAMHead(num_classes, num_heads, layout["attention_bias"], layout["dropout"])


def bcam_attention_input(arch: str, out: dict[str, jax.Array]) -> jax.Array | None:
  """The aggregators' input from the backbone outputs (None: the pooled features)."""
  key = BCAM_LAYOUT[arch]["attention_input"]
  return None if key == "features" else out[key]


# ------------------------------------------------------------------------------------ factory

ARCHS = {"resnet50": ResNetCam, "vgg16": VggCam, "inceptionv3": InceptionCam}
# Parameter-path regexes of the protocol's 10x learning-rate group (wsolevaluation
# main.py `_FEATURE_PARAM_LAYER_PATTERNS` is the complement: ResNet layer4 + fc, VGG everything
# outside `features`, Inception the SPG head).
CLASSIFIER_GROUP = {
    "resnet50": r"layer4|\['fc'\]",
    "vgg16": r"conv6|\['fc'\]",
    "inceptionv3": r"SPG_",
}
# Presets: "paper" is the protocol network; "tiny" / "small" shrink widths (and ResNet depth)
# for CPU smoke and quickstart runs.
PRESETS = {
    "paper": {},
    "small": {"width_divisor": 4, "blocks": (1, 1, 1, 1)},
    "tiny": {"width_divisor": 8, "blocks": (1, 1, 1, 1)},
}
# Every config.model key of the WSOL backbones (the registry's resnet50_wsol, vgg16_wsol,
# inceptionv3_wsol): ResNetCam's fields but `guided`, None = the preset's value, else the
# architecture's field default (`blocks` applies to resnet50 only); num_classes is required and
# set by the methods from the dataset.
CONFIG_DEFAULTS = common.config_defaults(
    ResNetCam, unset=True, exclude=("num_classes", "guided"), preset="paper"
)


def _check_num_classes(config) -> None:
  if int(config.get("num_classes") or 0) < 1:
    raise ValueError(
        "config.model.num_classes is not set: the WSOL methods fill it from the dataset."
    )


def model_options(
    config, num_classes: int | None = None, *, component: str | None = None
) -> config_options.Options:
  """config.model read through CONFIG_DEFAULTS; `num_classes` (the dataset's) replaces the
  config's. ValueError naming the key if num_classes is not set or a key is unknown;
  `component` names the model in messages (default config.model.name)."""
  config = dict(config)
  if num_classes is not None:
    config["num_classes"] = num_classes
  _check_num_classes(config)
  return config_options.options(
      config, CONFIG_DEFAULTS, component=component, part="model", required=("num_classes",)
  )


def arch_of(model: nn.Module) -> str:
  """ "resnet50" / "vgg16" / "inceptionv3" of a backbone built by `create_backbone`."""
  for arch, cls in ARCHS.items():
    if isinstance(model, cls):
      return arch
  raise TypeError(f"{type(model).__name__} is not a WSOL backbone ({', '.join(ARCHS)}).")


def create_backbone(arch: str, config) -> nn.Module:
  """Builds `arch` from a model config mapping (preset, num_classes, large_feature_map, ...)."""
  if arch not in ARCHS:
    raise ValueError(f"Unknown WSOL backbone {arch!r}; use one of {sorted(ARCHS)}.")
  _check_num_classes(config)
  module_cls = ARCHS[arch]
  fields = common.module_fields(module_cls)
  presets = {p: {k: v for k, v in values.items() if k in fields} for p, values in PRESETS.items()}

  def prepare(settings):
    if "blocks" not in fields and settings.pop("blocks", None) is not None:
      raise ValueError(f"config.model.blocks applies to resnet50 only, not {arch}.")
    return settings

  return common.create(
      module_cls, presets, config, defaults=CONFIG_DEFAULTS, prepare=prepare, name=f"{arch}_wsol"
  )


# The registry's entry points (config.model.name resnet50_wsol, vgg16_wsol, inceptionv3_wsol).
def create_resnet50(config) -> ResNetCam:
  return create_backbone("resnet50", config)


def create_vgg16(config) -> VggCam:
  return create_backbone("vgg16", config)


def create_inceptionv3(config) -> InceptionCam:
  return create_backbone("inceptionv3", config)
