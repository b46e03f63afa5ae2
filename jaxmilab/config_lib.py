"""Keys every experiment config shares, and their validation.

Every `configs/<exp>.py` builds on `base_config()` so the common keys have the
same names and meaning everywhere; `validate` fails early with the key's name.
"""

from __future__ import annotations

import ml_collections

COMMON_KEYS = ("seed", "total_steps", "batch_size", "log_every_steps", "eval_every_steps",
               "checkpoint_every_steps", "keep_checkpoints", "mesh", "model", "method", "data",
               "optimizer")
TIMING_KEYS = ("steps_per_sec", "uptime")  # written by ReportProgress; vary run to run


def base_config() -> ml_collections.ConfigDict:
  """The common keys with defaults; experiments fill in model / method / data / optimizer."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 8                     # global, over all processes
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, model=1,        # -1 = all remaining devices
      shard_params_over=("fsdp",),     # mesh axes that split parameters (ZeRO-3 / FSDP)
      min_shard_size=2**14,            # smaller arrays stay replicated
      num_devices=-1))                 # use the first N devices (-1 = all), e.g. to compare meshes
  c.model = ml_collections.ConfigDict()
  c.method = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict()
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",                    # adam | adamw | amsgrad | sgd
      learning_rate=1e-3,
      schedule="constant",             # constant | cosine | multistep
      warmup_steps=0,
      min_lr_ratio=0.0,                # cosine: final lr / peak lr
      decay_steps=(),                  # multistep: steps at which lr *= decay_factor
      decay_factor=0.5,
      weight_decay=0.0,
      b1=0.9, b2=0.999,                # adam*
      momentum=0.9, nesterov=True,     # sgd
      grad_clip_norm=0.0,              # 0 = off
      accumulate_steps=1,              # > 1: average that many micro-batch gradients per update
      lr_multipliers=()))              # ((regex over parameter paths, factor), ...)
  return c


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the key when a common key is missing or out of range."""
  missing = [k for k in COMMON_KEYS if k not in config]
  if missing:
    raise ValueError(f"config is missing the common key(s) {missing}; build configs on "
                     f"jaxmilab.config_lib.base_config().")
  for key in ("model", "method", "data"):
    if not config[key].get("name"):
      raise ValueError(f"config.{key}.name is not set; it selects jaxmilab/{key}s/<name>.py"
                       if key != "data" else "config.data.name is not set; it selects jaxmilab/data/<name>.py")
  for key in ("total_steps", "batch_size", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "keep_checkpoints"):
    if int(config[key]) < 1:
      raise ValueError(f"config.{key}={config[key]} must be >= 1.")


def load(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """Loads "path/to/config.py:variant" like `--config=` does, then applies dotted overrides.

  Relative paths are tried against the working directory, then the repository root.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, variant = spec.partition(":")
  candidates = [path, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)]
  found = next((p for p in candidates if os.path.isfile(p)), None)
  if found is None:
    raise FileNotFoundError(f"Config file {path!r} not found (looked in {candidates}); run from the "
                            f"repository root or pass an absolute path.")
  module_spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(found))}", found)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  config = ml_collections.ConfigDict(config)
  for key, value in (overrides or {}).items():
    parent = config
    *parents, leaf = key.split(".")
    for p in parents:
      if p not in parent:
        raise KeyError(f"Config override {key!r}: {p!r} is not a key of the config.")
      parent = parent[p]
    if leaf not in parent:
      raise KeyError(f"Config override {key!r}: {leaf!r} is not a key of the config.")
    parent[leaf] = value
  config.lock()
  return config
