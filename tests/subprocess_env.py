"""The environment of a child process that a test starts (an entry point run as a user would)."""

from __future__ import annotations

import os


def env(devices: int) -> dict[str, str]:
  """This process's environment with `devices` fake CPU devices (instead of conftest's 8) and
  gloo collectives. env(1) runs a README command as it runs on a CPU: one device, the same mesh
  and the same numbers as a user's run (test_quickstart_slow.py checks the main job's numbers)."""
  e = dict(os.environ)
  e.update(
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      JAX_PLATFORMS="cpu",
      JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
      TF_CPP_MIN_LOG_LEVEL="3",
  )
  return e
