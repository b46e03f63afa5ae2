"""Reading one component's config keys through its declared defaults (a leaf module).

A component (model, method, dataset, the mesh) declares its keys once, as a dict of key ->
default (`CONFIG_DEFAULTS`); `jaxmilab.config_lib` adds those keys to every config that selects
the component, and the component reads them through `options`:

```python
CONFIG_DEFAULTS = dict(mask_ratio=0.5, loss="l1")

opts = config_options.options(config.method, CONFIG_DEFAULTS, component="maskdcpt")
opts.mask_ratio      # the config's value if set, else 0.5
opts.mask_ratoi      # AttributeError naming the key and the component (a typo in the code)
```

so each default is written exactly once, and a key set in the config that the component does
not declare is a `ConfigError` naming it and the allowed keys. This module imports nothing
from jaxmilab, so every layer (models, methods, data) may use it; `jaxmilab.config_lib`
re-exports `ConfigError`, `Options` and `options`.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Iterator, Mapping


class ConfigError(ValueError):
  """A wrong config name, key, type or value; the message is one line meant for the user."""


class Options(Mapping[str, Any]):
  """A read-only view of one component's config keys, by item (`o["k"]`) or attribute (`o.k`).

  Holds every declared key (the config's value if set, else the declared default), the
  required keys and, when set, `name`. Reading a key the component did not declare is an
  error naming the key and the component (KeyError by item, AttributeError by attribute), and
  so is `get` of such a key: a default written at the read would be a second source.
  """

  __slots__ = ("_values", "_where")

  def __init__(self, values: Mapping[str, Any], where: str):
    object.__setattr__(self, "_values", dict(values))
    object.__setattr__(self, "_where", where)

  def _undeclared(self, key: str) -> str:
    return (
        f"{self._where} has no key {key!r}: it is not declared in the component's "
        f"CONFIG_DEFAULTS (declared: {', '.join(sorted(self._values))})"
        + _did_you_mean(key, self._values)
    )

  def __getitem__(self, key: str) -> Any:
    try:
      return self._values[key]
    except KeyError:
      raise KeyError(self._undeclared(key)) from None

  def __getattr__(self, key: str) -> Any:
    if key.startswith("__") or key in Options.__slots__:  # probes before __init__ ran.
      raise AttributeError(key)
    try:
      return self._values[key]
    except KeyError:
      raise AttributeError(self._undeclared(key)) from None

  def __setattr__(self, key: str, value: Any) -> None:
    raise TypeError(f"{self._where} options are read-only (tried to set {key!r}).")

  def get(self, key: str, default: Any = None) -> Any:
    """The value of a declared key (KeyError for an undeclared one; `default` is unused).

    Kept for Mapping compatibility; an undeclared key is an error, not `default`.
    """
    del default
    return self[key]

  def __reduce__(self):
    return Options, (self._values, self._where)

  def __iter__(self) -> Iterator[str]:
    return iter(self._values)

  def __len__(self) -> int:
    return len(self._values)

  def __repr__(self) -> str:
    return f"Options({self._where}: {self._values!r})"


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
  close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
  return f"; did you mean {' or '.join(close)}?" if close else ""


def options(
    part_config: Mapping[str, Any] | None,
    defaults: Mapping[str, Any],
    *,
    component: str | None = None,
    part: str = "method",
    required: Iterable[str] = (),
) -> Options:
  """The declared keys of one component, read from its part of the config.

  Args:
    part_config: the component's part of the config (`config.method`, `config.model`, ...; a
      ConfigDict or any mapping; None = empty).
    defaults: key -> default, the component's one declaration of its optional keys.
    component: the component's name in messages (default: `part_config["name"]`).
    part: the config part in messages ("method" -> "config.method.<key>").
    required: keys without a default; each must be set in `part_config`.

  Returns:
    Options with every key of `defaults` (the config's value if the key is set and not None,
    else the default), every required key, and `name` if set.

  Raises:
    ConfigError: naming the keys, when `part_config` sets a key (to a value other than None)
      that is neither `name`, a declared default nor a required key (with the allowed keys),
      or lacks a required key.
  """
  # A key set to None is "not set" (jaxmilab.models.common.resolve's rule): it takes the
  # declared default, and an undeclared one may be left by the component a config started
  # with (--config.<part>.name switches components; config_lib fills the first one's keys).
  part_config = {} if part_config is None else part_config
  given = {k: part_config[k] for k in part_config.keys() if part_config[k] is not None}
  component = component or given.get("name") or "?"
  where = f"config.{part} of {component!r}"
  required = tuple(required)
  allowed = ("name", *defaults, *(k for k in required if k not in defaults))
  unknown = sorted(k for k in given if k not in allowed)
  if unknown:
    hints = "".join(_did_you_mean(k, allowed) for k in unknown)
    raise ConfigError(
        f"config.{part}: unknown key(s) {unknown} for {component!r}; allowed keys: "
        f"{', '.join(allowed)}{hints}"
    )
  missing = [k for k in required if k not in given]
  if missing:
    raise ConfigError(
        f"config.{part}.{missing[0]} is required by {component!r} (missing: "
        f"{', '.join(f'config.{part}.{k}' for k in missing)}); it has no default."
    )
  values = {k: given.get(k, v) for k, v in defaults.items()}
  values.update({k: given[k] for k in required})
  if "name" in given:
    values["name"] = given["name"]
  return Options(values, where)
