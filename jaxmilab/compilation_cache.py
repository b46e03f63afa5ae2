"""Persistent XLA compilation cache: a restart of the same run loads its programs, not compiles
them.

JAX's persistent cache (`jax_compilation_cache_dir`) keys each executable by the program, the
devices and the compiler options, so a second start of the same config on the same kind of
slice finds its train step there (the pod step took 1,244 s to compile on a 2-core machine) and
a changed config simply misses. Where the cache lives (`setup`):

1. `$JAXMILAB_COMPILATION_CACHE`: a directory (local or gs://), or "off";
2. else a directory already set for JAX (`JAX_COMPILATION_CACHE_DIR`, or jax.config);
3. else, for a gs:// workdir (pods: every worker sees it and it outlives a preempted slice),
   `<workdir's parent>/jax_compilation_cache`, shared by the runs beside it;
4. else none (local workdirs: JAX's default, compile every start).

`stats()` counts the cache hits and misses of this process (JAX's monitoring events); the
trainer's "compile" row in metrics.jsonl gives the seconds it took.
"""

from __future__ import annotations

import collections
import os

from absl import logging

ENV = "JAXMILAB_COMPILATION_CACHE"
DIRNAME = "jax_compilation_cache"
_EVENTS = {
    "/jax/compilation_cache/cache_hits": "hits",
    "/jax/compilation_cache/cache_misses": "misses",
}
_COUNTS: collections.Counter[str] = collections.Counter()
_LISTENING = False


def default_dir(workdir: str | os.PathLike | None) -> str | None:
  """`<parent of a gs:// workdir>/jax_compilation_cache`; None for local (or no) workdirs."""
  if workdir is None:
    return None
  w = str(workdir).rstrip("/")
  if not w.startswith("gs://"):
    return None
  parent = w.rsplit("/", 1)[0]
  if parent == "gs:/":  # gs://bucket itself: the cache goes inside the bucket
    parent = w
  return f"{parent}/{DIRNAME}"


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _EVENTS:
    _COUNTS[_EVENTS[event]] += 1


def setup(workdir: str | os.PathLike | None) -> str | None:
  """Points JAX's persistent cache at the directory chosen as in the module docstring."""
  import jax  # pylint: disable=g-import-not-at-top

  global _LISTENING
  choice = os.environ.get(ENV, "").strip()
  if choice.lower() in ("off", "none", "0", "false"):
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  path = choice or jax.config.jax_compilation_cache_dir or default_dir(workdir)
  if not path:
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  if not _LISTENING:
    jax.monitoring.register_event_listener(_count)
    _LISTENING = True
  logging.info("Persistent compilation cache: %s", path)
  return str(path)


def stats() -> dict[str, int]:
  """{"hits": n, "misses": m} of the persistent cache in this process since `setup`."""
  return {"hits": _COUNTS["hits"], "misses": _COUNTS["misses"]}
