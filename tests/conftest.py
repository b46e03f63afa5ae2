"""Test set-up: 8 fake CPU devices (set before JAX starts), shared helpers."""

from __future__ import annotations

import os
import sys

# Fake devices only here and in entry points, never inside the library (ARCHITECTURE.md).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

# Compile each distinct program once per test session, even across separate jit objects.
jax.config.update(
    "jax_compilation_cache_dir",
    os.path.join(os.environ.get("TMPDIR", "/tmp"), f"jaxmilab_test_cache_{os.getuid()}"),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def repo_root() -> str:
  return REPO


def _importable(module: str) -> bool:
  try:
    __import__(module)
  except ImportError:
    return False
  return True


def pytest_collection_modifyitems(config, items):
  del config
  if not _importable("torch"):
    skip = pytest.mark.skip(reason="PyTorch is not installed (pip install torch==2.13.0)")
    for item in items:
      if "torch" in item.keywords:
        item.add_marker(skip)
  # CI installs the [tpu] extra only for its slow step, so a libtpu test outside slow/manual
  # would be skipped on every CI run: refuse it at collection.
  for item in items:
    if "libtpu" in item.keywords and not {"slow", "manual"} & set(item.keywords):
      raise pytest.UsageError(
          f"{item.nodeid}: marked libtpu but neither slow nor manual; CI installs libtpu only for"
          " its slow step (.ci/run), so add @pytest.mark.slow"
      )
  if not _importable("libtpu"):
    skip = pytest.mark.skip(reason="libtpu is not installed (pip install -e '.[tpu]')")
    for item in items:
      if "libtpu" in item.keywords:
        item.add_marker(skip)
