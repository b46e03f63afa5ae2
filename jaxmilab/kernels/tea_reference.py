"""TEA attention (TEAFormer, ICCV 2025, arXiv 2506.18520): top-k window + pooled global keys.

Exact semantics (this repository's reading of the paper, which releases no code; fixed here):

1. Local candidates. Query (i, j) sees the `window` x `window` keys of NATTEN's *clamped*
   window: rows start at clamp(i - window // 2, 0, H - window), columns likewise, so the
   window slides along with the query in the interior and stops at the borders. Every query
   has exactly window**2 candidates (needs H, W >= window). No relative position bias.
2. Scores s = (q . k) / sqrt(head_dim). Each query keeps its `top_k` largest local scores.
   Ties: the candidate with the smaller row-major index inside the window wins (the row-major
   order inside a clamped window is the image's row-major order, so this is also "the smaller
   key position wins"). -0.0 counts as +0.0.
3. Global keys/values: non-overlapping `pool` x `pool` means of K and V ((H/r)*(W/r) of them),
   seen by every query. `pool=None` or `pool=0` switches them off (pure top-k window attention);
   `pool=1` makes every token a global key (quadratic cost: only for small maps).
4. One softmax over [selected local scores, global scores] weights [selected V; pooled V].
   Gradients flow through the selected scores and values; the selection is piecewise constant.

Cost O(B H W heads d (window^2 + H W / pool^2)); the XLA path never builds an [HW, HW] matrix.

Module layout (no import cycle): this module (reference, argument checks, pooling) and
`tea_pallas` (the fused kernel, which uses this one's helpers) are leaves; `tea_api` holds the
public `tea_attention` dispatcher that validates once and picks one of them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _is_int(x: Any) -> bool:
  return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def validate_tea_args(q, k, v, *, window, top_k, pool) -> int | None:
  """Checks shapes, dtypes and (window, top_k, pool) before any tracing; returns pool or None.

  Raises ValueError naming the argument, its value and the [B, H, W, heads, head_dim] shape.
  """
  for name, x in (("q", q), ("k", k), ("v", v)):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
      raise ValueError(f"tea_attention: {name} must be an array, got {type(x).__name__}.")
    if len(x.shape) != 5:
      raise ValueError(
          f"tea_attention: {name} must have shape [batch, height, width, heads, head_dim] "
          f"(5 dims), got shape {tuple(x.shape)}."
      )
    if jnp.dtype(x.dtype) not in [jnp.dtype(d) for d in _DTYPES]:
      raise ValueError(
          f"tea_attention: {name} has dtype {jnp.dtype(x.dtype).name}; use float32, bfloat16 "
          f"or float16 (shape {tuple(x.shape)})."
      )
  if tuple(k.shape) != tuple(q.shape) or tuple(v.shape) != tuple(q.shape):
    raise ValueError(
        "tea_attention: q, k and v must have the same shape [batch, height, width, heads, "
        f"head_dim], got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}."
    )
  if not (jnp.dtype(q.dtype) == jnp.dtype(k.dtype) == jnp.dtype(v.dtype)):
    raise ValueError(
        "tea_attention: q, k and v must have the same dtype, got "
        f"{jnp.dtype(q.dtype).name}, {jnp.dtype(k.dtype).name}, {jnp.dtype(v.dtype).name}."
    )
  _, height, width, _, _ = q.shape
  shape = tuple(q.shape)
  if min(shape) < 1:
    raise ValueError(f"tea_attention: q has an empty dimension, shape {shape}.")
  if not _is_int(window) or window < 1 or window % 2 == 0:
    raise ValueError(
        f"tea_attention: window must be an odd integer >= 1, got {window!r} " f"(q shape {shape})."
    )
  if window > height or window > width:
    raise ValueError(
        f"tea_attention: window={window} is larger than the feature map (height={height}, "
        f"width={width}) of q with shape {shape}; use window <= min(height, width)."
    )
  if not _is_int(top_k) or not 1 <= top_k <= window * window:
    raise ValueError(
        f"tea_attention: top_k must be an integer in [1, window**2 = "
        f"{window * window}], got {top_k!r} (window={window}, q shape {shape})."
    )
  if pool is None or (_is_int(pool) and pool == 0):
    return None
  if not _is_int(pool) or pool < 0:
    raise ValueError(
        f"tea_attention: pool must be None/0 (no global keys) or an integer "
        f">= 1, got {pool!r} (q shape {shape})."
    )
  if height % pool or width % pool:
    raise ValueError(
        f"tea_attention: pool={pool} must divide height={height} and width={width} "
        f"(q shape {shape}); pad the feature map or pick another pool."
    )
  return int(pool)


def window_starts(size: int, window: int) -> np.ndarray:
  """NATTEN clamped window start per position: clamp(i - window // 2, 0, size - window)."""
  return np.clip(np.arange(size) - window // 2, 0, size - window).astype(np.int32)


def avg_pool_tokens(x: jax.Array, pool: int) -> jax.Array:
  """Non-overlapping pool x pool means: [B, H, W, h, d] -> [B, (H/r)*(W/r), h, d] (row-major)."""
  b, height, width, heads, dim = x.shape
  x = x.reshape(b, height // pool, pool, width // pool, pool, heads, dim)
  return x.mean(axis=(2, 4)).reshape(b, (height // pool) * (width // pool), heads, dim)


def _local_scores(
    q: jax.Array, k: jax.Array, rows: jax.Array, cols: jax.Array, scale: float
) -> jax.Array:
  """Scores of each query against its clamped window: [B, H, W, h, w*w] (row-major in window)."""
  # k[:, rows[i, a], cols[j, c]] -> [B, H, W, w, w, h, d]: a w*w-times-K temporary, not a
  # residual (jax.checkpoint below regathers it in the backward pass); only the scores are kept.
  k_nb = k[:, rows[:, None, :, None], cols[None, :, None, :]]
  b, height, width, w, _, heads, dim = k_nb.shape
  k_nb = k_nb.reshape(b, height, width, w * w, heads, dim)
  return jnp.einsum("bijhd,bijnhd->bijhn", q, k_nb) * scale


@functools.partial(jax.jit, static_argnames=("window", "top_k", "pool"))
def tea_attention_reference(
    q: jax.Array, k: jax.Array, v: jax.Array, *, window: int, top_k: int, pool: int | None
) -> jax.Array:
  """Pure-jnp TEA attention (no argument checks): gathers each query's window, never [HW, HW]."""
  b, height, width, heads, dim = q.shape
  out_dtype = q.dtype
  q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
  scale = 1.0 / math.sqrt(dim)
  rows = jnp.asarray(window_starts(height, window)[:, None] + np.arange(window))  # [H, w]
  cols = jnp.asarray(window_starts(width, window)[:, None] + np.arange(window))  # [W, w]
  s = jax.checkpoint(_local_scores, static_argnums=(4,))(q, k, rows, cols, scale)
  # lax.top_k returns the lower index first among equal values: the documented tie rule.
  # Selection on -0.0 -> +0.0 scores (equal scores tie whatever their sign); the values (and
  # gradients) are taken from s itself.
  _, n_top = jax.lax.top_k(jnp.where(s == 0, 0.0, s), top_k)  # [B, H, W, h, k]
  s_top = jnp.take_along_axis(s, n_top, axis=-1)
  # Window offset -> flat key position y * W + x, then gather only the selected values.
  y = jnp.asarray(window_starts(height, window))[:, None, None, None] + n_top // window
  x = jnp.asarray(window_starts(width, window))[None, :, None, None] + n_top % window
  flat = (y * width + x).transpose(0, 3, 1, 2, 4).reshape(b, heads, -1)  # [B, h, HW*k]
  v_bh = v.transpose(0, 3, 1, 2, 4).reshape(b, heads, height * width, dim)
  v_sel = jnp.take_along_axis(v_bh, flat[..., None], axis=2)
  v_sel = v_sel.reshape(b, heads, height, width, top_k, dim).transpose(0, 2, 3, 1, 4, 5)
  logits = s_top  # [B, H, W, h, k]
  if pool is not None:
    k_g = avg_pool_tokens(k, pool)  # [B, G, h, d]
    v_g = avg_pool_tokens(v, pool)
    s_g = jnp.einsum("bijhd,bghd->bijhg", q, k_g) * scale  # [B, H, W, h, G]
    logits = jnp.concatenate([s_top, s_g], axis=-1)
  p = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bijhn,bijhnd->bijhd", p[..., :top_k], v_sel)
  if pool is not None:
    out = out + jnp.einsum("bijhg,bghd->bijhd", p[..., top_k:], v_g)
  return out.astype(out_dtype)
