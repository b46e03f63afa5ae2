"""Public TEA attention entry point: validates once, then the XLA reference or the Pallas kernel.

`tea_reference` (reference, checks) and `tea_pallas` (fused kernel) are leaf modules; this
dispatcher imports both, so neither imports the other's caller. Under a mesh (`jax.set_mesh`) the
Pallas path runs inside `shard_map` over the batch axes: a `pallas_call` has no SPMD partitioning
rule, so without it XLA would all-gather q, k, v and every device would compute the whole batch.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec as P

from jaxmilab.kernels import platform
from jaxmilab.kernels import tea_pallas
from jaxmilab.kernels import tea_reference

IMPLEMENTATIONS = ("xla", "pallas")
BATCH_AXES = ("data", "fsdp")  # = jaxmilab.sharding.BATCH_AXES (not imported: keeps this a leaf)


def _batch_axes(batch: int) -> tuple[tuple[str, ...], bool]:
  """(mesh axes of the current `jax.set_mesh` mesh the batch is split over, any Explicit).

  Axes already Manual (inside an enclosing shard_map) are skipped: there the arrays are
  per-device already. Returns ((), False) when no axis divides the batch.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return (), False
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  axes = tuple(
      a
      for a in BATCH_AXES
      if a in mesh.axis_names and mesh.shape[a] > 1 and types[a] != jax.sharding.AxisType.Manual
  )
  size = 1
  for a in axes:
    size *= mesh.shape[a]
  if not axes or batch % size:
    return (), False
  return axes, any(types[a] == jax.sharding.AxisType.Explicit for a in axes)


def tea_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    window: int,
    top_k: int,
    pool: int | None,
    implementation: str = "xla",
    interpret: bool = False,
) -> jax.Array:
  """TEA attention: each query attends to its top_k keys in a clamped window plus pooled keys.

  Args:
    q, k, v: [batch, height, width, heads, head_dim], same shape and dtype (f32/bf16/f16).
    window: odd window size w, 1 <= w <= min(height, width). Windows are NATTEN-clamped:
      rows start at clamp(i - w // 2, 0, height - w) (columns likewise), so every query has
      exactly w*w candidates.
    top_k: number of local keys kept per query, 1 <= top_k <= w*w, by score (q.k)/sqrt(d);
      ties go to the smaller row-major index within the window (= smaller key position).
    pool: r, the side of the non-overlapping average pooling that makes the global keys and
      values ((H/r)*(W/r) of them, seen by every query, same softmax as the local ones);
      None or 0 means no global keys. r must divide height and width.
    implementation: "xla" (pure jnp, gathers each query's window; works everywhere) or
      "pallas" (fused kernel with a custom VJP; GPU via Triton, TPU via Mosaic, or CPU with
      interpret=True). Under `jax.set_mesh` with a "data"/"fsdp" axis dividing the batch,
      the kernel runs per device on its batch slice (`shard_map`).
    interpret: run the Pallas kernels in interpret mode (CPU testing; slow).

  Returns:
    [batch, height, width, heads, head_dim] in q's dtype.
  """
  pool = tea_reference.validate_tea_args(q, k, v, window=window, top_k=top_k, pool=pool)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"tea_attention: implementation must be one of {IMPLEMENTATIONS}, got "
        f"{implementation!r}."
    )
  if implementation == "xla":
    return tea_reference.tea_attention_reference(q, k, v, window=window, top_k=top_k, pool=pool)
  target = platform.trace_platform()  # a TPU topology's when compiled ahead of time on a CPU host
  if not platform.on_accelerator() and not interpret:
    raise ValueError(
        f"tea_attention: implementation='pallas' needs a GPU or TPU (the program is traced for "
        f"{target!r}); pass interpret=True to run the kernel on CPU, or use "
        "implementation='xla'."
    )

  def kernel(q, k, v):
    return tea_pallas.tea_attention_pallas_unchecked(
        q, k, v, window=window, top_k=top_k, pool=pool, interpret=interpret
    )

  axes, explicit = _batch_axes(q.shape[0])
  if not axes:
    return kernel(q, k, v)
  spec = P(axes)
  if explicit:  # Explicit-sharding meshes want the inputs already laid out as in_specs.
    q, k, v = (jax.reshard(x, spec) for x in (q, k, v))
  return jax.shard_map(kernel, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(
      q, k, v
  )
