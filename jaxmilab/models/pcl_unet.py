"""The 2-D U-Net of PCL / MACL (volumetric medical segmentation), NHWC flax.linen.

Transcribed from the official dewenzeng/positional_cl network/unet2d.py (`UNet2D`), which
stevezs315/MACL re-uses for pre-training (network/unet2d.py `encoder_MACL`,
`decoder_MACL`) and fine-tuning:

  encoder  4 levels, each (conv3x3 -> BatchNorm -> LeakyReLU(0.01)) x 2 at widths
           w, 2w, 4w, 8w (w = 32: 32/64/128/256), max-pool 2 after each level;
  centre   conv3x3 -> ReLU -> conv3x3 -> ReLU at 16w (512), no BatchNorm;
  decoder  4 blocks, deepest first: ConvTranspose(k 2, s 2) to half the channels, the
           skip centre-cropped to the upsampled size, concat [up, skip], then
           (conv3x3 -> BatchNorm -> LeakyReLU) x 2; block b outputs 8w, 4w, 2w, w;
  head     1x1 conv to the classes, without bias.

Every conv and transposed conv starts from kaiming_normal(a=0.01) (fan_in; PyTorch counts a
transposed conv's fan_in on its *output* channels) with zero bias (official
`InitWeights_He(1e-2)`); BatchNorm scale 1, bias 0, PyTorch momentum 0.1 (flax 0.9), eps 1e-5.
Input channels are taken from the input (1 for CT / MR, 4 for BraTS).

Parameters: {"encoder": {"level_1".."level_4", "center"}, "decoder": {"block_1".."block_4"},
"head"}. Methods that use parts of the network call

  bottleneck, skips = net.apply(variables, x, train, method="encode")
  features = net.apply(variables, bottleneck, skips, train, num_blocks, method="decode")

and only the blocks they run get parameters (MACL pre-trains the encoder and decoder blocks
1-2). Any backbone with these two methods (and `__call__` for segmentation) fits the MACL
methods, e.g. the U-Net variants of the MACL paper's Fig. 6.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab.models import common

LEAKY_SLOPE = 0.01  # nn.LeakyReLU() default


def kaiming_normal(a: float = LEAKY_SLOPE, in_axis: int = -2, out_axis: int = -1):
  """torch.nn.init.kaiming_normal_(w, a) (fan_in, leaky_relu gain): N(0, 2 / ((1 + a^2) fan_in))."""
  return nn.initializers.variance_scaling(
      2.0 / (1.0 + a * a), "fan_in", "normal", in_axis=in_axis, out_axis=out_axis
  )


# flax ConvTranspose kernels are [kh, kw, in, out]; PyTorch's fan_in of a ConvTranspose2d
# weight [in, out, kh, kw] is out * kh * kw, so the fan is counted on the last axis.
_TRANSPOSED_INIT = kaiming_normal(in_axis=-1, out_axis=-2)


class ConvBNAct(nn.Module):
  """conv3x3 (bias) -> BatchNorm -> LeakyReLU(0.01): the official `contract` / `expand`."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(
        self.features,
        (3, 3),
        padding=((1, 1), (1, 1)),
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_normal(),
        bias_init=nn.initializers.zeros,
        name="conv",
    )(x)
    x = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        name="bn",
    )(x)
    return nn.leaky_relu(x, LEAKY_SLOPE)


class Encoder(nn.Module):
  """Levels 1..depth (two ConvBNAct each, max-pool after) and the BatchNorm-free centre."""

  width: int = 32
  depth: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    skips = []
    for level in range(self.depth):
      features = self.width * 2**level
      x = ConvBNAct(features, self.dtype, name=f"level_{level + 1}_conv_1")(x, train)
      x = ConvBNAct(features, self.dtype, name=f"level_{level + 1}_conv_2")(x, train)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")  # nn.MaxPool2d(2, stride=2)
    features = self.width * 2**self.depth
    for i in range(2):  # official `center`: conv -> ReLU twice, no BatchNorm
      x = nn.Conv(
          features,
          (3, 3),
          padding=((1, 1), (1, 1)),
          dtype=self.dtype,
          param_dtype=jnp.float32,
          kernel_init=kaiming_normal(),
          bias_init=nn.initializers.zeros,
          name=f"center_conv_{i + 1}",
      )(x)
      x = nn.relu(x)
    return x, tuple(skips)  # skips[0] = level 1 (full resolution)


def center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
  """The official `center_crop`: the [height, width] window starting at ((H-h)//2, (W-w)//2)."""
  top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
  return x[:, top : top + height, left : left + width]


class DecoderBlock(nn.Module):
  """ConvTranspose(2, 2) to `features`, concat [up, cropped skip], two ConvBNAct."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array, train: bool) -> jax.Array:
    up = nn.ConvTranspose(
        self.features,
        (2, 2),
        strides=(2, 2),
        padding="VALID",
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_TRANSPOSED_INIT,
        bias_init=nn.initializers.zeros,
        name="upconv",
    )(x)
    if skip.shape[1] < up.shape[1] or skip.shape[2] < up.shape[2]:
      raise ValueError(f"Decoder skip {skip.shape} is smaller than the upsampled map {up.shape}.")
    x = jnp.concatenate([up, center_crop(skip, up.shape[1], up.shape[2]).astype(up.dtype)], axis=-1)
    x = ConvBNAct(self.features, self.dtype, name="conv_1")(x, train)
    return ConvBNAct(self.features, self.dtype, name="conv_2")(x, train)


class Decoder(nn.Module):
  """Blocks 1..num_blocks (block 1 = deepest, output 8w; block `depth` outputs w)."""

  width: int = 32
  depth: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x: jax.Array, skips: Sequence[jax.Array], train: bool, num_blocks: int | None = None
  ) -> jax.Array:
    num_blocks = self.depth if num_blocks is None else int(num_blocks)
    if not 1 <= num_blocks <= self.depth:
      raise ValueError(f"num_blocks={num_blocks} must be in [1, {self.depth}].")
    for block in range(1, num_blocks + 1):
      level = self.depth - block  # skip index: block 1 uses the deepest level
      x = DecoderBlock(self.width * 2**level, self.dtype, name=f"block_{block}")(
          x, skips[level], train
      )
    return x


class PCLUNet(nn.Module):
  """PCL / MACL 2-D U-Net (see the module doc); `__call__` gives [B, H, W, num_classes] logits."""

  width: int = 32  # official --initial_filter_size 32
  depth: int = 4  # pooled levels (official: 4)
  num_classes: int = 4
  dtype: Any = jnp.float32  # compute dtype ("float32" | "bfloat16" in config.model)

  def check_config(self) -> None:
    if self.width < 1 or self.depth < 1 or self.num_classes < 1:
      raise ValueError(
          f"config.model.width={self.width}, depth={self.depth} and num_classes="
          f"{self.num_classes} must be >= 1."
      )

  def setup(self):
    self.encoder = Encoder(self.width, self.depth, self.dtype)
    self.decoder = Decoder(self.width, self.depth, self.dtype)
    self.head = nn.Conv(
        self.num_classes,
        (1, 1),
        use_bias=False,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_normal(),
    )

  def _check(self, x: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f"PCLUNet expects [B, H, W, C] input, got shape {x.shape}.")
    if min(x.shape[1:3]) < 2**self.depth:
      raise ValueError(
          f"PCLUNet(depth={self.depth}) needs images of at least {2**self.depth} "
          f"pixels per side, got shape {x.shape}; use a larger patch size."
      )

  def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """Bottleneck [B, H/2^d, W/2^d, 16w] and the skips (full resolution first)."""
    self._check(x)
    return self.encoder(x.astype(self.dtype), train)

  def decode(
      self,
      bottleneck: jax.Array,
      skips: Sequence[jax.Array],
      train: bool = False,
      num_blocks: int | None = None,
  ) -> jax.Array:
    """Features after decoder blocks 1..num_blocks (all by default)."""
    return self.decoder(bottleneck, skips, train, num_blocks)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bottleneck, skips = self.encode(x, train)
    y = self.decode(bottleneck, skips, train)
    return self.head(y).astype(jnp.float32)


# Every config.model key of pcl_unet: the PCLUNet fields with their defaults, but num_classes
# 0 = not set, the field's default (fine-tuning sets it from the data; pre-training does not
# use the head).
CONFIG_DEFAULTS = common.config_defaults(PCLUNet, num_classes=0)


def create(config) -> PCLUNet:
  """PCLUNet from config.model (CONFIG_DEFAULTS)."""
  return common.create(PCLUNet, None, config, defaults=CONFIG_DEFAULTS, name="pcl_unet")
