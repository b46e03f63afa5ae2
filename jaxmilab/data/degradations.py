"""The registry of synthesized degradations: name -> fn(image, rng, level=None), levels, task sets.

Three families, each a leaf module, are registered here explicitly (no import side effects):
`jaxmilab.data.basic_degradations` (gaussian_noise, gaussian_blur, jpeg, haze, low_light; the
"5syn" set) and `jaxmilab.data.uir_degradations` (the other UIR-2.5M types of MaskDCPT, the
real-only `real_noise`, and the task sets "5d", "10d", "12d", "12d_syn", "uir19", "uir19_syn").
Every registered name has a tuple of discrete levels (`LEVELS[name]`, `level_key`,
`level_from_key`): eval and the offline builder pick one explicitly, e.g.
`apply("gaussian_noise", x, rng, level=25)`. With `level=None` the five basic types keep their
continuous default ranges; the UIR types draw one of their levels uniformly. The label of a
degraded sample is the index of its type in the task set (DCPT, ICLR 2025).
The basic functions are re-exported here (degradations.haze, degradations.jpeg, ...).

The third family, `jaxmilab.data.noise` (OPD's noise models: awgn, poisson, bernoulli, impulse,
text, mixed; float, NOT clipped, continuous named parameters instead of levels), is registered
in its own table of this registry: `apply_noise(name, image, rng, params)`.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxmilab.data import basic_degradations as _basic
from jaxmilab.data import noise as _noise
from jaxmilab.data import uir_degradations as _uir

# Re-exported: the basic family's functions, helpers and constants.
from jaxmilab.data.basic_degradations import *  # noqa: F401,F403  pylint: disable=wildcard-import
from jaxmilab.data.basic_degradations import Haze  # noqa: F401
from jaxmilab.evaluation.restoration import to_uint8  # noqa: F401

Degradation = Callable[..., np.ndarray]

# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Degradation] = {}
_LEVELS: dict[str, tuple[Any, ...]] = {}
# Types that exist only as real paired data (no synthetic counterpart): name -> sources.
_REAL_ONLY: dict[str, str] = {}

DEGRADATIONS: Mapping[str, Degradation] = types.MappingProxyType(_REGISTRY)
LEVELS: Mapping[str, tuple[Any, ...]] = types.MappingProxyType(_LEVELS)
REAL_ONLY: Mapping[str, str] = types.MappingProxyType(_REAL_ONLY)

# Named, ordered task sets: the label of a sample is the index of its type here
# (the UIR ones, e.g. "5d", "10d", "12d", "uir19", come from uir_degradations.TASK_SETS).
_TASK_SETS: dict[str, tuple[str, ...]] = {
    "5syn": ("gaussian_noise", "gaussian_blur", "jpeg", "haze", "low_light"),
}
TASK_SETS: Mapping[str, tuple[str, ...]] = types.MappingProxyType(_TASK_SETS)
# Task set -> {type: levels used by that set}; a type missing here uses all of LEVELS[type].
_TASK_LEVELS: dict[str, dict[str, tuple[Any, ...]]] = {}
TASK_LEVELS: Mapping[str, Mapping[str, tuple[Any, ...]]] = types.MappingProxyType(_TASK_LEVELS)


def register(name: str, fn: Degradation, levels: Sequence[Any]) -> None:
  """Adds degradation `name` (fn(image, rng, level=None)) with its discrete levels."""
  if name in _REGISTRY or name in _REAL_ONLY:
    raise ValueError(f"Degradation {name!r} is already registered.")
  levels = tuple(levels)
  keys = [level_key(v) for v in levels]
  if not levels or len(set(keys)) != len(keys):
    raise ValueError(f"Degradation {name!r}: levels must be non-empty and distinct, got {levels}.")
  _REGISTRY[name] = fn
  _LEVELS[name] = levels


def register_real_only(name: str, sources: str) -> None:
  """Declares a type that only real paired data provides (no synthesis)."""
  if name in _REGISTRY or name in _REAL_ONLY:
    raise ValueError(f"Degradation {name!r} is already registered.")
  _REAL_ONLY[name] = sources


def register_task_set(
    name: str, type_names: Sequence[str], levels: Mapping[str, Sequence[Any]] | None = None
) -> None:
  """Adds a named task set (label = index) and optional per-type level restrictions."""
  if name in _TASK_SETS:
    raise ValueError(f"Task set {name!r} is already registered.")
  _TASK_SETS[name] = tuple(type_names)
  _TASK_LEVELS[name] = {k: tuple(v) for k, v in (levels or {}).items()}


def level_key(level: Any) -> str:
  """A short readable id of a level, unique per type: 25 -> "25",
  ("gaussian_noise", 25) -> "gaussian_noise/25"."""
  if isinstance(level, (tuple, list)):
    return "/".join(level_key(v) for v in level)
  if isinstance(level, float):
    return f"{level:g}"
  return str(level)


def level_from_key(name: str, key: str) -> Any:
  """The level of degradation `name` whose `level_key` is `key` (ValueError listing the valid
  keys)."""
  levels = get_levels(name)
  for level in levels:
    if level_key(level) == str(key):
      return level
  raise ValueError(
      f"Degradation {name!r} has no level {key!r}. Levels: "
      f"{', '.join(level_key(v) for v in levels)}."
  )


def get_levels(name: str) -> tuple[Any, ...]:
  """The discrete levels of degradation `name`."""
  get(name)
  return _LEVELS[name]


def task_levels(task_set: str, name: str) -> tuple[Any, ...]:
  """Levels that task set `task_set` uses for type `name` (all levels unless restricted)."""
  return _TASK_LEVELS.get(task_set, {}).get(name, get_levels(name))


def get(name: str) -> Degradation:
  """The degradation function called `name`."""
  try:
    return DEGRADATIONS[name]
  except KeyError:
    if name in REAL_ONLY:
      raise ValueError(
          f"Degradation {name!r} has no synthetic counterpart: it comes only from real "
          f"paired data ({REAL_ONLY[name]}). Read it with jaxmilab.data.paired_folders "
          f"or the uir2p5m tfds builder."
      ) from None
    raise ValueError(
        f"Unknown degradation {name!r}. Available: {', '.join(DEGRADATIONS)}."
    ) from None


def resolve(spec: Any, key: str = "config.data.degradations") -> tuple[str, ...]:
  """A task-set name ("5syn") or a sequence of degradation names -> validated tuple of names."""
  if isinstance(spec, str):
    spec = TASK_SETS.get(spec, (spec,))
  names = tuple(spec)
  real = [n for n in names if n in REAL_ONLY]
  if real:
    raise ValueError(
        f"{key}={names!r} holds real-only types {real} (no synthetic counterpart: "
        f"{'; '.join(f'{n}: {REAL_ONLY[n]}' for n in real)}). Use a synthetic task set "
        f"({', '.join(n for n, t in TASK_SETS.items() if not set(t) & set(REAL_ONLY))}) "
        f"or read the real pairs with jaxmilab.data.paired_folders."
    )
  unknown = [n for n in names if n not in DEGRADATIONS]
  if unknown or not names:
    raise ValueError(
        f"{key}={names!r}: unknown or empty degradation names {unknown}. Use a task set "
        f"({', '.join(TASK_SETS)}) or names from: {', '.join(DEGRADATIONS)}."
    )
  if len(set(names)) != len(names):
    raise ValueError(f"{key}={names!r} repeats a name; each type must appear once (label = index).")
  return names


def apply(name: str, image: np.ndarray, rng: np.random.Generator, level: Any = None) -> np.ndarray:
  """Applies degradation `name` to `image` with `rng`."""
  return get(name)(image, rng, level)


# ------------------------------------------------------------------ noise models (OPD)

_NOISE: dict[str, Degradation] = {}
_NOISE_PARAMS: dict[str, tuple[str, ...]] = {}
_NOISE_PIXELWISE: set[str] = set()
NOISE_MODELS: Mapping[str, Degradation] = types.MappingProxyType(_NOISE)


def register_noise_model(
    name: str, fn: Degradation, params: Sequence[str], pixelwise: bool
) -> None:
  """Adds noise model `name` (fn(image, rng, **params), unclipped) with its parameter names."""
  if name in _NOISE:
    raise ValueError(f"Noise model {name!r} is already registered.")
  _NOISE[name], _NOISE_PARAMS[name] = fn, tuple(params)
  if pixelwise:
    _NOISE_PIXELWISE.add(name)


def noise_model(name: str) -> Degradation:
  """The noise model called `name` (config.data.noise)."""
  try:
    return _NOISE[name]
  except KeyError:
    raise ValueError(
        f"Unknown noise model {name!r} (config.data.noise). Available: " f"{', '.join(_NOISE)}."
    ) from None


def is_pixelwise(name: str) -> bool:
  """Whether noise `name` is independent per pixel (may be synthesized tile by tile)."""
  noise_model(name)
  return name in _NOISE_PIXELWISE


def check_noise_params(
    name: str, params: Mapping[str, Any] | None, key: str = "config.data.noise_params"
) -> dict[str, Any]:
  """Validates the parameter names of noise `name`; returns them as a plain dict."""
  noise_model(name)
  params = dict(params or {})
  unknown = sorted(set(params) - set(_NOISE_PARAMS[name]))
  if unknown:
    raise ValueError(
        f"{key}: unknown parameter(s) {unknown} for noise {name!r}; it takes "
        f"{list(_NOISE_PARAMS[name])}."
    )
  return params


def apply_noise(
    name: str, image: np.ndarray, rng: np.random.Generator, params: Mapping[str, Any] | None = None
) -> np.ndarray:
  """Applies noise model `name` with `params` to a float [H, W, C] image in [0, 1] (unclipped)."""
  return noise_model(name)(image, rng, **check_noise_params(name, params))


def _register_all() -> None:
  """Registers the families explicitly: the five basic types, the UIR-2.5M ones, OPD's noise."""
  for name, fn, levels in _basic.TYPES + _uir.TYPES:
    register(name, fn, levels)
  for name, sources in _uir.REAL_ONLY_TYPES:
    register_real_only(name, sources)
  for name, type_names, levels in _uir.TASK_SETS:
    register_task_set(name, type_names, levels)
  for name, fn, params, pixelwise in _noise.TYPES:
    register_noise_model(name, fn, params, pixelwise)


_register_all()
