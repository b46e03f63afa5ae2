"""The platform a program is traced for, which is not always the one it runs on.

`jaxmilab.compile` traces on a CPU host for a TPU topology, so `jax.default_backend()` answers
'cpu' while the program is for 'tpu'. Everything that picks a form by platform (the CPU forms of
convolutions in `models/layers.py`, TEA attention's Pallas kernel and its Mosaic / Triton
conventions, TEAFormer's "auto" implementation) asks `trace_platform()` instead: an explicit
`for_platform(...)` context first, then the devices of the mesh set with `jax.set_mesh` (a TPU
topology's during AOT compilation), then jax's default backend. A leaf module: models and
kernels import it, it imports neither.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import jax

ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")

_PLATFORM: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jaxmilab_platform", default=None
)


@contextlib.contextmanager
def for_platform(platform: str | None) -> Iterator[None]:
  """Within this context, programs trace for `platform` ('cpu', 'tpu', 'cuda', ...).

  For lowering on another platform than the one traced on (`.lower(lowering_platforms=...)`);
  any name other than 'cpu' (e.g. 'generic') gives the forms TPU and GPU get, which is how
  benchmarks/train_step times the CPU program "before". None restores the default.
  Note: jit caches traces by function, not by this context; use a fresh jit per platform.
  """
  token = _PLATFORM.set(platform)
  try:
    yield
  finally:
    _PLATFORM.reset(token)


def trace_platform() -> str:
  """The platform the program being traced is for: `for_platform`'s, else the platform of the
  mesh set with `jax.set_mesh` (a TPU topology's in jaxmilab.compile), else jax's default."""
  platform = _PLATFORM.get()
  if platform is not None:
    return platform
  mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None)
  if not mesh.empty and device is not None and getattr(device, "platform", None):
    return str(device.platform)
  return jax.default_backend()


def on_accelerator() -> bool:
  """Whether the program being traced is for a GPU or TPU (`trace_platform`)."""
  return trace_platform() in ACCELERATORS
