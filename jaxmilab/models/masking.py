"""SparK-style patch masking for any backbone: one `nn.intercept_methods` hook, no model copies.

MaskDCPT (arXiv 2510.13282, MILab-PKU/MaskDCPT) feeds the encoder a degraded image with half of its
p x p patches hidden (p = 16 for NAFNet, the window for the transformers) and keeps the hidden
patches hidden inside the network, like SparK's sparse convolutions (Tian et al., ICLR 2023).
The official MaskDCPT archs (MILab-PKU/MaskDCPT `basicsr/archs/mask_*_arch.py`) re-implement
each backbone with mask arguments; here one interceptor does it for every backbone:

* every `nn.Conv` and every per-token `nn.Dense` (QKV, projections, MLP) reads its input
  multiplied by the mask and has its output multiplied by the mask, so a 3x3 (depthwise) conv
  never reads a hidden position, a bias never makes a hidden position non-zero, and hidden
  positions are exactly zero at every layer ("sparse" semantics: hidden = empty);
* every per-position LayerNorm (`layers.LayerNorm2d`, `layers.ChannelLayerNorm`,
  `nn.LayerNorm`) becomes the masked LayerNorm: normalised at visible positions, zero at hidden
  ones (= SparK/MaskDCPT `MaskLayerNorm2d`: LN of the visible vectors scattered into zeros).

The binary mask [B, h, w] (1 = visible) is resized by nearest-neighbour repetition to each
output's resolution (a stride-2^k map of a p-patch image sees p / 2^k patches). Layouts:
  [B, H', W', C] maps: H' and W' must divide into the mask grid (else a clear error), except
    1 x 1 maps, which are global pools (NAFNet's SCA, PromptIR's prompt weights) and stay
    unmasked; 2-D / 3-D outputs (pooled vectors) stay unmasked too.
  Window tokens [B, nW, N, C]: a Dense whose parent module has a `window_size` field (SwinIR's
    `WindowAttention`) sees window_partition(roll(map, -shift)) of the full-resolution token
    map; the shift is the `shift_size` of the nearest ancestor that has one (0 if none).
Norms that mix positions (BatchNorm, GroupNorm) would leak and raise an error.

Attention (decided after the official archs): hidden tokens have zero queries, keys and values
after the masked QKV projection, so they add no content to visible tokens. In softmax window
attention (SwinIR) a zero key still takes a share of the softmax denominator that depends on
how many hidden tokens a window holds, never on their pixels; the official MaskSwinIR does the
same (it masks after each block and softmaxes over all tokens). Restormer's channel attention
sums over pixels, where hidden ones are zero. Either way the gradient of the encoder output
with respect to hidden pixels is exactly zero (tests/test_maskdcpt.py checks it).

Usage:
  mask = random_patch_mask(rng, batch, grid=(H // p, W // p))        # [B, H/p, W/p]
  with patch_masking(mask, (H, W)):
    _, feats = backbone.apply(variables, x * expand(mask, H, W), return_decoder_features=True)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmilab.models import layers

MASK_RATIO = 0.5  # MaskDCPT: half of the patches hidden (official `self.mask_ratio = 0.5`)

# Per-position LayerNorms: masked LN = LN(x) at visible positions, 0 at hidden ones.
NORM_TYPES: tuple[type, ...] = (layers.LayerNorm2d, layers.ChannelLayerNorm, nn.LayerNorm)
# Norms whose statistics mix positions: masking cannot make them leak-free.
_MIXING_NORMS: tuple[type, ...] = (nn.BatchNorm, nn.GroupNorm)


class Maskable(Protocol):
  """What a backbone provides to be pre-trained with MaskDCPT (the one interface masking uses).

  mask_patch_size: the side of the square patches the mask hides (the official MaskDCPT test
    options' `window_size`: 16 for NAFNet, the window for SwinIR, 8 for the Restormer family).
  decoder_modules: name prefixes of the top-level submodules after the encoder (decoder and
    output head); `patch_masking(..., unmasked=model.decoder_modules)` leaves them dense, so the
    backbone's own decoder reconstructs the image from the masked encoder
    (config.method.reconstruction="backbone" in jaxmilab/methods/maskdcpt.py).
  Besides, every maskable backbone builds its layers from `nn.Conv` / `nn.Dense` and the
  per-position norms in NORM_TYPES, and calls `__call__(x, return_decoder_features=True)`.
  """

  mask_patch_size: int
  decoder_modules: tuple[str, ...]


def _interface(model: nn.Module, attribute: str):
  try:
    return getattr(model, attribute)
  except AttributeError:
    raise ValueError(
        f"{type(model).__name__} does not implement masking.Maskable (no "
        f"{attribute!r}); MaskDCPT needs it (see jaxmilab/models/masking.py)."
    ) from None


def mask_patch_size(model: nn.Module) -> int:
  """The backbone's mask patch (Maskable.mask_patch_size)."""
  return int(_interface(model, "mask_patch_size"))


def decoder_modules(model: nn.Module) -> tuple[str, ...]:
  """Name prefixes of the backbone's decoder-side submodules (Maskable.decoder_modules)."""
  return tuple(_interface(model, "decoder_modules"))


def num_visible(grid: Sequence[int], ratio: float = MASK_RATIO) -> int:
  """Patches kept per image: round((1 - ratio) * h * w) (Python round, as the official code)."""
  keep = int(round(grid[0] * grid[1] * (1.0 - ratio)))
  if keep < 1:
    raise ValueError(
        f"A {grid[0]} x {grid[1]} patch grid with mask ratio {ratio} keeps no patch; "
        f"use larger images (config.data.patch_size) or a smaller mask patch."
    )
  return keep


def random_patch_mask(
    rng: jax.Array, batch: int, grid: Sequence[int], ratio: float = MASK_RATIO
) -> jax.Array:
  """[B, h, w] float32 0/1 mask; per image the num_visible patches with the smallest uniform
  noise are visible (1), the rest hidden (0) (official `mask()`: rand(B, h*w).argsort())."""
  h, w = int(grid[0]), int(grid[1])
  keep = num_visible((h, w), ratio)
  noise = jax.random.uniform(rng, (batch, h * w))
  rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # rank of each patch
  return (rank < keep).astype(jnp.float32).reshape(batch, h, w)


def expand(mask: jax.Array, height: int, width: int) -> jax.Array:
  """Nearest-neighbour resize of a [B, h, w] patch mask to [B, height, width, 1].

  height and width must be multiples of h and w (a patch covers whole pixels)."""
  _, h, w = mask.shape
  if height % h or width % w:
    raise ValueError(
        f"A {height} x {width} map does not divide into the {h} x {w} mask grid: the "
        f"mask patch is smaller than this map's stride. Use a mask patch that is a "
        f"multiple of the backbone's total downsampling."
    )
  m = jnp.repeat(jnp.repeat(mask, height // h, axis=1), width // w, axis=2)
  return m[..., None]


def _window_partition(x: jax.Array, window: int) -> jax.Array:
  """[B, H, W, C] -> [B, nW, window*window, C], row-major windows (= swinir.window_partition)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // window) * (w // window), window * window, c)


class _Masker:
  """The interceptor: multiplies the mask into conv / dense inputs and outputs and norm outputs."""

  def __init__(self, mask: jax.Array, image_hw: Sequence[int], unmasked: Sequence[str] = ()):
    if mask.ndim != 3:
      raise ValueError(f"patch_masking expects a [B, h, w] mask, got shape {mask.shape}.")
    self.mask = mask
    self.image_hw = (int(image_hw[0]), int(image_hw[1]))
    self.unmasked = tuple(unmasked)

  def _dense(self, module: nn.Module) -> bool:
    """True inside a top-level submodule named by `unmasked` (e.g. the backbone's decoder)."""
    path = getattr(module, "path", None) or ()
    return bool(path) and any(str(path[0]).startswith(p) for p in self.unmasked)

  def _window_mask(self, module: nn.Module, x: jax.Array) -> jax.Array:
    """[B, nW, N, 1] mask of window tokens, for a Dense inside a windowed attention."""
    window = int(module.parent.window_size)
    h, w = self.image_hw
    b, nw, n = x.shape[:3]
    if n != window * window or nw * n != h * w:
      raise ValueError(
          f"{_path(module)}: window tokens {x.shape} do not tile the {h} x {w} "
          f"token map with window {window}."
      )
    shift = 0
    ancestor = module.parent
    while ancestor is not None:
      if hasattr(ancestor, "shift_size"):
        shift = int(ancestor.shift_size)
        break
      ancestor = getattr(ancestor, "parent", None)
    m = expand(self.mask, h, w)
    if shift:
      m = jnp.roll(m, (-shift, -shift), axis=(1, 2))
    return _window_partition(m, window)

  def _mask_for(self, module: nn.Module, x: Any) -> jax.Array | None:
    """The mask broadcastable to x, or None when x is not a spatial map (pooled vectors)."""
    if not hasattr(x, "ndim") or x.ndim != 4:
      return None
    if isinstance(module, nn.Dense) and hasattr(getattr(module, "parent", None), "window_size"):
      return self._window_mask(module, x)
    _, h, w, _ = x.shape
    if (h, w) == (1, 1) and self.mask.shape[1:] != (1, 1):
      return None  # a global pool (SCA, prompts)
    try:
      return expand(self.mask, h, w)
    except ValueError as e:
      raise ValueError(f"{_path(module)}: {e}") from None

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__" or (self.unmasked and self._dense(module)):
      return next_fun(*args, **kwargs)
    if isinstance(module, _MIXING_NORMS):
      raise NotImplementedError(
          f"{_path(module)}: {type(module).__name__} mixes positions and "
          f"would leak hidden patches; MaskDCPT supports per-position norms."
      )
    if isinstance(module, (nn.Conv, nn.Dense)) and args:
      m_in = self._mask_for(module, args[0])
      if m_in is not None:
        args = (args[0] * m_in.astype(args[0].dtype),) + tuple(args[1:])
      y = next_fun(*args, **kwargs)
      m_out = self._mask_for(module, y)
      return y if m_out is None else y * m_out.astype(y.dtype)
    if isinstance(module, NORM_TYPES):
      y = next_fun(*args, **kwargs)
      m_out = self._mask_for(module, y)
      return y if m_out is None else y * m_out.astype(y.dtype)
    return next_fun(*args, **kwargs)


def _path(module: nn.Module) -> str:
  path = getattr(module, "path", None)
  return "/".join(str(p) for p in path) if path else type(module).__name__


@contextlib.contextmanager
def patch_masking(
    mask: jax.Array, image_hw: Sequence[int], unmasked: Sequence[str] = ()
) -> Iterator[None]:
  """Within this context every flax module call is masked (module docstring).

  mask: [B, h, w] 0/1 patch mask (1 = visible) of images of size image_hw = (H, W) (the size
  the backbone's full-resolution maps have, i.e. after any padding; use multiples of the patch).
  unmasked: name prefixes of top-level submodules left dense (Maskable.decoder_modules).
  """
  with nn.intercept_methods(_Masker(mask, image_hw, unmasked)):
    yield


class ReconstructionHead(nn.Module):
  """MaskDCPT's reconstruction decoder: a light SparK-style decoder over the decoder maps.

  Per level (coarse to fine): hidden positions are filled with a learned mask token (SparK's
  "densify"), a conv 1x1 projects to `width`, the coarser result is upsampled (nearest) and
  added, then conv 3x3 + GELU; a last conv 3x3 gives the image residual. Coarse levels let it
  fill 16-pixel holes (a p-patch is p / 2^k pixels at stride 2^k); the official decoder is not
  released, this is our reading of the paper's "reconstruction head" (ASSUMPTION).
  """

  out_channels: int = 3
  width: int | None = None  # default: the finest map's channels
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats: Sequence[jax.Array], mask: jax.Array) -> jax.Array:
    """feats: maps in forward order (coarse to fine) [B, h_i, w_i, C_i]; mask [B, gh, gw] (1 =
    visible; all ones for an unmasked forward). Returns [B, H, W, out_channels] at the finest
    map's size."""
    width = self.width or feats[-1].shape[-1]
    z = None
    for i, f in enumerate(feats):
      _, h, w, c = f.shape
      m = expand(mask, h, w).astype(self.dtype)
      token = self.param(f"mask_token_{i}", nn.initializers.normal(0.02), (c,), jnp.float32)
      f = f.astype(self.dtype) * m + token.astype(self.dtype) * (1 - m)  # [B, h, w, C_i]
      f = layers.conv2d(f, width, 1, name=f"proj_{i}", dtype=self.dtype)
      if z is not None:
        zh, zw = z.shape[1:3]
        if h % zh or w % zw:
          raise ValueError(
              f"ReconstructionHead: map {f.shape} is not an integer upsampling of "
              f"the previous level {z.shape}."
          )
        z = jnp.repeat(jnp.repeat(z, h // zh, axis=1), w // zw, axis=2)
        f = f + z
      z = jax.nn.gelu(layers.conv2d(f, width, 3, name=f"fuse_{i}", dtype=self.dtype))
    return layers.conv2d(z, self.out_channels, 3, name="out", dtype=self.dtype)
