"""PCL / MACL 2-D U-Net state dicts (e.g. the released stevezs315/MACL `model_pth/MACL_*.pth`)
-> flax variables of jaxmilab.models.pcl_unet / jaxmilab.methods.macl, without running code.

The released files are `torch.save({"net": model.state_dict()})` of network/unet2d.py
`UNet2D_classification_MACL` (train_contrast.py `save_model`); they are read by
`jaxmilab.convert.torch_checkpoint.load_state_dict` (restricted unpickler: no pickled code runs;
`net` unwrapped, DDP `module.` prefixes stripped). Key layouts understood:

  share_encoder.* / encoder.*     encoder (MACL pre-training / PCL and fine-tuned UNet2D)
  online_decoder.* / decoder.*    decoder (MACL pre-training: all four blocks exist, only
                                  blocks 1-2 were trained; fine-tuned UNet2D: with head.0)
  target_pixel_projector.{0,1,3,4}, target_instance_projector.{2,4},
  online_instance_projector.{2,4}  MACL heads    (-> pixel_projector, aux_image_head,
                                                   dom_image_head of methods/macl.py MACLNet)
  head.{2,4}                       PCL's UNet2D_classification MLP head (-> image_head)

Per module: contr_{L}_{i}.0 conv / .1 BatchNorm -> encoder/level_{L}_conv_{i}/{conv,bn};
center.0 / center.2 -> encoder/center_conv_{1,2}; upscale{5,4,3,2} -> decoder/block_{1..4}/
upconv; expand_{4,3,2,1}_{i} -> decoder/block_{1..4}/conv_{i}; decoder.head.0 -> head.
Leaves: conv OIHW -> HWIO kernel; ConvTranspose2d [in, out, kh, kw] -> [kh, kw, in, out] with
both spatial axes flipped (PyTorch's transposed conv flips the kernel, flax's does not);
Linear [out, in] -> [in, out]; BatchNorm weight / bias -> params scale / bias,
running_mean / running_var -> batch_stats mean / var; num_batches_tracked dropped. Any
other key is an error: one line with their count, naming the first few.

Result: {"params": {"backbone": {"encoder", "decoder"[, "head"]}, heads...}, "model_state":
{"batch_stats": {...same paths...}}} — what `config.method.init_from=<file>.pth` hands to
`macl_finetune` (which copies the encoder and decoder blocks 1..init_decoder_blocks; the
released fine-tuning copies all four blocks: set init_decoder_blocks=4 for that) or `macl`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxmilab.convert import mapping

_ENCODER = ("share_encoder", "encoder")
_DECODER = ("online_decoder", "decoder")
# upscale index -> decoder block (block 1 = deepest); expand level -> block.
_UPSCALE_BLOCK = {5: 1, 4: 2, 3: 3, 2: 4}
_EXPAND_BLOCK = {4: 1, 3: 2, 2: 3, 1: 4}
_HEADS = {
    "target_instance_projector": "aux_image_head",
    "online_instance_projector": "dom_image_head",
    "head": "image_head",
}


class MACLWeightsError(ValueError):
  """A state dict that is not a PCL / MACL U-Net, or one with keys this reader does not know."""


def is_unet2d(state_dict: Mapping[str, Any]) -> bool:
  """True for a PCL / MACL UNet2D state dict (its first-level encoder conv is present)."""
  return any(f"{e}.contr_1_1.0.weight" in state_dict for e in _ENCODER)


def _conv(w: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 1, 0))


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  node = tree
  for p in path[:-1]:
    node = node.setdefault(p, {})
  if path[-1] in node:
    raise MACLWeightsError(f"Two state-dict keys map to {'/'.join(path)}.")
  node[path[-1]] = value


def _bn_or_conv(
    leaf: str, index: int, conv_index: int, bn_index: int
) -> tuple[str, str, str] | None:
  """(collection, module, leaf) of a Sequential(conv, BN, act) entry; None if not one."""
  if index == conv_index and leaf in ("weight", "bias"):
    return "params", "conv", "kernel" if leaf == "weight" else "bias"
  if index == bn_index:
    return {
        "weight": ("params", "bn", "scale"),
        "bias": ("params", "bn", "bias"),
        "running_mean": ("batch_stats", "bn", "mean"),
        "running_var": ("batch_stats", "bn", "var"),
    }.get(leaf)
  return None


def convert(state_dict: Mapping[str, Any], *, source: str = "state dict") -> dict[str, Any]:
  """{"params": ..., "batch_stats": ...} (numpy float32) of a PCL / MACL UNet2D state dict."""
  if not is_unet2d(state_dict):
    raise MACLWeightsError(
        f"{source}: not a PCL / MACL UNet2D state dict (no "
        f"share_encoder.contr_1_1.0.weight or encoder.contr_1_1.0.weight)."
    )
  out: dict[str, Any] = {"params": {}, "batch_stats": {}}
  unknown = []
  for key, value in state_dict.items():
    value = np.asarray(value)
    parts = key.split(".")
    if parts[-1] == "num_batches_tracked":
      continue
    target = None
    top = parts[0]
    if top in _ENCODER and len(parts) == 4 and (m := re.fullmatch(r"contr_(\d)_(\d)", parts[1])):
      hit = _bn_or_conv(parts[3], int(parts[2]), 0, 1)
      if hit:
        collection, module, leaf = hit
        target = (collection, ("backbone", "encoder", f"level_{m[1]}_conv_{m[2]}", module, leaf))
    elif top in _ENCODER and len(parts) == 4 and parts[1] == "center" and parts[2] in ("0", "2"):
      if parts[3] in ("weight", "bias"):
        target = (
            "params",
            (
                "backbone",
                "encoder",
                f"center_conv_{int(parts[2]) // 2 + 1}",
                "kernel" if parts[3] == "weight" else "bias",
            ),
        )
    elif top in _DECODER and len(parts) == 3 and (m := re.fullmatch(r"upscale(\d)", parts[1])):
      block = _UPSCALE_BLOCK.get(int(m[1]))
      if block and parts[2] == "weight":
        value = np.ascontiguousarray(value.transpose(2, 3, 0, 1)[::-1, ::-1])
        target = ("params", ("backbone", "decoder", f"block_{block}", "upconv", "kernel"))
      elif block and parts[2] == "bias":
        target = ("params", ("backbone", "decoder", f"block_{block}", "upconv", "bias"))
    elif top in _DECODER and len(parts) == 4 and (m := re.fullmatch(r"expand_(\d)_(\d)", parts[1])):
      block = _EXPAND_BLOCK.get(int(m[1]))
      hit = _bn_or_conv(parts[3], int(parts[2]), 0, 1) if block else None
      if hit:
        collection, module, leaf = hit
        target = (
            collection,
            ("backbone", "decoder", f"block_{block}", f"conv_{m[2]}", module, leaf),
        )
    elif top in _DECODER and parts[1:] == ["head", "0", "weight"]:
      target = ("params", ("backbone", "head", "kernel"))
    elif top == "target_pixel_projector" and len(parts) == 3 and parts[1] in ("0", "1", "3", "4"):
      i = int(parts[1])
      hit = _bn_or_conv(parts[2], i % 3, 0, 1)
      if hit:
        collection, module, leaf = hit
        target = (collection, ("pixel_projector", f"conv_{i // 3 + 1}", module, leaf))
    elif (
        top in _HEADS
        and len(parts) == 3
        and parts[1] in ("2", "4")
        and parts[2] in ("weight", "bias")
    ):
      leaf = "kernel" if parts[2] == "weight" else "bias"
      target = ("params", (_HEADS[top], "fc_1" if parts[1] == "2" else "fc_2", leaf))
    if target is None:
      unknown.append(f"{key} {tuple(value.shape)}")
      continue
    collection, path = target
    if path[-1] == "kernel" and value.ndim == 4 and "upconv" not in path:
      value = _conv(value)
    elif path[-1] == "kernel" and value.ndim == 2:
      value = np.ascontiguousarray(value.T)
    _set(out[collection], path, np.asarray(value, np.float32))
  if unknown:
    raise MACLWeightsError(
        f"{source}: {len(unknown)} state-dict key(s) that are not part of the "
        f"PCL / MACL UNet2D: " + mapping.first_keys(unknown)
    )
  return out


def to_variables(state_dict: Mapping[str, Any], *, source: str = "state dict") -> dict[str, Any]:
  """`checkpoint.load_variables`-style {"params", "model_state": {"batch_stats"}} (init_from)."""
  converted = convert(state_dict, source=source)
  return {"params": converted["params"], "model_state": {"batch_stats": converted["batch_stats"]}}


def load(path: str) -> dict[str, Any]:
  """to_variables of a `.pth` / `.safetensors` file read by the weights-only reader."""
  from jaxmilab.convert import torch_checkpoint  # pylint: disable=g-import-not-at-top

  return to_variables(torch_checkpoint.load_state_dict(path), source=path)
