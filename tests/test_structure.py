"""The shape of the package: import graph without circles, layers, registry tables, models.

Reads the source with `ast` (no jaxmilab module is imported for the graph), so it is fast and
sees imports inside functions too: a circle that only closes at call time is still a circle.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import subprocess
import sys

import pytest

from jaxmilab import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "jaxmilab")

# Circles still being removed by their owners: {frozenset(modules): who}. Empty when done.
KNOWN_CYCLES: dict[frozenset[str], str] = {}

# Package layers: models import only models, kernels and the leaf config_options (reading
# their keys); modules of the left side never import the packages on the right.
MODELS_MAY_IMPORT = ("jaxmilab.models", "jaxmilab.kernels", "jaxmilab.config_options")
FORBIDDEN = {
    "jaxmilab.kernels": (
        "jaxmilab.models",
        "jaxmilab.methods",
        "jaxmilab.data",
        "jaxmilab.trainer",
    ),
    "jaxmilab.data": ("jaxmilab.models", "jaxmilab.methods", "jaxmilab.trainer"),
    "jaxmilab.convert": ("jaxmilab.methods", "jaxmilab.data", "jaxmilab.trainer"),
    "jaxmilab.methods": ("jaxmilab.trainer", "jaxmilab.main", "jaxmilab.config_lib"),
}


def _modules() -> dict[str, str]:
  """{dotted module name: file} for every .py file under jaxmilab/."""
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        out[name.removesuffix(".__init__")] = path
  return out


MODULES = _modules()


def _imports(path: str) -> set[str]:
  """jaxmilab modules that `path` imports anywhere in the file (top level or in functions)."""
  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from a.b import c`: the module a.b.c if there is one, else a.b.
      names = [
          f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
          for a in node.names
      ]
    for name in names:
      while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
      if name in MODULES and name != "jaxmilab":
        found.add(name)
  return found


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
  """Components of more than one module (each holds at least one circle), Tarjan's algorithm."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  out = []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        comp.add(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(frozenset(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_finds_a_circle_and_none_in_a_chain():
  assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
  assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []
  # The graph reader sees function-level imports and `from package import module`.
  assert "jaxmilab.models.layers" in GRAPH["jaxmilab.models.nafnet"]
  assert "jaxmilab.registry" in GRAPH["jaxmilab.convert"]  # inside a function


def test_import_graph_has_no_circle():
  cycles = _strongly_connected(GRAPH)
  unexpected = [sorted(c) for c in cycles if c not in KNOWN_CYCLES]
  assert not unexpected, f"import circles: {unexpected}"
  stale = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
  assert not stale, f"KNOWN_CYCLES lists circles that are gone, remove them: {stale}"


def _inside(module: str, package: str) -> bool:
  return module == package or module.startswith(package + ".")


def test_layers_import_downwards_only():
  bad = [
      f"{m} -> {t}"
      for m, imported in GRAPH.items()
      if _inside(m, "jaxmilab.models")
      for t in sorted(imported)
      if not any(_inside(t, p) for p in MODELS_MAY_IMPORT)
  ]
  for module, imported in GRAPH.items():
    for layer, forbidden in FORBIDDEN.items():
      if _inside(module, layer):
        bad += [
            f"{module} -> {t}" for t in sorted(imported) if any(_inside(t, f) for f in forbidden)
        ]
  assert not bad, bad


def test_models_do_not_import_sibling_models():
  """Shared pieces live in layers / common / ushaped, never in another model's module."""
  components = {registry.module_name("models", n) for n in registry.MODELS}
  bad = [
      f"{m} -> {t}"
      for m, imported in GRAPH.items()
      if m.startswith("jaxmilab.models.")
      for t in sorted(imported & components)
  ]
  assert not bad, bad


def test_library_modules_do_not_import_torch():
  """PyTorch is a test-time reference only (tests/torch_reference): importing every library
  module (the command-line modules, which define absl flags, aside) loads no torch."""
  script = (
      "import importlib, sys\n"
      "for m in "
      f"{sorted(m for m, p in MODULES.items() if 'flags.DEFINE' not in open(p).read())!r}:\n"
      "  importlib.import_module(m)\n"
      "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))\n"
  )
  out = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


# ------------------------------------------------------------------------------- registry


def _defines_entry_point(path: str, kind: str) -> bool:
  """A top-level `create(config, ...)` (models, data) or `class Method` (methods)."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  for node in tree.body:
    if kind == "methods" and isinstance(node, ast.ClassDef) and node.name == "Method":
      return True
    if (
        kind != "methods"
        and isinstance(node, ast.FunctionDef)
        and node.name == "create"
        and node.args.args
        and node.args.args[0].arg == "config"
    ):
      return True
  return False


@pytest.mark.parametrize("kind", sorted(registry.TABLES))
def test_every_component_module_is_in_its_table(kind):
  package = f"jaxmilab.{kind}"
  listed = {registry.module_name(kind, n) for n in registry.TABLES[kind]}
  defining = {
      m
      for m, p in MODULES.items()
      if m.startswith(package + ".") and m != f"{package}.base" and _defines_entry_point(p, kind)
  }
  assert defining - listed == set(), f"add them to registry.{kind.upper()}"
  assert listed - set(MODULES) == set(), "table entries without a module"


@pytest.mark.parametrize(
    "kind,name", [(k, n) for k, t in sorted(registry.TABLES.items()) for n in sorted(t)]
)
def test_every_table_entry_imports_and_has_its_entry_point(kind, name):
  module = registry.module(kind, name)
  assert module.__name__ == registry.module_name(kind, name)
  getters = {
      "models": registry.get_model,
      "methods": registry.get_method,
      "data": registry.get_data,
  }
  entry = getters[kind](name)
  assert callable(entry)
  if kind == "methods":
    from jaxmilab.methods import base  # pylint: disable=g-import-not-at-top

    assert issubclass(entry, base.Method), name


def test_only_components_resolve_and_errors_list_the_names():
  assert registry.available("models") == sorted(registry.MODELS)
  assert "nafnet" in registry.available("models") and "dcpt" in registry.available("methods")
  for kind, helper in (
      ("models", "layers"),
      ("models", "common"),
      ("data", "transforms"),
      ("methods", "restoration_common"),
      ("methods", "base"),
  ):
    with pytest.raises(ValueError, match=r"Unknown .*Available: .*"):
      registry.module(kind, helper)
  with pytest.raises(ValueError, match="Unknown registry kind"):
    registry.available("optimizers")
  assert registry.get_model("nafnet") is importlib.import_module("jaxmilab.models.nafnet").create


# ---------------------------------------------------------------------------------- models


def test_model_config_keys_are_the_module_fields():
  """One schema per model: the dataclass fields; CONFIG_DEFAULTS lists exactly them."""
  for name in ("nafnet", "restormer", "promptir", "swinir", "teaformer"):
    module = registry.module("models", name)
    model = module.create({"preset": sorted(module.PRESETS)[0]})
    fields = {f.name for f in dataclasses.fields(model)} - {"parent", "name"}
    assert set(module.CONFIG_DEFAULTS) == fields | {"preset"}, name
