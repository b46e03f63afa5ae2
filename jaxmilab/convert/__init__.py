"""Official PyTorch / safetensors checkpoints -> flax parameters, never executing pickled code.

torch_checkpoint  reading `.pth` (restricted unpickler, no torch needed) and `.safetensors`
mapping           official state-dict keys -> flax param paths, and the key/shape check
"""

from __future__ import annotations

from typing import Any


def expected_params(model_config) -> tuple[Any, str]:
  """(abstract params tree of config.model's network, its display name); no compute."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxmilab import registry  # pylint: disable=g-import-not-at-top

  model = registry.get_model(model_config["name"])(model_config)
  m = int(getattr(model, "pad_multiple", 8))
  x = jax.ShapeDtypeStruct((1, m, m, int(getattr(model, "img_channels", 3))), jax.numpy.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
  label = model_config.get("preset") or model_config["name"]
  return params, f"{model_config['name']} ({label})"


def load_torch_params(path: str, model_config=None, *, label: str | None = None) -> dict[str, Any]:
  """Flax params (numpy float32) of an official `.pth` / `.safetensors` file.

  With model_config (a config.model: name, preset, ...), checks every key and shape against
  that network and raises mapping.CheckpointMismatchError listing all differences (naming
  the file and `label` / the model).
  """
  from jaxmilab.convert import mapping  # pylint: disable=g-import-not-at-top
  from jaxmilab.convert import torch_checkpoint  # pylint: disable=g-import-not-at-top

  params, origin = mapping.convert_state_dict(torch_checkpoint.load_state_dict(path))
  if model_config is not None:
    expected, model_label = expected_params(model_config)
    label = f"{label}: {model_label}" if label else model_label
    mapping.check_params(params, expected, source=path, model=label, origin=origin)
  return params


def load_as_variables(path: str, model_config=None) -> dict[str, Any]:
  """`jaxmilab.checkpoint.load_variables`-style result for a `.pth` / `.safetensors` file:
  {"params": {"backbone": params}, "model_state": {}}, for `config.method.init_from`. A PCL /
  MACL 2-D U-Net file (e.g. the released MACL_*.pth) goes through `macl_weights` instead
  (its own tree, with the BatchNorm statistics as model_state["batch_stats"])."""
  from jaxmilab.convert import macl_weights  # pylint: disable=g-import-not-at-top
  from jaxmilab.convert import torch_checkpoint  # pylint: disable=g-import-not-at-top

  state_dict = torch_checkpoint.load_state_dict(path)
  if macl_weights.is_unet2d(state_dict):
    return macl_weights.to_variables(state_dict, source=path)
  return {"params": {"backbone": load_torch_params(path, model_config)}, "model_state": {}}
