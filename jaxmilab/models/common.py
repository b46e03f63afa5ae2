"""One way to build a model from `config.model`: a dataclass of fields, named presets, types.

Every model is a flax dataclass whose fields ARE its config schema, and every model is built by
`create`:

    model = common.create(NAFNet, PRESETS, config.model, defaults=CONFIG_DEFAULTS)

The keys `config.model` may hold are `name`, those of the model's `CONFIG_DEFAULTS` (made by
`config_defaults`: `preset`, the fields, and any extra key a `prepare` function turns into
fields) and the fields without a default (e.g. `num_classes`, set by the method). A key that is
None, or still holds its declared default, is "not set". The constructor arguments are
`{**field defaults, **PRESETS[preset], **the keys that are set}`; `prepare(settings)` may then
rewrite them (an int meaning "the same at every level", a trunk depth into block counts), and
each value is converted to the field's type (`typing.get_type_hints`: ints, floats, bools,
strings, tuples of them; `dtype` by name, "float32" / "bfloat16"). A module may define
`check_config(self)` raising ValueError that names `config.model.<key>`; `create` calls it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Callable, Mapping, TypeVar

import flax.linen as nn
import jax.numpy as jnp

from jaxmilab import config_options

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


def _has_default(f: dataclasses.Field) -> bool:
  return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _default(f: dataclasses.Field) -> Any:
  return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def config_defaults(
    module_cls: type[nn.Module], *, unset: bool = False, exclude=(), **declared
) -> dict[str, Any]:
  """A model's CONFIG_DEFAULTS: the keys config_lib fills into `config.model`, and their values.

  Every field of module_cls but `exclude` with its default (`dtype` by name; fields without a
  default are left out: the method or a preset sets them) or, with `unset=True`, None ("not
  set": the preset's value, else the field's default). `declared` replaces values (e.g. a
  sentinel such as 0 = "the preset's value") and adds keys before the fields (`preset`, a key
  that `prepare` turns into fields).
  """
  fields = module_fields(module_cls)
  out = {k: v for k, v in declared.items() if k not in fields}
  for key, f in fields.items():
    if key in exclude:
      continue
    if key in declared:
      out[key] = declared[key]
    elif unset:
      out[key] = None
    elif _has_default(f):
      value = _default(f)
      if key == "dtype":
        value = next(name for name, dtype in DTYPES.items() if dtype == value)
      out[key] = value
  return out


def _field_types(module_cls: type[nn.Module]) -> dict[str, Any]:
  """The fields' types, evaluated (`typing.get_type_hints`); a class defined inside a function
  may name typing's names (Sequence, Any) that its module does not import."""
  try:
    return typing.get_type_hints(module_cls)
  except NameError:
    return typing.get_type_hints(
        module_cls, localns={n: getattr(typing, n) for n in typing.__all__}
    )


def _type_name(tp: Any) -> str:
  return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any) -> Any:
  """`value` as the type `tp` (from typing.get_type_hints); TypeError / ValueError if it is not."""
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    error: Exception = TypeError(f"not {_type_name(tp)}")
    for arg in args:
      if arg is not type(None):
        try:
          return _convert(arg, value)
        except (TypeError, ValueError) as e:
          error = e
    raise error
  if origin in (tuple, list, collections.abc.Sequence):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
      raise TypeError("not a sequence")
    values = tuple(value)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
      if len(values) != len(args):
        raise TypeError(f"not {len(args)} values")
      return tuple(_convert(a, v) for a, v in zip(args, values))
    return tuple(_convert(args[0] if args else Any, v) for v in values)
  if tp is int:
    if isinstance(value, float) and not value.is_integer():
      raise TypeError("not an integer")
    return int(value)
  if tp is float:
    return float(value)
  if tp is bool:
    if not isinstance(value, (bool, int)):
      raise TypeError("not a boolean")
    return bool(value)
  if tp is str:
    if not isinstance(value, str):
      raise TypeError("not a string")
    return value
  return value


def _coerce(key: str, tp: Any, value: Any) -> Any:
  """A config value -> the field's declared type; ValueError naming config.model.<key>."""
  try:
    return _convert(tp, value)
  except (TypeError, ValueError) as e:
    raise ValueError(
        f"config.model.{key}={value!r} does not fit the declared type {_type_name(tp)} ({e})."
    ) from None


def _unchanged(value: Any, declared: Any) -> bool:
  """Whether a config value still holds its declared default (then it is "not set")."""
  try:
    return bool(value == declared)
  except (TypeError, ValueError):  # e.g. an array
    return False


def resolve(
    module_cls: type[nn.Module],
    presets: Mapping[str, Mapping[str, Any]] | None,
    config,
    *,
    defaults: Mapping[str, Any] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
  """config.model (dict or ConfigDict) -> constructor arguments of module_cls (every field).

  `defaults`: the model's CONFIG_DEFAULTS (default: `preset` if there are presets and every
  field, all None). Order: field defaults < presets[preset] < the keys that are set; then
  `prepare`, then type conversion. `name` names the model in messages (default
  config.model.name, else the class name). Raises ValueError (ConfigError for an unknown key)
  naming the key, the bad preset or the missing fields.
  """
  fields = module_fields(module_cls)
  if defaults is None:
    defaults = config_defaults(module_cls, unset=True, **({"preset": None} if presets else {}))
  required = {k: None for k, f in fields.items() if not _has_default(f) and k not in defaults}
  model = name or config.get("name") or module_cls.__name__.lower()
  # Unknown keys are errors; a key set to None is "not set" and may belong to another model
  # (config_lib fills the keys of the model a config starts with; --config.model.name switches).
  opts = config_options.options(config, {**defaults, **required}, component=model, part="model")
  preset = opts.get("preset") if "preset" in defaults else None
  settings: dict[str, Any] = {}
  if preset is not None:
    if preset not in (presets or {}):
      raise ValueError(
          f"config.model.preset={preset!r} is not a {model} preset; "
          f"choose one of {sorted(presets or {})}."
      )
    settings.update(presets[preset])
  for key in (*defaults, *required):
    value = opts[key]
    if key == "preset":
      continue
    if key not in fields:
      settings[key] = value  # a non-field key: for `prepare`
    elif value is not None and not (key in defaults and _unchanged(value, defaults[key])):
      settings[key] = value
  if prepare is not None:
    settings = prepare(settings)
  extra = sorted(k for k in settings if k not in fields)
  if extra:
    raise TypeError(f"{module_cls.__name__} has no field(s) {extra} (a preset or `prepare`).")
  missing = [k for k, f in fields.items() if k not in settings and not _has_default(f)]
  if missing:
    raise ValueError(
        f"config.model is missing {missing} for the {module_cls.__name__} model; set them or "
        f"config.model.preset (one of {sorted(presets or {})})."
    )
  hints = _field_types(module_cls)
  out = {}
  for key, f in fields.items():
    if key not in settings:
      out[key] = _default(f)
    elif key == "dtype":
      out[key] = dtype_from_name(settings[key])
    else:
      out[key] = _coerce(key, hints[key], settings[key])
  return out


def create(
    module_cls: type[ModuleT],
    presets: Mapping[str, Mapping[str, Any]] | None,
    config,
    *,
    defaults: Mapping[str, Any] | None = None,
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    name: str | None = None,
) -> ModuleT:
  """module_cls built from config.model (see `resolve`), checked by its `check_config()`."""
  module = module_cls(
      **resolve(module_cls, presets, config, defaults=defaults, prepare=prepare, name=name)
  )
  check = getattr(module, "check_config", None)
  if check is not None:
    check()
  return module


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
