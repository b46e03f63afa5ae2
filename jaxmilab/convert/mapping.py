"""Official PyTorch state dicts -> flax params of nafnet / swinir / restormer / promptir.

One rule covers the four architectures, official and DCPT variants (it is the rule each module
docstring in jaxmilab/models/ documents):
  1. Skip buffers the flax models recompute (`*.relative_position_index`, `*.attn_mask`) and
     the six modules va1shn9v/PromptIR creates but never uses (`chnl_reduce{1-3}.*`,
     `reduce_noise_channel_{1-3}.*`).
  2. Undo the DCPT renames: Restormer stages wrapped in SequentialTransformerBlock
     (`encoder_level1.body.0.*` -> `encoder_level1.0.*`, also decoder_level*, latent,
     refinement) and NAFNetBaseline's decoders stored as attributes (`decoder{i}.*` ->
     `decoders.{i}.*`, MILab-PKU/dcpt basicsr/archs/nafnet_arch.py `setattr(self, f"decoder{i}")`).
  3. Join every numeric component to the name before it (`blocks.0` -> `blocks_0`) and nest
     the others; drop the `.body` of Restormer's LayerNorm wrapper (`norm1.body.weight`),
     NAFNet's `ups_{i}_0` -> `ups_{i}` (conv inside nn.Sequential) and `sca_1` -> `sca`.
  4. Leaves: conv weight OIHW -> `kernel` HWIO; linear weight [out, in] -> `kernel` [in, out];
     1-D `weight` (LayerNorm) -> `scale`; NAFNet `beta` / `gamma` [1, C, 1, 1] -> [C];
     Restormer `temperature` [h, 1, 1] -> [h]; PromptIR `prompt_param` [1, L, D, S, S] ->
     [L, S, S, D]; `bias` and `relative_position_bias_table` unchanged. Floats become float32.
The result is then checked against the model's own parameter shapes (`check_params`): every
missing, unexpected and mis-shaped key is reported in one `CheckpointMismatchError`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

_SKIP = re.compile(
    r"(^|\.)(relative_position_index|attn_mask)$" r"|^(chnl_reduce\d|reduce_noise_channel_\d)\."
)
_RENAMES = (
    (re.compile(r"^(encoder_level\d|decoder_level\d|latent|refinement)\.body\.(\d)"), r"\1.\2"),
    (re.compile(r"^decoder(\d+)\."), r"decoders.\1."),
)


class CheckpointMismatchError(ValueError):
  """The checkpoint's keys / shapes do not match the model; lists every difference."""


def convert_key(key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  """One official state-dict entry -> (flax param path, array), or None for skipped keys."""
  if _SKIP.search(key):
    return None
  for pattern, repl in _RENAMES:
    key = pattern.sub(repl, key)
  *modules, leaf = key.split(".")
  path: list[str] = []
  for m in modules:
    if m.isdigit() and path:
      path[-1] += f"_{m}"
    else:
      path.append(m)
  if len(path) >= 2 and path[-1] == "body" and re.fullmatch(r"norm\d?", path[-2]):
    path.pop()  # Restormer LayerNorm(...).body
  if path and re.fullmatch(r"ups_\d+_0", path[0]):
    path[0] = path[0][:-2]  # NAFNet ups.{i}.0 (conv)
  if path and path[-1] == "sca_1":
    path[-1] = "sca"  # NAFNet sca.1 (conv after pool)
  value = np.asarray(value)
  if np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16":
    value = value.astype(np.float32)
  if leaf in ("beta", "gamma", "temperature"):
    value = value.reshape(-1)
  elif leaf == "prompt_param":
    if value.ndim != 5:
      raise CheckpointMismatchError(f"{key}: expected [1, L, D, S, S], got {value.shape}.")
    value = value[0].transpose(0, 2, 3, 1)
  elif leaf == "weight" and value.ndim == 4:
    leaf, value = "kernel", value.transpose(2, 3, 1, 0)
  elif leaf == "weight" and value.ndim == 2:
    leaf, value = "kernel", value.T
  elif leaf == "weight":
    leaf = "scale"
  return tuple(path) + (leaf,), np.ascontiguousarray(value)


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]]]:
  """(nested flax params, {"a/b/leaf": (torch key, torch shape)}) for a whole state dict."""
  params: dict[str, Any] = {}
  origin: dict[str, tuple[str, tuple[int, ...]]] = {}
  for key, value in state_dict.items():
    converted = convert_key(key, value)
    if converted is None:
      continue
    path, array = converted
    flat = "/".join(path)
    if flat in origin:
      raise CheckpointMismatchError(
          f"state-dict keys {origin[flat][0]!r} and {key!r} both map "
          f"to the flax parameter {flat!r}."
      )
    origin[flat] = (key, tuple(np.shape(value)))
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise CheckpointMismatchError(f"state-dict key {key!r} conflicts with another key.")
    node[path[-1]] = array
  return params, origin


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a/b/leaf": leaf} of a nested dict (leaves: arrays or ShapeDtypeStructs)."""
  out: dict[str, Any] = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out


def first_keys(items: Sequence[str], limit: int = 4) -> str:
  """ "a; b; c; d; ... (N more)": the first `limit` of `items`, for a one-line error message."""
  shown = "; ".join(items[:limit])
  return shown + (f"; ... ({len(items) - limit} more)" if len(items) > limit else "")


RESTORE_HINT = (
    "Check that --model names the architecture the weights were trained with (e.g. swinir vs "
    "swinir_dcpt; `python -m jaxmilab.restore --list_models`)."
)


def check_params(
    params: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    source: str,
    model: str,
    origin: Mapping[str, tuple[str, tuple[int, ...]]] | None = None,
    hint: str = RESTORE_HINT,
    limit: int | None = None,
) -> None:
  """Raises one CheckpointMismatchError listing all missing / unexpected / mis-shaped keys.

  params, expected: nested param trees (expected may hold jax.ShapeDtypeStruct leaves);
  origin: converter output naming the torch key behind each flax path (for the message);
  hint: the sentence that says what to check (default: the restore CLI's --model);
  limit: None lists every key, one kind per line; a number gives one line naming the first
  `limit` keys of each kind (`first_keys`), the counts in front.
  """
  got = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
  want = {k: tuple(v.shape) for k, v in flatten(expected).items()}
  origin = origin or {}
  name = lambda k: f"{origin[k][0]} -> {k}" if k in origin else k
  missing = sorted(set(want) - set(got))
  unexpected = sorted(set(got) - set(want))
  wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
  if not (missing or unexpected or wrong):
    return
  show = lambda items: "; ".join(items) if limit is None else first_keys(items, limit)
  head = (
      f"Checkpoint {source!r} does not match model {model!r}: {len(missing)} missing, "
      f"{len(unexpected)} unexpected, {len(wrong)} mis-shaped parameter(s)."
  )
  kinds = []
  if missing:
    kinds.append("missing (flax path, shape): " + show([f"{k} {want[k]}" for k in missing]))
  if unexpected:
    kinds.append(
        "unexpected (checkpoint key -> flax path): "
        + show([f"{name(k)} {origin[k][1] if k in origin else got[k]}" for k in unexpected])
    )
  if wrong:
    kinds.append(
        "mis-shaped (checkpoint key -> flax path: got, expected): "
        + show([f"{name(k)}: {got[k]} vs {want[k]}" for k in wrong])
    )
  if limit is not None:
    raise CheckpointMismatchError(" ".join([head] + [f"{k}." for k in kinds] + [hint]))
  raise CheckpointMismatchError("\n".join([f"{head} {hint}"] + [f"  {k}" for k in kinds]))
