"""One way to build a model from `config.model`: presets, declared fields, dtype names.

Every restoration backbone is a flax dataclass whose fields ARE its config schema: the keys
`config.model` may hold are `name`, `preset` and the module's own fields (`dataclasses.fields`,
minus flax's `parent` / `name`), so there is no second list of keys to keep in sync. `create`
starts from the field defaults, applies the named preset, then the explicit keys; `None` means
"not set" (the preset's or the field's value). `dtype` is given by name ("float32" /
"bfloat16") and mapped here once. A module may define `check_config(self)` raising ValueError
that names `config.model.<key>`; `create` calls it on the new module.

    model = common.create(NAFNet, PRESETS, config.model)

`config_defaults(module_cls)` lists the same keys (all `None`: "the preset's value") for
`jaxmilab.config_lib`, so every field can be overridden from the command line on every config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, TypeVar

import flax.linen as nn
import jax.numpy as jnp

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_NOT_CONFIG = ("parent", "name")  # flax's own dataclass fields
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def dtype_from_name(name: str | None, key: str = "config.model.dtype") -> Any:
  """ "float32" (also for None / "") or "bfloat16" -> the jnp dtype; ValueError naming `key`."""
  name = name or "float32"
  if name not in DTYPES:
    raise ValueError(f"{key}={name!r}; use one of {sorted(DTYPES)}.")
  return DTYPES[name]


def module_fields(module_cls: type[nn.Module]) -> dict[str, dataclasses.Field]:
  """The declared fields of a flax module class, in order, without flax's parent / name."""
  return {f.name: f for f in dataclasses.fields(module_cls) if f.name not in _NOT_CONFIG}


def field_values(module: nn.Module, module_cls: type[nn.Module]) -> dict[str, Any]:
  """{field: value} of `module` for the fields of `module_cls` (a base class of it), e.g. to
  build a submodule that shares its parent's settings."""
  return {k: getattr(module, k) for k in module_fields(module_cls)}


def field_defaults(module_cls: type[nn.Module], keys=None) -> dict[str, Any]:
  """{field: default} of `module_cls` (all fields with a default, or `keys`), dtypes by name.

  For a model read through `jaxmilab.config_options` rather than `create`: its
  CONFIG_DEFAULTS then come from the field defaults, written once, in the class.
  """
  fields = module_fields(module_cls)
  out = {}
  for key in fields if keys is None else keys:
    f = fields[key]
    if not _has_default(f):
      if keys is None:
        continue
      raise ValueError(f"{module_cls.__name__}.{key} has no default.")
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if key == "dtype":
      value = next(name for name, dtype in DTYPES.items() if dtype == value)
    out[key] = value
  return out


def _has_default(f: dataclasses.Field) -> bool:
  return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _coerce(key: str, annotation: str, value: Any) -> Any:
  """A config value -> the field's declared type (annotations are strings here: PEP 563)."""
  annotation = str(annotation).replace(" ", "")
  try:
    if annotation.startswith("Sequence["):
      inner = annotation[len("Sequence[") : -1]
      if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError("not a sequence")
      return tuple(_coerce(key, inner, v) for v in value)
    if value is None and annotation.endswith("|None"):
      return None
    if annotation.startswith("int"):
      if isinstance(value, float) and not value.is_integer():
        raise TypeError("not an integer")
      return int(value)
    if annotation.startswith("float"):
      return float(value)
    if annotation == "bool":
      if not isinstance(value, (bool, int)):
        raise TypeError("not a boolean")
      return bool(value)
    if annotation == "str":
      if not isinstance(value, str):
        raise TypeError("not a string")
      return value
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"config.model.{key}={value!r} does not fit the declared type " f"{annotation} ({e})."
    ) from None
  return value


def resolve(
    module_cls: type[nn.Module],
    presets: Mapping[str, Mapping[str, Any]],
    config,
    *,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
  """config.model (dict or ConfigDict) -> constructor arguments of module_cls (every field).

  Order: field defaults < presets[config.preset] < explicit non-None keys. `prepare` may
  rewrite the settings before type conversion (e.g. an int meaning "the same at every level").
  Raises ValueError naming the unknown key, the bad preset, a missing field or the dtype.
  """
  fields = module_fields(module_cls)
  model = module_cls.__name__
  known = ("name", "preset") + tuple(fields)
  keys = list(config.keys())
  # A key set to None is "not set"; it may belong to another model (config_lib fills every
  # declared key of the model a config starts with, and --config.model.name can switch models).
  unknown = sorted(k for k in keys if k not in known and config.get(k) is not None)
  if unknown:
    raise ValueError(
        f"config.model: unknown key(s) {unknown} for the {model} model "
        f"({module_cls.__module__}); known keys: {list(known)}."
    )
  settings: dict[str, Any] = {}
  preset = config.get("preset")
  if preset is not None:
    if preset not in presets:
      raise ValueError(
          f"config.model.preset={preset!r} is not a {model.lower()} preset; "
          f"choose one of {sorted(presets)}."
      )
    settings.update(presets[preset])
  for key in fields:
    if key in keys and config.get(key) is not None:
      settings[key] = config.get(key)
  missing = [k for k, f in fields.items() if k not in settings and not _has_default(f)]
  if missing:
    raise ValueError(
        f"config.model is missing {missing} for the {model} model; set them or "
        f"config.model.preset (one of {sorted(presets)})."
    )
  if prepare is not None:
    settings = prepare(settings)
  out = {}
  for key, f in fields.items():
    if key == "dtype":
      out[key] = dtype_from_name(settings.get("dtype"))
    elif key in settings:
      out[key] = _coerce(key, f.type, settings[key])
    else:
      out[key] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
  return out


def create(
    module_cls: type[ModuleT],
    presets: Mapping[str, Mapping[str, Any]],
    config,
    *,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> ModuleT:
  """module_cls built from config.model (see `resolve`), checked by its `check_config()`."""
  module = module_cls(**resolve(module_cls, presets, config, prepare=prepare))
  check = getattr(module, "check_config", None)
  if check is not None:
    check()
  return module


def config_defaults(module_cls: type[nn.Module]) -> dict[str, Any]:
  """{key: None} for `preset` and every field: the keys config_lib may fill and override."""
  return {"preset": None, **{k: None for k in module_fields(module_cls)}}


def check_nhwc(x: Any, img_channels: int, model: str) -> None:
  """Raises ValueError unless x is [B, H, W, img_channels]."""
  if x.ndim != 4 or x.shape[-1] != img_channels:
    raise ValueError(
        f"{model} expects [B, H, W, {img_channels}] images (NHWC), got shape "
        f"{x.shape}; set config.model.img_channels or transpose NCHW input."
    )


def apply_with_state(
    module: nn.Module,
    params: Any,
    model_state: Mapping[str, Any],
    *args,
    train: bool,
    rngs: Mapping[str, Any] | None = None,
    **kwargs,
) -> tuple[Any, dict[str, Any]]:
  """`module.apply` on {"params": params, **model_state} -> (output, model_state).

  In training the collections of model_state (e.g. BatchNorm's "batch_stats") are mutable and
  come back updated; at evaluation, or when there is no state, they come back unchanged.
  `train` and `kwargs` go to the module's __call__, `rngs` (e.g. {"dropout": key}) to apply.
  """
  variables = {"params": params, **model_state}
  rngs = dict(rngs or {})
  if train and model_state:
    out, updates = module.apply(
        variables, *args, train=True, rngs=rngs, mutable=list(model_state), **kwargs
    )
    return out, dict(updates)
  return module.apply(variables, *args, train=train, rngs=rngs, **kwargs), dict(model_state)
