"""The environment for a test that runs an entry point in a subprocess as a user would."""

from __future__ import annotations

import os


def one_device_env() -> dict[str, str]:
  """os.environ without conftest's 8 fake CPU devices: the subprocess sees one CPU device, as
  the README's commands do on a CPU (the same mesh and the same numbers as a user's run)."""
  flags = [
      f
      for f in os.environ.get("XLA_FLAGS", "").split()
      if not f.startswith("--xla_force_host_platform_device_count")
  ]
  return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
