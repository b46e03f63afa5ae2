"""Experiment configs: the keys every config shares, loading, overrides and validation.

Every `configs/<exp>.py` builds on `base_config()` so the common keys have the same names
and meaning everywhere. A config is named in one of two forms:

* `configs/<exp>.py:<variant>` — a file path (from a checkout: the repository root);
* `jaxmilab:<exp>:<variant>` — the installed package `jaxmilab.configs` (from anywhere:
  a wheel, Colab, a TPU VM).

`load` then completes the config from its components' declared defaults (the module named
by `config.model.name` / `method.name` / `data.name` may define `CONFIG_DEFAULTS`, a dict
of key -> default), so every key a component reads can
be overridden on every variant; applies `--config.<key>=<value>` overrides with one-line
errors (unknown key with the closest known ones, wrong type, impossible value); and locks.
Components read their keys through `options(config.<part>, CONFIG_DEFAULTS)` (defined in the
leaf module `jaxmilab.config_options`), so each default is written once, in the declaration.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
from typing import Any, Mapping

import ml_collections

# The reading helper lives in a leaf module every layer may import; re-exported here.
from jaxmilab import optimizers
from jaxmilab.config_options import ConfigError, Options, options  # noqa: F401  (re-exported)

COMMON_KEYS = (
    "seed",
    "total_steps",
    "batch_size",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "mesh",
    "model",
    "method",
    "data",
    "optimizer",
)
# Vary run to run: ReportProgress's, and the trainer's throughput / timing scalars.
TIMING_KEYS = ("steps_per_sec", "uptime", "images_per_sec", "mfu", "eval_seconds")
OPTIMIZERS = ("adam", "adamw", "amsgrad", "sgd")
SCHEDULES = ("constant", "cosine", "multistep")
PACKAGE_PREFIX = "jaxmilab:"
_PARTS = {"model": "models", "method": "methods", "data": "data"}
# config.mesh, read by jaxmilab.sharding through `options(config.mesh, MESH_DEFAULTS)`.
MESH_DEFAULTS = dict(
    data=-1,
    fsdp=1,
    model=1,  # -1 = all remaining devices
    shard_params_over=("fsdp",),  # mesh axes that split parameters (ZeRO-3 / FSDP)
    tensor_parallel=(),  # ((regex over parameter paths, dim), ...) split over "model"
    min_shard_size=2**14,  # smaller arrays stay replicated
    num_devices=-1,  # use the first N devices (-1 = all), e.g. to compare meshes
    params_over_dcn=False,
)  # allow shard_params_over axes that cross TPU slices (sharding.py)
# config.optimizer: declared once, by jaxmilab.optimizers (the module that reads it).
OPTIMIZER_DEFAULTS = optimizers.CONFIG_DEFAULTS


def base_config() -> ml_collections.ConfigDict:
  """The common keys with defaults; experiments fill in model / method / data / optimizer."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 8  # global, over all processes
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.checkpoint_every_minutes = 0.0  # > 0: also checkpoint at the first log step this long after
  # the last checkpoint (0 = steps only)
  c.keep_checkpoints = 3
  c.prefetch_batches = 2  # train steps of input read and put on device ahead (0 = none)
  c.ema_decay = 0.0  # EMA of parameters (evaluated, saved as params_ema); 0 = off
  c.profile_steps = ()  # (first, last) step of a profiler trace in DIR/profile
  c.mesh = ml_collections.ConfigDict(MESH_DEFAULTS)
  c.model = ml_collections.ConfigDict()
  c.method = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()
  c.optimizer = ml_collections.ConfigDict(OPTIMIZER_DEFAULTS)
  return c


# ----------------------------------------------------------------------------- finding configs


def configs_dir() -> str:
  """The folder of the installed `jaxmilab.configs` package (the repository's configs/)."""
  package = importlib.import_module("jaxmilab.configs")
  return list(package.__path__)[0]


def variants_of(exp: str) -> tuple[str, ...]:
  """The `VARIANTS` tuple that configs/<exp>.py declares (() if none)."""
  return tuple(getattr(importlib.import_module(f"jaxmilab.configs.{exp}"), "VARIANTS", ()))


def available_configs() -> dict[str, tuple[str, ...]]:
  """{experiment: its variants} for every config file of the package."""
  return {
      name[:-3]: variants_of(name[:-3])
      for name in sorted(os.listdir(configs_dir()))
      if name.endswith(".py") and not name.startswith("_")
  }


def describe_configs() -> str:
  """One line per experiment, for --help."""
  return "\n".join(
      f"  {exp}: {', '.join(v) if v else '(see the file)'}"
      for exp, v in available_configs().items()
  )


def resolve(spec: str) -> tuple[str, str]:
  """ "configs/x.py:variant" or "jaxmilab:x:variant" -> (file path, variant)."""
  if spec.startswith(PACKAGE_PREFIX):
    exp, _, variant = spec[len(PACKAGE_PREFIX) :].partition(":")
    path = os.path.join(configs_dir(), f"{exp}.py")
    if not exp or not os.path.isfile(path):
      raise ConfigError(
          f"Unknown config {spec!r}: no experiment {exp!r}; available: "
          f"{', '.join(available_configs())} (e.g. jaxmilab:maskdcpt:quickstart)."
      )
    return path, variant
  path, _, variant = spec.partition(":")
  if os.path.isfile(path):
    return path, variant
  # A checkout-relative path such as configs/dcpt.py also resolves from any working directory.
  if os.path.dirname(os.path.normpath(path)) == "configs":
    packaged = os.path.join(configs_dir(), os.path.basename(path))
    if os.path.isfile(packaged):
      return packaged, variant
  raise ConfigError(
      f"Config file {path!r} not found; pass configs/<exp>.py:<variant> from the "
      f"repository root or jaxmilab:<exp>:<variant> from anywhere (experiments: "
      f"{', '.join(available_configs())})."
  )


def _run_config_file(path: str, variant: str) -> ml_collections.ConfigDict:
  """Runs `get_config(variant)` of a config file (as jaxmilab.configs.<exp> when it is one)."""
  if os.path.dirname(os.path.abspath(path)) == os.path.abspath(configs_dir()):
    module = importlib.import_module(f"jaxmilab.configs.{os.path.basename(path)[:-3]}")
  else:
    module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  declared = getattr(module, "VARIANTS", ())
  if variant and declared and variant not in declared:
    raise ConfigError(
        f"{path} has no variant {variant!r}; variants: {', '.join(declared)}"
        + _did_you_mean(variant, declared)
    )
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except (KeyError, ValueError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{path}:{variant}: {e}") from e
  return ml_collections.ConfigDict(config)


# ------------------------------------------------------------------------- component defaults


def component_defaults(part: str, part_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The declared defaults of the component that `config.<part>.name` selects ({} if none)."""
  from jaxmilab import registry  # pylint: disable=g-import-not-at-top

  name = part_config.get("name")
  if not name:
    return {}
  try:
    module = registry.module(_PARTS[part], name)
  except ValueError as e:
    raise ConfigError(f"config.{part}.name={name!r}: {e}") from None
  return dict(getattr(module, "CONFIG_DEFAULTS", {}))


def fill_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds every declared component key the config does not set yet (in place; returns it)."""
  for part in _PARTS:
    if part not in config:
      continue
    for key, value in component_defaults(part, config[part]).items():
      if key not in config[part]:
        config[part][key] = value
  return config


# --------------------------------------------------------------------------------- overrides


def _all_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, (ml_collections.ConfigDict, dict)):
      keys.extend(_all_keys(v, f"{prefix}{k}."))
  return keys


def _did_you_mean(word: str, candidates) -> str:
  close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.5)
  return f"; did you mean {' or '.join(close)}?" if close else ""


def _suggest_key(key: str, config: Mapping[str, Any]) -> str:
  """ "; did you mean config.<k>?" for the known keys closest to the unknown dotted `key`.

  Siblings of the unknown leaf come first, matched by spelling, prefix or initials
  ("lr" -> "learning_rate"); otherwise the closest full keys.
  """
  *parents, leaf = key.split(".")
  group = config
  for p in parents:
    group = group.get(p) if isinstance(group, (ml_collections.ConfigDict, dict)) else None
  if isinstance(group, (ml_collections.ConfigDict, dict)):

    def score(k):
      initials = "".join(w[0] for w in k.split("_") if w)
      if len(leaf) >= 2 and leaf.lower() == initials:
        return 1.0
      if len(leaf) >= 2 and k.startswith(leaf):
        return 0.9
      return difflib.SequenceMatcher(None, leaf, k).ratio()

    ranked = sorted(((score(k), k) for k in group.keys()), reverse=True)
    close = [k for sc, k in ranked if sc >= 0.6][:3]
    if close:
      prefix = "config." + ".".join(parents) + "." if parents else "config."
      return f"; did you mean {' or '.join(prefix + k for k in close)}?"
  return _did_you_mean("config." + key, ["config." + k for k in _all_keys(config)])


def parse_value(raw: str, current: Any, key: str) -> Any:
  """Parses a command-line string as the type of the key's current value."""

  def bad(kind):
    return ConfigError(f"--config.{key}={raw!r} is not {kind} (config.{key} is {current!r}).")

  if isinstance(current, bool):
    low = raw.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise bad("a boolean (true/false)")
  if isinstance(current, int):
    try:
      return int(raw)
    except ValueError:
      try:
        value = float(raw)
      except ValueError:
        raise bad("an integer") from None
      if value.is_integer():
        return int(value)
      raise bad("an integer") from None
  if isinstance(current, float):
    try:
      return float(raw)
    except ValueError:
      raise bad("a number") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = tuple(s.strip() for s in raw.split(",") if s.strip())
    if not isinstance(value, (tuple, list)):
      value = (value,)
    return tuple(value)
  if isinstance(current, str):
    return raw
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(
        f"config.{key} is a group of keys ({', '.join(sorted(current.keys()))}); "
        f"set one of them, e.g. --config.{key}.{sorted(current.keys())[0]}=..."
    )
  # None or another type: a Python literal if it is one, else the string.
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def apply_override(
    config: ml_collections.ConfigDict, key: str, value: Any, from_string: bool = False
) -> None:
  """Sets a dotted `key`; ConfigError naming the key (and the closest known ones) if it fails."""
  parent = config
  *parents, leaf = key.split(".")
  for i, p in enumerate(parents):
    if not isinstance(parent, (ml_collections.ConfigDict, dict)) or p not in parent:
      where = ".".join(parents[: i + 1])
      raise ConfigError(f"Unknown config key config.{where}" + _suggest_key(where, config))
    parent = parent[p]
  if leaf not in parent:
    raise ConfigError(f"Unknown config key config.{key}" + _suggest_key(key, config))
  current = parent[leaf]
  if from_string:
    value = parse_value(value, current, key)
  try:
    parent[leaf] = value
  except TypeError as e:
    raise ConfigError(
        f"--config.{key}={value!r}: wrong type ({e}); config.{key} is " f"{current!r}."
    ) from None


# -------------------------------------------------------------------------------- validation


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the key when a common key is missing or out of range."""
  missing = [k for k in COMMON_KEYS if k not in config]
  if missing:
    raise ConfigError(
        f"config is missing the common key(s) {missing}; build configs on "
        f"jaxmilab.config_lib.base_config()."
    )
  for key in _PARTS:
    if not config[key].get("name"):
      raise ConfigError(
          f"config.{key}.name is not set; it selects a module of " f"jaxmilab/{_PARTS[key]}/."
      )
  for key in (
      "total_steps",
      "batch_size",
      "log_every_steps",
      "eval_every_steps",
      "checkpoint_every_steps",
      "keep_checkpoints",
  ):
    if int(config[key]) < 1:
      raise ConfigError(f"config.{key}={config[key]} must be >= 1.")
  for key in ("checkpoint_every_minutes", "prefetch_batches"):
    if key in config and not float(config[key]) >= 0:
      raise ConfigError(f"config.{key}={config[key]} must be >= 0 (0 = off).")
  opt = options(config.optimizer, OPTIMIZER_DEFAULTS, part="optimizer")
  if opt.name not in OPTIMIZERS:
    raise ConfigError(
        f"config.optimizer.name={opt.name!r} is not one of {', '.join(OPTIMIZERS)}"
        + _did_you_mean(str(opt.name), OPTIMIZERS)
    )
  if opt.schedule not in SCHEDULES:
    raise ConfigError(
        f"config.optimizer.schedule={opt.schedule!r} is not one of "
        f"{', '.join(SCHEDULES)}" + _did_you_mean(str(opt.schedule), SCHEDULES)
    )
  if not float(opt.learning_rate) > 0:
    raise ConfigError(f"config.optimizer.learning_rate={opt.learning_rate} must be > 0.")
  if int(opt.accumulate_steps) < 1:
    raise ConfigError(f"config.optimizer.accumulate_steps={opt.accumulate_steps} must be >= 1.")
  mesh = options(config.mesh, MESH_DEFAULTS, component="mesh", part="mesh")
  for axis in ("data", "fsdp", "model"):
    size = int(mesh[axis])
    if size == 0 or size < -1:
      raise ConfigError(f"config.mesh.{axis}={size} must be >= 1, or -1 for all remaining devices.")


def load(
    spec: str, overrides: Mapping[str, Any] | None = None, *, string_values: bool = False
) -> ml_collections.ConfigDict:
  """Loads "configs/<exp>.py:<variant>" or "jaxmilab:<exp>:<variant>", applies dotted overrides.

  With `string_values=True` the override values are command-line strings parsed as the type
  of each key. Returns the validated, locked config; ConfigError (one line) on any mistake.
  """
  path, variant = resolve(spec)
  config = _run_config_file(path, variant)
  fill_defaults(config)
  for key, value in (overrides or {}).items():
    apply_override(config, key, value, from_string=string_values)
    if key.split(".")[-1] == "name" and key.split(".")[0] in _PARTS:
      fill_defaults(config)  # A new component brings its own keys.
  validate(config)
  config.lock()
  return config
