"""Dilated ResNet-50/101 trunks for semantic segmentation (DeepLab), with torchvision weight import.

`jaxmilab/models/wsol_backbones.py` has the WSOL ResNet50 (stride changes only, no dilation,
torchvision's stride-on-conv2); segmentation needs atrous convolutions and the CDSP variant of
the bottleneck, so the trunk lives here. Two layouts (`style`):

* "cdsp" — the trunk of the released CDSP code (Zxl19990529/Class-driven-Scribble-Promotion-
  Network, models/deeplabV2.py and models/deeplabV3_lorm.py, the Caffe DeepLab ResNet): the
  stride of a bottleneck is on its first 1x1 conv, the stem max-pool uses ceil_mode, layer2 has
  stride 2, layer3 stride 1 with dilation 2 in every block, layer4 stride 1 with the multi-grid
  dilations (4, 8, 16): output stride 8. This is the default of configs/cdsp.py (released code).
* "torchvision" — torchvision's ResNet with `replace_stride_with_dilation`: stride on the 3x3
  conv, floor max-pool; output_stride 8 -> layer3 dilations (1, 2, 2, ...), layer4 (2, 4, 4);
  output_stride 16 -> layer3 stride 2, layer4 (1, 2, 2); 32 -> no dilation.

Both take torchvision ImageNet weights unchanged (same parameter shapes and names): module
names follow the torch state dict ("layer3_1/conv2", "downsample_0"), and
`variables_from_torchvision` maps a state dict ("layer3.1.conv2.weight") onto them.
Outputs: {"stem", "layer1", "layer2", "layer3", "layer4"} NHWC feature maps.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
CDSP_MULTI_GRID = (4, 8, 16)  # released code: layer4 `dilations=[4, 8, 16]`


def layer_plan(
    style: str,
    output_stride: int,
    blocks: Sequence[int],
    multi_grid: Sequence[int] = CDSP_MULTI_GRID,
) -> list[tuple[int, tuple[int, ...]]]:
  """Per layer (stride of its first block, dilation of each block)."""
  if style == "cdsp":
    if output_stride != 8:
      raise ValueError(
          f"config.model.output_stride={output_stride}: the CDSP trunk (style 'cdsp') "
          f"has output stride 8 only; use style 'torchvision' for 16 or 32."
      )
    grid = tuple(multi_grid)
    if len(grid) < blocks[3]:
      grid = grid + (grid[-1],) * (blocks[3] - len(grid))
    return [
        (1, (1,) * blocks[0]),
        (2, (1,) * blocks[1]),
        (1, (2,) * blocks[2]),
        (1, grid[: blocks[3]]),
    ]
  if style != "torchvision":
    raise ValueError(f"config.model.style={style!r}: use 'cdsp' or 'torchvision'.")
  replace = {8: (True, True), 16: (False, True), 32: (False, False)}.get(int(output_stride))
  if replace is None:
    raise ValueError(f"config.model.output_stride={output_stride}: use 8, 16 or 32.")
  plan = [(1, (1,) * blocks[0])]
  dilation = 1
  for replace_stride, n in zip((False,) + replace, blocks[1:]):
    previous = dilation
    if replace_stride:
      dilation, stride = dilation * 2, 1
    else:
      stride = 2
    # torchvision _make_layer: the first block uses the previous dilation, the rest the new one.
    plan.append((stride, (previous,) + (dilation,) * (n - 1)))
  return plan


def torch_max_pool(x: jax.Array, k: int, s: int, p: int, ceil_mode: bool) -> jax.Array:
  """nn.MaxPool2d(k, s, p, ceil_mode) on NHWC (padding with -inf)."""
  pads = []
  for size in x.shape[1:3]:
    if ceil_mode:
      out = math.ceil((size + 2 * p - k) / s) + 1
      if (out - 1) * s >= size + p:  # the last window must start inside the input (PyTorch)
        out -= 1
    else:
      out = (size + 2 * p - k) // s + 1
    pads.append((p, p + max(0, (out - 1) * s + k - (size + 2 * p))))
  x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)
  return nn.max_pool(x, (k, k), strides=(s, s), padding="VALID")


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    dilation: int = 1,
    bias: bool = False,
    name: str | None = None,
    dtype=jnp.float32,
    kernel_init=None,
) -> nn.Conv:
  """PyTorch-style Conv2d: symmetric padding dilation * (kernel - 1) / 2."""
  pad = dilation * (kernel - 1) // 2
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=(dilation, dilation),
      use_bias=bias,
      name=name,
      dtype=dtype,
      kernel_init=kernel_init or nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
  )


def batch_norm(train: bool, name: str, dtype=jnp.float32) -> nn.BatchNorm:
  """BatchNorm2d(eps 1e-5, momentum 0.1) as flax (momentum = 1 - 0.1)."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name, dtype=dtype
  )


class Bottleneck(nn.Module):
  """ResNet bottleneck; `stride_in_1x1` puts the stride on conv1 (CDSP / Caffe) not conv2."""

  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  stride_in_1x1: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    s1, s2 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    d = self.dtype
    out = nn.relu(batch_norm(train, "bn1", d)(conv(self.planes, 1, s1, name="conv1", dtype=d)(x)))
    out = nn.relu(
        batch_norm(train, "bn2", d)(
            conv(self.planes, 3, s2, self.dilation, name="conv2", dtype=d)(out)
        )
    )
    out = batch_norm(train, "bn3", d)(conv(self.planes * 4, 1, name="conv3", dtype=d)(out))
    identity = x
    if self.downsample:
      identity = batch_norm(train, "downsample_1", d)(
          conv(self.planes * 4, 1, self.stride, name="downsample_0", dtype=d)(x)
      )
    return nn.relu(out + identity)


class ResNet(nn.Module):
  """Dilated ResNet trunk (no classifier); widths divided by `width_divisor` for CPU presets."""

  blocks: Sequence[int] = (3, 4, 23, 3)
  style: str = "cdsp"
  output_stride: int = 8
  multi_grid: Sequence[int] = CDSP_MULTI_GRID
  width_divisor: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict[str, jax.Array]:
    w = lambda c: max(1, c // self.width_divisor)
    cdsp = self.style == "cdsp"
    x = x.astype(self.dtype)
    x = nn.relu(
        batch_norm(train, "bn1", self.dtype)(conv(w(64), 7, 2, name="conv1", dtype=self.dtype)(x))
    )
    x = torch_max_pool(x, 3, 2, 1, ceil_mode=cdsp)
    out = {"stem": x}
    plan = layer_plan(self.style, self.output_stride, self.blocks, self.multi_grid)
    for index, ((stride, dilations), planes) in enumerate(zip(plan, (64, 128, 256, 512)), start=1):
      for b, dilation in enumerate(dilations):
        first = b == 0
        down = first and (
            stride != 1 or x.shape[-1] != w(planes) * 4 or (cdsp and dilation in (2, 4))
        )
        x = Bottleneck(
            w(planes),
            stride if first else 1,
            dilation,
            down,
            cdsp,
            self.dtype,
            name=f"layer{index}_{b}",
        )(x, train)
      out[f"layer{index}"] = x
    return out


# ------------------------------------------------------------------------- torchvision import


def variables_from_torchvision(
    state_dict: Mapping[str, np.ndarray], prefix: Sequence[str] = ()
) -> dict[str, Any]:
  """{"params", "batch_stats"} nested numpy dicts from a torchvision ResNet state dict.

  "layer3.1.conv2.weight" -> params/<prefix>/layer3_1/conv2/kernel (OIHW -> HWIO), BatchNorm
  weight/bias -> scale/bias, running_mean/var -> batch_stats mean/var. The classifier (`fc.`)
  and `num_batches_tracked` are dropped; a `module.` prefix (DataParallel) is stripped.
  """
  out: dict[str, Any] = {"params": {}, "batch_stats": {}}
  for key, value in state_dict.items():
    if key.startswith("module."):
      key = key[len("module.") :]
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
      continue
    *modules, leaf = key.split(".")
    path: list[str] = list(prefix)
    for m in modules:
      if m.isdigit() and len(path) > len(prefix):
        path[-1] = f"{path[-1]}_{m}"
      else:
        path.append(m)
    value = np.asarray(value, np.float32)
    collection = "params"
    if leaf in ("running_mean", "running_var"):
      collection, leaf = "batch_stats", leaf[len("running_") :]
    elif leaf == "weight" and value.ndim == 4:
      leaf, value = "kernel", value.transpose(2, 3, 1, 0)
    elif leaf == "weight":
      leaf = "scale"
    node = out[collection]
    for p in path:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out
