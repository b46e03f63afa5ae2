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


def pytest_collection_modifyitems(config, items):
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    skip = pytest.mark.skip(reason="PyTorch is not installed (pip install torch==2.13.0)")
    for item in items:
      if "torch" in item.keywords:
        item.add_marker(skip)
