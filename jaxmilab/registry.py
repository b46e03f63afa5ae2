"""Name -> object lookup: configs pick models, methods and datasets by string.

Following big_vision, a name is resolved by importing a module of the package by
name, so adding a method is adding a file; nothing has to be registered by hand.
"""

from __future__ import annotations

import importlib
from typing import Any

_KINDS = {
    "methods": "jaxmilab.methods",
    "models": "jaxmilab.models",
    "data": "jaxmilab.data",
}


def _import(kind: str, name: str) -> Any:
  if kind not in _KINDS:
    raise ValueError(f"Unknown registry kind {kind!r}; expected one of {sorted(_KINDS)}.")
  module_name = f"{_KINDS[kind]}.{name}"
  try:
    return importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise  # A real missing dependency inside the module: do not mask it.
    known = available(kind)
    raise ValueError(
        f"Unknown {kind[:-1] if kind != 'data' else 'dataset'} {name!r}: there is no module "
        f"{module_name}. Available: {', '.join(known)}.") from None


def available(kind: str) -> list[str]:
  """Names that the registry accepts for `kind` (modules defining `Method` / `create`)."""
  import ast  # pylint: disable=g-import-not-at-top
  import pkgutil  # pylint: disable=g-import-not-at-top
  package = importlib.import_module(_KINDS[kind])
  wanted = "Method" if kind == "methods" else "create"
  names = []
  for m in pkgutil.iter_modules(package.__path__):
    if m.name.startswith("_") or m.name in ("base", "common"):
      continue
    path = f"{package.__path__[0]}/{m.name}.py"
    try:
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    except OSError:
      continue
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    if wanted in defined:
      names.append(m.name)
  return sorted(names)


def module(kind: str, name: str):
  """The module that `name` selects for `kind` ("models", "methods" or "data")."""
  return _import(kind, name)


def get_method(name: str):
  """The `Method` subclass defined in `jaxmilab/methods/<name>.py` as `Method`."""
  return _import("methods", name).Method


def get_model(name: str):
  """`jaxmilab/models/<name>.py` exposes `create(config) -> nn.Module`."""
  return _import("models", name).create


def get_data(name: str):
  """`jaxmilab/data/<name>.py` exposes `create(config, *, batch_size, seed, process_index,
  process_count) -> jaxmilab.data.base.Datasets`."""
  return _import("data", name).create
