"""Fused Pallas TEA attention (semantics in `jaxmilab.kernels.tea_reference`) with a Pallas VJP.

Layout. Heads are folded into the batch and q, k, v are laid out once as [B*h, Hp, Wp, dp]
(Hp, Wp: the map padded with zeros to whole query tiles and at least one halo; dp: head_dim,
padded to a power of two >= 16 on GPU). Queries are cut into tile_h x tile_w tiles; one
program = one (batch*head, query tile). K/V are never duplicated in HBM: each program reads its
key/value *halo* (the rectangle holding every clamped window of the tile) straight from the
undivided arrays through an element-offset BlockSpec (`pl.Element`), whose start is
clamp(tile_start - window // 2, 0, size - halo) per axis, exactly like the windows.

Orientation. Scores are computed as [keys, queries] (s^T = K Q^T), so every per-query statistic
is a reduction over the key axis and comes out as a lane-dense row [1, TQ]; statistics are
stored as [B*h, tiles, 1, TQ] (on TPU a [TQ, 1] column would pad to 128 lanes).

Forward kernel: scores of the tile against its halo; a window mask from the query/key
coordinates; the k-th largest score per query ("threshold") and the image position of the last
kept tie, found without sort/top_k (Mosaic and Triton lower neither): `top_k` rounds of max +
min-position for small k, otherwise an exact radix select on the order-preserving int32 bit
pattern of the scores (32 counting rounds) and a binary search over tie positions. Then one
softmax over the selected local scores and the pooled global keys (online log-sum-exp merge over
chunks of global keys); stores o, lse and the threshold (value, position).

Backward (custom_vjp; residuals: q, k, v, the pooled K/V, o, lse, threshold; no halos):
- dQ kernel, per query tile: recomputes the selection from the stored threshold and the
  probabilities from lse; dq from the halo and the pooled keys; also writes delta = rowsum(o do).
- dK/dV kernel, per key tile: visits only the query tiles whose clamped windows can reach the
  tile (a static count per axis, <= 3 for the default tiles), recomputes the scores of that
  (query tile, key tile) pair and accumulates dk, dv: no scatter-add, no halo gradients.
  TPU: the query tiles are an "arbitrary" grid axis (one pair in VMEM at a time, f32 scratch
  accumulators); GPU: a loop inside the program.
- pooled-key kernel: TPU accumulates over an "arbitrary" query-tile axis per (batch*head, chunk
  of global keys); GPU splits the query tiles into groups, one program per (batch*head, chunk,
  group) writing partial sums that XLA adds up (no single serial loop over every tile).
The recomputed scores are the same dots of the same vectors as in the forward pass (one query
row against one key row, same contraction length and precision), so the stored threshold
reproduces the selection; a dot unit that rounded one of them differently could flip an exact
near-tie, whose gradient is then that of the other, equally valid, selection.

Precision: float32 inputs use `lax.Precision.HIGHEST` in every kernel dot (Triton would use TF32
otherwise; on TPU it selects the full-f32 MXU passes), bfloat16/float16 use the native MXU/tensor
core path with float32 accumulation.

Tiles: `choose_tiles` keeps the score block within a per-backend budget (GPU: registers,
4 or 8 warps; TPU: VMEM) and minimises halo keys per query; `autotune_table()` lists its choices
per (backend, window, head_dim, dtype). TPU blocks are checked by `check_tpu_block_shapes`
(interpret mode does not enforce Mosaic's tiling rules).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
from jax import lax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np

from jaxmilab.kernels import platform
from jaxmilab.kernels import tea_reference

_ROUNDS_MAX_K = 16  # top_k <= this: k rounds of max; above: radix select.
_INT_MIN = -(2**31)
_BIG_POS = float(1 << 24)  # larger than any image position, exact in float32.
_GPU_SCORES_4_WARPS = 16384  # scores per Triton program: 128 f32 registers/thread at 4 warps
_GPU_SCORES_8_WARPS = 32768  # ... and at 8 warps.
_TPU_MAX_SCORES = 256 * 1024  # 1 MiB f32 per score-sized VMEM temporary.


# ----------------------------------------------------------------------------- TPU legality


def check_tpu_block_shapes(
    block_shape: Sequence[int | None], array_shape: Sequence[int], dtype
) -> None:
  """Raises ValueError unless Mosaic (TPU) accepts this block of this array.

  The rule jax 0.10's Pallas TPU lowering enforces (jax/_src/pallas/mosaic/lowering.py, block
  checks): for rank >= 2 the last block dim must equal the array's or be a multiple of 128 and
  the second-to-last must equal the array's or be a multiple of 8 (None = squeezed = 1); a
  rank-1 block must equal the array, be a multiple of 8 * 128, or be a power of two at least
  128 * (32 // bitwidth). Element-offset (halo) blocks are exempt (their DMA takes any window).
  """
  block = tuple(1 if b is None else int(b) for b in block_shape)
  array = tuple(int(a) for a in array_shape)
  where = f"block shape {tuple(block_shape)} of array shape {array} ({jnp.dtype(dtype).name})"
  if len(block) != len(array):
    raise ValueError(f"TPU block check: rank mismatch, {where}.")
  if not block:
    raise ValueError(f"TPU block check: blocks need rank >= 1, {where}.")
  for b, a in zip(block, array):
    if b < 1 or b > a:
      raise ValueError(f"TPU block check: block dims must be in [1, array dim], {where}.")
  if len(block) >= 2:
    if not (block[-1] == array[-1] or block[-1] % 128 == 0):
      raise ValueError(
          f"TPU block check: last dim must equal the array's or be a multiple "
          f"of 128 (lanes), {where}."
      )
    if not (block[-2] == array[-2] or block[-2] % 8 == 0):
      raise ValueError(
          f"TPU block check: second-to-last dim must equal the array's or be a "
          f"multiple of 8 (sublanes), {where}."
      )
    return
  bits = jnp.dtype(dtype).itemsize * 8
  min_tiling = 128 * max(1, 32 // bits)
  b = block[0]
  if not (b == array[0] or b % 1024 == 0 or (b >= min_tiling and b & (b - 1) == 0)):
    raise ValueError(
        f"TPU block check: a rank-1 block must equal the array, be a multiple of "
        f"1024, or be a power of two >= {min_tiling}, {where}."
    )


# ----------------------------------------------------------------------------- geometry


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _sublanes(dtype) -> int:
  """Mosaic's sublane tiling of the second-minor dim: 8 rows of 32 bits (16 for 16-bit)."""
  return 8 * max(1, 4 // jnp.dtype(dtype).itemsize)


def _halo_geometry(
    backend: str, dtype, th: int, tw: int, window: int, height: int, width: int
) -> dict[str, int]:
  """Halo rows/columns read per tile, their start clamps, and the padded map that holds them.

  Starts are clamp(tile_start - w // 2, 0, size - exact halo) (exact halo = tile + w - 1, at
  most the map), as the windows; on TPU column starts are rounded down to a whole sublane tile
  (Mosaic's DMA needs it) and the columns read cover the shift; Triton reads power-of-two
  blocks. The map is zero-padded so every tile and every halo read is in bounds.
  """
  half = window // 2
  hh, hw = min(th + window - 1, height), min(tw + window - 1, width)
  limit_h, limit_w = max(height - hh, 0), max(width - hw, 0)
  align = _sublanes(dtype) if backend == "tpu" else 1
  n_ty, n_tx = -(-height // th), -(-width // tw)
  starts_x = [min(max(t * tw - half, 0), limit_w) // align * align for t in range(n_tx)]
  starts_y = [min(max(t * th - half, 0), limit_h) for t in range(n_ty)]
  if backend == "gpu":
    read_h, read_w = _next_pow2(hh), _next_pow2(hw)
  else:
    read_h = hh
    read_w = _round_up(
        max(min(max(t * tw - half, 0), limit_w) + hw - a for t, a in enumerate(starts_x)), align
    )
  pad_h = _round_up(max([n_ty * th] + [a + read_h for a in starts_y]), th)
  pad_w = _round_up(max([n_tx * tw] + [a + read_w for a in starts_x]), tw)
  return dict(
      halo_h=read_h,
      halo_w=read_w,
      halo_limit_h=limit_h,
      halo_limit_w=limit_w,
      align_w=align,
      pad_h=pad_h,
      pad_w=pad_w,
  )


_TILE_CANDIDATES = {
    "gpu": ((1, 16), (2, 8), (2, 16), (4, 4), (4, 8), (4, 16), (8, 8), (8, 16), (16, 16)),
    "tpu": ((8, 16), (16, 8), (4, 32), (8, 32), (16, 16), (32, 8)),
}


def choose_tiles(
    backend: str, window: int, height: int, width: int, dtype, head_dim: int
) -> tuple[tuple[int, int], int]:
  """((tile_h, tile_w), num_warps): fewest halo keys per query within the score budget.

  Work per query is proportional to the halo size (scores, selection rounds, P.V), HBM
  traffic per query to halo / tile; among tiles whose score block fits the budget (GPU:
  16K f32 scores at 4 warps, 32K at 8 warps, so no register spills; TPU: 256K per VMEM
  temporary, >= 128 queries so statistics fill the 128 lanes) the smallest halo per query wins,
  ties to the larger tile.
  """
  best = None
  for th, tw in _TILE_CANDIDATES[backend]:
    halo = _halo_geometry(backend, dtype, th, tw, window, height, width)
    tq, hk = th * tw, halo["halo_h"] * halo["halo_w"]
    if backend == "gpu":
      if tq * hk > _GPU_SCORES_8_WARPS or tq < 16:
        continue
      warps = 4 if tq * hk <= _GPU_SCORES_4_WARPS else 8
    else:
      if tq * hk > _TPU_MAX_SCORES or tq < 128 or tw % _sublanes(dtype):
        continue
      warps = 0
    cost = (hk * (1.0 + 2.0 * head_dim / tq), -tq)  # scores + (K, V) reads per query
    if best is None or cost < best[0]:
      best = (cost, (th, tw), warps)
  if best is None:  # Tiny maps: smallest legal tile.
    return ((2, 8) if backend == "gpu" else (8, 16)), 4
  return best[1], best[2]


def autotune_table(
    head_dims=(32, 48), windows=(7, 15), dtypes=("float32", "bfloat16"), size: int = 128
) -> list[dict]:
  """The tiles `choose_tiles` picks per (backend, window, head_dim, dtype) at size x size."""
  rows = []
  for backend in ("gpu", "tpu"):
    for window in windows:
      for d in head_dims:
        for dt in dtypes:
          (th, tw), warps = choose_tiles(backend, window, size, size, jnp.dtype(dt), d)
          halo = _halo_geometry(backend, jnp.dtype(dt), th, tw, window, size, size)
          hh, hw = halo["halo_h"], halo["halo_w"]
          rows.append(
              dict(
                  backend=backend,
                  window=window,
                  head_dim=d,
                  dtype=dt,
                  tile=(th, tw),
                  halo=(hh, hw),
                  num_warps=warps,
                  scores=th * tw * hh * hw,
              )
          )
  return rows


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Static tiling of one TEA attention call (hashable: a static argument)."""

  height: int
  width: int
  window: int
  top_k: int
  head_dim: int
  head_dim_pad: int
  tile_h: int
  tile_w: int
  halo_h: int  # rows / columns read per halo (>= the exact halo)
  halo_w: int
  halo_limit_h: int  # halo starts are clamped to [0, limit]
  halo_limit_w: int
  align_w: int  # halo column starts are multiples of this (TPU sublane tiling)
  pad_h: int  # padded map the kernels see
  pad_w: int
  span_y: int  # query tiles (per axis) whose windows can reach one key tile
  span_x: int
  num_global: int  # 0: no global keys.
  global_pad: int
  global_block: int
  global_groups: int  # GPU: query-tile groups of the pooled-key backward
  selection: str  # "all" | "rounds" | "radix"
  backend: str  # "gpu" | "tpu"
  num_warps: int
  precision: str  # "highest" (float32 inputs) | "default"
  interpret: bool

  @property
  def tile_q(self) -> int:
    return self.tile_h * self.tile_w

  @property
  def halo_k(self) -> int:
    return self.halo_h * self.halo_w

  @property
  def n_ty(self) -> int:
    return self.pad_h // self.tile_h

  @property
  def n_tx(self) -> int:
    return self.pad_w // self.tile_w

  @property
  def n_tiles(self) -> int:
    return self.n_ty * self.n_tx

  @property
  def scale(self) -> float:
    return 1.0 / math.sqrt(self.head_dim)

  @property
  def has_global(self) -> bool:
    return self.num_global > 0


def _query_tile_range(size: int, tile: int, window: int, key_tile: int) -> tuple[int, int]:
  """First and last query tile whose clamped windows reach key tile `key_tile` (one axis).

  Query r's window is [ws(r), ws(r) + w) with ws(r) = clamp(r - w//2, 0, size - w); it reaches
  key y iff r_lo(y) <= r <= r_hi(y), r_lo(y) = 0 if y < w else y - w//2, r_hi(y) = size - 1
  if y >= size - w else y + w//2 (windows are monotone in r).
  """
  half = window // 2
  y0, y1 = key_tile * tile, min((key_tile + 1) * tile, size) - 1
  r_lo = 0 if y0 < window else y0 - half
  r_hi = size - 1 if y1 >= size - window else y1 + half
  return r_lo // tile, r_hi // tile


def make_geometry(
    shape: Sequence[int],
    dtype,
    *,
    window: int,
    top_k: int,
    pool: int | None,
    backend: str,
    interpret: bool,
    block: tuple[int, int] | None = None,
    global_block: int | None = None,
    selection: str = "auto",
    num_warps: int | None = None,
    global_groups: int | None = None,
) -> Geometry:
  """Chooses tiles and paddings for `backend` ("gpu" or "tpu")."""
  _, height, width, _, head_dim = shape
  dtype = jnp.dtype(dtype)
  if backend not in ("gpu", "tpu"):
    raise ValueError(f"tea_attention_pallas: backend must be 'gpu' or 'tpu', got {backend!r}.")
  if height * width >= 1 << 24:
    raise ValueError(
        f"tea_attention_pallas: maps of {height}x{width} tokens exceed the 2**24 "
        "positions the tie index holds exactly in float32; tile the image."
    )
  if block is None:
    block, _ = choose_tiles(backend, window, height, width, dtype, head_dim)
  th, tw = (int(b) for b in block)
  if backend == "gpu" and (th & (th - 1) or tw & (tw - 1) or th * tw < 16):
    raise ValueError(
        f"tea_attention_pallas: GPU (Triton) tiles need power-of-two sides and "
        f">= 16 queries, got block={block}."
    )
  sub = _sublanes(dtype)
  if backend == "tpu" and tw % sub:
    raise ValueError(
        f"tea_attention_pallas: TPU tiles need tile_w a multiple of {sub} for "
        f"{dtype.name} (Mosaic sublane tiling), got block={block}."
    )
  halo = _halo_geometry(backend, dtype, th, tw, window, height, width)
  pad_h, pad_w = halo["pad_h"], halo["pad_w"]
  scores = th * tw * halo["halo_h"] * halo["halo_w"]
  warps = 4 if scores <= _GPU_SCORES_4_WARPS else 8  # GPU register budget (see choose_tiles)
  span = lambda size, tile: max(
      hi - lo + 1
      for lo, hi in (_query_tile_range(size, tile, window, t) for t in range(-(-size // tile)))
  )
  num_global = 0 if pool is None else (height // pool) * (width // pool)
  groups = 0
  if num_global:
    if global_block is None:
      global_block = (
          max(16, min(64, _next_pow2(num_global)))
          if backend == "gpu"
          else min(128, _round_up(num_global, 8))
      )
    if backend == "gpu" and (global_block & (global_block - 1) or global_block < 16):
      raise ValueError(
          f"tea_attention_pallas: GPU global_block must be a power of two >= 16, "
          f"got {global_block}."
      )
    if backend == "tpu" and global_block % 8:
      raise ValueError(
          f"tea_attention_pallas: TPU global_block must be a multiple of 8, got " f"{global_block}."
      )
    global_pad = _round_up(num_global, global_block)
    n_tiles = (pad_h // th) * (pad_w // tw)
    # GPU: enough (chunk, group) programs to fill ~132 SMs twice without tiny groups.
    groups = global_groups or max(1, min(n_tiles // 4, 256 // (global_pad // global_block)))
    groups = min(groups, n_tiles)
  else:
    global_block = global_pad = 0
  if selection == "auto":
    selection = (
        "all" if top_k == window * window else "rounds" if top_k <= _ROUNDS_MAX_K else "radix"
    )
  if selection not in ("all", "rounds", "radix"):
    raise ValueError(f"tea_attention_pallas: unknown selection {selection!r}.")
  if selection == "all" and top_k != window * window:
    raise ValueError("tea_attention_pallas: selection='all' needs top_k == window**2.")
  head_dim_pad = max(16, _next_pow2(head_dim)) if backend == "gpu" else head_dim
  return Geometry(
      height=height,
      width=width,
      window=window,
      top_k=top_k,
      head_dim=head_dim,
      head_dim_pad=head_dim_pad,
      tile_h=th,
      tile_w=tw,
      **halo,
      span_y=span(height, th),
      span_x=span(width, tw),
      num_global=num_global,
      global_pad=global_pad,
      global_block=global_block,
      global_groups=groups,
      selection=selection,
      backend=backend,
      num_warps=int(num_warps or warps),
      precision="highest" if dtype == jnp.float32 else "default",
      interpret=bool(interpret),
  )


@functools.lru_cache(maxsize=64)
def _patterns(g: Geometry) -> dict[str, np.ndarray]:
  """In-tile coordinate patterns (Mosaic has no cheap vector integer division)."""
  slot = np.arange(g.tile_q)
  hslot = np.arange(g.halo_k)
  i32 = lambda a: np.asarray(a, np.int32)
  return dict(
      qpy=i32(slot // g.tile_w)[None, :],
      qpx=i32(slot % g.tile_w)[None, :],
      kpy=i32(slot // g.tile_w)[:, None],
      kpx=i32(slot % g.tile_w)[:, None],
      hpy=i32(hslot // g.halo_w)[:, None],
      hpx=i32(hslot % g.halo_w)[:, None],
  )


# ----------------------------------------------------------------------------- index math
# Traced int32 scalars (program ids): used in index maps and inside the kernels.


def _idiv(a, b: int):
  """a // b for traced non-negative int32 (lax.div: jnp's floor division lowers via sign)."""
  return lax.div(a, jnp.asarray(b, jnp.int32))


def _irem(a, b: int):
  return lax.rem(a, jnp.asarray(b, jnp.int32))


def _halo_start(g: Geometry, t, axis: int):
  """First row (axis 0) / column (axis 1) of query tile t's halo.

  clamp(t * tile - w // 2, 0, size - exact halo), columns rounded down to `align_w` (Mosaic
  DMAs start at whole sublane tiles); `halo_w` covers the extra columns.
  """
  tile, limit = (g.tile_h, g.halo_limit_h) if axis == 0 else (g.tile_w, g.halo_limit_w)
  start = jnp.clip(t * tile - g.window // 2, 0, limit)
  if axis == 1 and g.align_w > 1:
    start = pl.multiple_of(_idiv(start, g.align_w) * g.align_w, g.align_w)
  return start


def _q_range(g: Geometry, kt, axis: int):
  """Traced version of `_query_tile_range` (first, last) for key tile kt along one axis."""
  tile, size = (g.tile_h, g.height) if axis == 0 else (g.tile_w, g.width)
  half, w = g.window // 2, g.window
  y0 = kt * tile
  y1 = jnp.minimum((kt + 1) * tile, size) - 1
  r_lo = jnp.where(y0 < w, 0, y0 - half)
  r_hi = jnp.where(y1 >= size - w, size - 1, y1 + half)
  return _idiv(r_lo, tile), _idiv(r_hi, tile)


def _pair(g: Geometry, ky, kx, n):
  """n-th (query tile y, query tile x, active) visited by key tile (ky, kx)."""
  lo_y, hi_y = _q_range(g, ky, 0)
  lo_x, hi_x = _q_range(g, kx, 1)
  qy, qx = lo_y + _idiv(n, g.span_x), lo_x + _irem(n, g.span_x)
  active = (qy <= hi_y) & (qx <= hi_x)
  return jnp.minimum(qy, hi_y), jnp.minimum(qx, hi_x), active


# ----------------------------------------------------------------------------- kernel pieces


def _precision(g: Geometry):
  return lax.Precision.HIGHEST if g.precision == "highest" else None


def _dot_nt(g, a, b):
  """a @ b.T, f32 accumulation: [M, K] x [N, K] -> [M, N]."""
  return lax.dot_general(
      a, b, (((1,), (1,)), ((), ())), precision=_precision(g), preferred_element_type=jnp.float32
  )


def _dot_tn(g, a, b):
  """a.T @ b: [K, M] x [K, N] -> [M, N]."""
  return lax.dot_general(
      a, b, (((0,), (0,)), ((), ())), precision=_precision(g), preferred_element_type=jnp.float32
  )


def _dot(g, a, b):
  return lax.dot_general(
      a, b, (((1,), (0,)), ((), ())), precision=_precision(g), preferred_element_type=jnp.float32
  )


def _scores_t(g: Geometry, k, q):
  """s^T = K Q^T * scale, [keys, queries], with -0.0 -> +0.0 (ties ignore the sign)."""
  s = _dot_nt(g, k, q) * g.scale
  return jnp.where(s == 0.0, 0.0, s)


def _query_coords(g: Geometry, ty, tx, qpy, qpx):
  """Rows [1, TQ]: the query's clamped window start (wy, wx); padded queries are clamped."""
  half = g.window // 2
  qy = jnp.minimum(ty * g.tile_h + qpy, g.height - 1)
  qx = jnp.minimum(tx * g.tile_w + qpx, g.width - 1)
  return (jnp.clip(qy - half, 0, g.height - g.window), jnp.clip(qx - half, 0, g.width - g.window))


def _key_mask(g: Geometry, ky, kx, wy, wx):
  """[K, TQ] bool (key inside the query's clamped window) and the key positions [K, 1] f32."""
  valid = (ky >= wy) & (ky < wy + g.window) & (kx >= wx) & (kx < wx + g.window)
  return valid, (ky * g.width + kx).astype(jnp.float32)


def _count(mask):
  return jnp.sum(jnp.where(mask, 1.0, 0.0), axis=0, keepdims=True)  # [1, TQ] f32


def _threshold(g: Geometry, s, valid, pos):
  """k-th largest valid score per column and the position of the last kept tie ([1, TQ])."""
  cols = s.shape[1]
  if g.selection == "all":
    return (jnp.full((1, cols), -jnp.inf, jnp.float32), jnp.full((1, cols), _BIG_POS, jnp.float32))
  if g.selection == "rounds":
    remaining = valid
    for _ in range(g.top_k):  # Each round removes the largest score (smallest position).
      m = jnp.max(jnp.where(remaining, s, -jnp.inf), axis=0, keepdims=True)
      i = jnp.min(jnp.where(remaining & (s == m), pos, _BIG_POS), axis=0, keepdims=True)
      remaining = remaining & (pos != i)
    return m, i
  # Radix select. key: order-preserving int32 view of the float scores.
  bits = lax.bitcast_convert_type(s, jnp.int32)
  key = jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
  k = float(g.top_k)
  int_min = jnp.int32(_INT_MIN)

  def value_round(r, prefix):  # prefix: unsigned bit pattern (held in int32) of the answer.
    cand = prefix | jnp.left_shift(jnp.int32(1), 31 - r)
    enough = _count(valid & (key >= (cand ^ int_min))) >= k
    return jnp.where(enough, cand, prefix)

  t_key = lax.fori_loop(0, 32, value_round, jnp.zeros((1, cols), jnp.int32)) ^ int_min
  ties = valid & (key == t_key)
  need = k - _count(valid & (key > t_key))  # >= 1 ties kept
  nbits = max(1, (g.height * g.width).bit_length())
  posi = pos.astype(jnp.int32)

  def index_round(r, p):  # largest p with (#ties before position p) < need
    cand = p | jnp.left_shift(jnp.int32(1), nbits - 1 - r)
    return jnp.where(_count(ties & (posi < cand)) < need, cand, p)

  t_pos = lax.fori_loop(0, nbits, index_round, jnp.zeros((1, cols), jnp.int32))
  t_bits = jnp.where(t_key < 0, t_key ^ 0x7FFFFFFF, t_key)
  return lax.bitcast_convert_type(t_bits, jnp.float32), t_pos.astype(jnp.float32)


def _selected(s, valid, pos, t_val, t_pos):
  return valid & ((s > t_val) | ((s == t_val) & (pos <= t_pos)))


def _global_chunk(g: Geometry, q, kg_ref, vg_ref, c):
  """Scores^T [BG, TQ] against global chunk c (padding masked to -inf) and its keys/values."""
  start = pl.multiple_of(c * g.global_block, g.global_block)
  kg = kg_ref[pl.ds(start, g.global_block), :]  # [BG, dp]
  vg = vg_ref[pl.ds(start, g.global_block), :]
  gid = start + lax.broadcasted_iota(jnp.int32, (g.global_block, 1), 0)
  sg = jnp.where(gid < g.num_global, _dot_nt(g, kg, q) * g.scale, -jnp.inf)
  return sg, kg, vg


def _flat(x):
  """[rows, cols, d] -> [rows * cols, d]."""
  return x.reshape(x.shape[0] * x.shape[1], x.shape[2])


def _n_chunks(g: Geometry) -> int:
  return g.global_pad // g.global_block


def dkv_pairs(g: Geometry) -> int:
  """(key tile, query tile) pairs the dK/dV kernel computes per batch*head."""
  count = lambda size, tile, n: sum(
      hi - lo + 1 for lo, hi in (_query_tile_range(size, tile, g.window, t) for t in range(n))
  )
  return count(g.height, g.tile_h, g.n_ty) * count(g.width, g.tile_w, g.n_tx)


def _cost(g: Geometry, bh: int, itemsize: int, kernel: str):
  """pl.CostEstimate per kernel, so XLA's cost analysis (and MFU built on it) sees the work.

  MXU FLOPs and exps counted per score block; bytes = tiles and halos read, outputs written.
  """
  d, e, n = g.head_dim_pad, itemsize, g.pad_h * g.pad_w
  scores, glob = g.n_tiles * g.tile_q * g.halo_k, n * g.global_pad
  halo_bytes = g.n_tiles * 2 * g.halo_k * d * e + 2 * g.global_pad * d * e
  pairs = dkv_pairs(g) * g.tile_q * g.tile_q
  if kernel == "forward":
    flops, exps, nbytes = (
        4 * (scores + glob) * d,
        scores + glob,
        (2 * n * d * e + halo_bytes + 12 * n),
    )
  elif kernel == "dq":
    flops, exps, nbytes = (
        6 * (scores + glob) * d,
        scores + glob,
        (4 * n * d * e + halo_bytes + 16 * n),
    )
  elif kernel == "dkv":
    flops, exps, nbytes = (
        8 * pairs * d,
        pairs,
        (4 * n * d * e + dkv_pairs(g) * g.tile_q * (2 * d * e + 16)),
    )
  else:  # pooled keys (only called with global keys)
    flops, exps, nbytes = (
        8 * glob * d,
        glob,
        (_n_chunks(g) * n * (2 * d * e + 8) + 4 * g.global_pad * d * 4),
    )
  return pl.CostEstimate(
      flops=int(bh * flops), transcendentals=int(bh * exps), bytes_accessed=int(bh * nbytes)
  )


# ----------------------------------------------------------------------------- kernels


def _forward_kernel(qpy_ref, qpx_ref, hpy_ref, hpx_ref, q_ref, k_ref, v_ref, *refs, g: Geometry):
  if g.has_global:
    kg_ref, vg_ref, o_ref, lse_ref, tval_ref, tpos_ref = refs
  else:
    o_ref, lse_ref, tval_ref, tpos_ref = refs
  ty, tx = pl.program_id(1), pl.program_id(2)
  q, k, v = _flat(q_ref[...]), _flat(k_ref[...]), _flat(v_ref[...])  # [TQ|HK, dp]
  s = _scores_t(g, k, q)  # [HK, TQ]
  wy, wx = _query_coords(g, ty, tx, qpy_ref[...], qpx_ref[...])
  valid, pos = _key_mask(
      g, _halo_start(g, ty, 0) + hpy_ref[...], _halo_start(g, tx, 1) + hpx_ref[...], wy, wx
  )
  t_val, t_pos = _threshold(g, s, valid, pos)
  sel = _selected(s, valid, pos, t_val, t_pos)
  m = jnp.max(jnp.where(sel, s, -jnp.inf), axis=0, keepdims=True)  # [1, TQ]
  p = jnp.where(sel, jnp.exp(s - m), 0.0)
  l = jnp.sum(p, axis=0, keepdims=True)
  acc = _dot_tn(g, v, p.astype(v.dtype))  # [dp, TQ]
  if g.has_global:

    def body(c, carry):  # Online softmax over chunks of pooled keys.
      m, l, acc = carry
      sg, _, vg = _global_chunk(g, q, kg_ref, vg_ref, c)
      m_new = jnp.maximum(m, jnp.max(sg, axis=0, keepdims=True))
      alpha = jnp.exp(m - m_new)
      pg = jnp.exp(sg - m_new)
      return (
          m_new,
          alpha * l + jnp.sum(pg, axis=0, keepdims=True),
          alpha * acc + _dot_tn(g, vg, pg.astype(vg.dtype)),
      )

    m, l, acc = lax.fori_loop(0, _n_chunks(g), body, (m, l, acc))
  o = (acc / l).T  # [TQ, dp]
  o_ref[...] = o.reshape(o_ref.shape).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)
  tval_ref[...] = t_val
  tpos_ref[...] = t_pos


def _backward_dq_kernel(
    qpy_ref, qpx_ref, hpy_ref, hpx_ref, q_ref, k_ref, v_ref, *refs, g: Geometry
):
  if g.has_global:
    kg_ref, vg_ref, o_ref, do_ref, lse_ref, tval_ref, tpos_ref, dq_ref, delta_ref = refs
  else:
    o_ref, do_ref, lse_ref, tval_ref, tpos_ref, dq_ref, delta_ref = refs
  ty, tx = pl.program_id(1), pl.program_id(2)
  q, k, v, do = (_flat(r[...]) for r in (q_ref, k_ref, v_ref, do_ref))
  o = _flat(o_ref[...])
  delta = jnp.sum(
      (o.astype(jnp.float32) * do.astype(jnp.float32)).T, axis=0, keepdims=True
  )  # [1, TQ]
  lse = lse_ref[...]
  s = _scores_t(g, k, q)
  wy, wx = _query_coords(g, ty, tx, qpy_ref[...], qpx_ref[...])
  valid, pos = _key_mask(
      g, _halo_start(g, ty, 0) + hpy_ref[...], _halo_start(g, tx, 1) + hpx_ref[...], wy, wx
  )
  sel = _selected(s, valid, pos, tval_ref[...], tpos_ref[...])
  p = jnp.where(sel, jnp.exp(s - lse), 0.0)  # [HK, TQ]
  ds = p * (_dot_nt(g, v, do) - delta)
  dq = _dot_tn(g, ds.astype(k.dtype), k)  # [TQ, dp]
  if g.has_global:

    def body(c, dq):
      sg, kg, vg = _global_chunk(g, q, kg_ref, vg_ref, c)
      pg = jnp.exp(sg - lse)
      dsg = pg * (_dot_nt(g, vg, do) - delta)
      return dq + _dot_tn(g, dsg.astype(kg.dtype), kg)

    dq = lax.fori_loop(0, _n_chunks(g), body, dq)
  dq_ref[...] = (dq * g.scale).reshape(dq_ref.shape).astype(dq_ref.dtype)
  delta_ref[...] = delta


def _pair_grads(
    g: Geometry, patterns, k, v, q, do, lse, delta, t_val, t_pos, ky_t, kx_t, qy_t, qx_t
):
  """One (key tile, query tile) pair's (dk / scale, dv) contributions, [TK, dp] f32 each."""
  qpy, qpx, kpy, kpx = patterns
  s = _scores_t(g, k, q)  # [TK, TQ]
  wy, wx = _query_coords(g, qy_t, qx_t, qpy, qpx)
  valid, pos = _key_mask(g, ky_t * g.tile_h + kpy, kx_t * g.tile_w + kpx, wy, wx)
  sel = _selected(s, valid, pos, t_val, t_pos)
  p = jnp.where(sel, jnp.exp(s - lse), 0.0)
  ds = p * (_dot_nt(g, v, do) - delta)
  return _dot(g, ds.astype(q.dtype), q), _dot(g, p.astype(do.dtype), do)


def _backward_dkv_grid_kernel(
    qpy_ref,
    qpx_ref,
    kpy_ref,
    kpx_ref,
    k_ref,
    v_ref,
    q_ref,
    do_ref,
    lse_ref,
    delta_ref,
    tval_ref,
    tpos_ref,
    dk_ref,
    dv_ref,
    dk_acc,
    dv_acc,
    *,
    g: Geometry,
):
  """TPU: grid (bh, key tile y, key tile x, pair n); pairs are the "arbitrary" axis."""
  ky_t, kx_t, n = pl.program_id(1), pl.program_id(2), pl.program_id(3)
  qy_t, qx_t, active = _pair(g, ky_t, kx_t, n)

  @pl.when(n == 0)
  def _():
    dk_acc[...] = jnp.zeros_like(dk_acc)
    dv_acc[...] = jnp.zeros_like(dv_acc)

  @pl.when(active)
  def _():
    patterns = (qpy_ref[...], qpx_ref[...], kpy_ref[...], kpx_ref[...])
    dk, dv = _pair_grads(
        g,
        patterns,
        _flat(k_ref[...]),
        _flat(v_ref[...]),
        _flat(q_ref[...]),
        _flat(do_ref[...]),
        lse_ref[...],
        delta_ref[...],
        tval_ref[...],
        tpos_ref[...],
        ky_t,
        kx_t,
        qy_t,
        qx_t,
    )
    dk_acc[...] += dk
    dv_acc[...] += dv

  @pl.when(n == g.span_y * g.span_x - 1)
  def _():
    dk_ref[...] = (dk_acc[...] * g.scale).reshape(dk_ref.shape).astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].reshape(dv_ref.shape).astype(dv_ref.dtype)


def _backward_dkv_loop_kernel(
    qpy_ref,
    qpx_ref,
    kpy_ref,
    kpx_ref,
    k_ref,
    v_ref,
    q_ref,
    do_ref,
    lse_ref,
    delta_ref,
    tval_ref,
    tpos_ref,
    dk_ref,
    dv_ref,
    *,
    g: Geometry,
):
  """GPU: grid (bh, key tile y, key tile x); loops over the query tiles that reach the tile."""
  ky_t, kx_t = pl.program_id(1), pl.program_id(2)
  patterns = (qpy_ref[...], qpx_ref[...], kpy_ref[...], kpx_ref[...])
  k, v = _flat(k_ref[...]), _flat(v_ref[...])
  lo_y, hi_y = _q_range(g, ky_t, 0)
  lo_x, hi_x = _q_range(g, kx_t, 1)

  def row(qy_t, carry):
    def col(qx_t, carry):
      t = qy_t * g.n_tx + qx_t
      ys, xs = pl.ds(qy_t * g.tile_h, g.tile_h), pl.ds(qx_t * g.tile_w, g.tile_w)
      dk, dv = _pair_grads(
          g,
          patterns,
          k,
          v,
          _flat(q_ref[ys, xs, :]),
          _flat(do_ref[ys, xs, :]),
          lse_ref[t],
          delta_ref[t],
          tval_ref[t],
          tpos_ref[t],
          ky_t,
          kx_t,
          qy_t,
          qx_t,
      )
      return carry[0] + dk, carry[1] + dv

    return lax.fori_loop(lo_x, hi_x + 1, col, carry)

  zeros = jnp.zeros((g.tile_q, g.head_dim_pad), jnp.float32)
  dk, dv = lax.fori_loop(lo_y, hi_y + 1, row, (zeros, zeros))
  dk_ref[...] = (dk * g.scale).reshape(dk_ref.shape).astype(dk_ref.dtype)
  dv_ref[...] = dv.reshape(dv_ref.shape).astype(dv_ref.dtype)


def _global_tile_grads(g: Geometry, q, do, lse, delta, kg, vg, gid):
  """One query tile's contribution to the pooled keys' (dk / scale, dv): [BG, dp] f32 each."""
  sg = _dot_nt(g, kg, q) * g.scale  # [BG, TQ]
  pg = jnp.where(gid < g.num_global, jnp.exp(sg - lse), 0.0)
  dsg = pg * (_dot_nt(g, vg, do) - delta)
  return _dot(g, dsg.astype(q.dtype), q), _dot(g, pg.astype(do.dtype), do)


def _backward_global_grid_kernel(
    q_ref, do_ref, lse_ref, delta_ref, kg_ref, vg_ref, dkg_ref, dvg_ref, *, g: Geometry
):
  """TPU: grid (bh, chunk, query tile); query tiles are "arbitrary", summed in the outputs."""
  t = pl.program_id(2)

  @pl.when(t == 0)
  def _():
    dkg_ref[...] = jnp.zeros_like(dkg_ref)
    dvg_ref[...] = jnp.zeros_like(dvg_ref)

  gid = pl.program_id(1) * g.global_block + lax.broadcasted_iota(jnp.int32, (g.global_block, 1), 0)
  dk, dv = _global_tile_grads(
      g,
      _flat(q_ref[...]),
      _flat(do_ref[...]),
      lse_ref[...],
      delta_ref[...],
      kg_ref[...],
      vg_ref[...],
      gid,
  )
  dkg_ref[...] += dk * g.scale
  dvg_ref[...] += dv


def _backward_global_group_kernel(
    q_ref, do_ref, lse_ref, delta_ref, kg_ref, vg_ref, dkg_ref, dvg_ref, *, g: Geometry
):
  """GPU: grid (bh, chunk, group); each program sums one group of query tiles (partials)."""
  kg, vg = kg_ref[...], vg_ref[...]  # [BG, dp]
  gid = pl.program_id(1) * g.global_block + lax.broadcasted_iota(jnp.int32, (g.global_block, 1), 0)
  per_group = -(-g.n_tiles // g.global_groups)
  first = pl.program_id(2) * per_group
  last = jnp.minimum(first + per_group, g.n_tiles)

  def body(t, carry):
    ys = pl.ds(_idiv(t, g.n_tx) * g.tile_h, g.tile_h)
    xs = pl.ds(_irem(t, g.n_tx) * g.tile_w, g.tile_w)
    dk, dv = _global_tile_grads(
        g, _flat(q_ref[ys, xs, :]), _flat(do_ref[ys, xs, :]), lse_ref[t], delta_ref[t], kg, vg, gid
    )
    return carry[0] + dk, carry[1] + dv

  zeros = jnp.zeros((g.global_block, g.head_dim_pad), jnp.float32)
  dk, dv = lax.fori_loop(first, last, body, (zeros, zeros))
  dkg_ref[...] = dk * g.scale
  dvg_ref[...] = dv


# ----------------------------------------------------------------------------- pallas calls


def _compiler_params(g: Geometry, semantics: tuple[str, ...]):
  if g.interpret:
    return None
  if g.backend == "gpu":
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top

    return plgpu.CompilerParams(num_warps=g.num_warps, num_stages=2)
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top

  return pltpu.CompilerParams(dimension_semantics=semantics)


def _spec(g: Geometry, block, index_map, shape, dtype) -> pl.BlockSpec:
  if g.backend == "tpu":
    check_tpu_block_shapes(block, shape, dtype)
  return pl.BlockSpec(block, index_map)


def _map_shape(g: Geometry, bh: int) -> tuple[int, int, int, int]:
  return (bh, g.pad_h, g.pad_w, g.head_dim_pad)


def _tile_spec(g: Geometry, bh: int, dtype, index_map) -> pl.BlockSpec:
  """A query/key tile [tile_h, tile_w, dp] of a [BH, Hp, Wp, dp] map."""
  return _spec(g, (None, g.tile_h, g.tile_w, g.head_dim_pad), index_map, _map_shape(g, bh), dtype)


def _halo_spec(g: Geometry) -> pl.BlockSpec:
  """The halo of query tile (ty, tx), read at element offsets from the undivided map."""
  block = (None, pl.Element(g.halo_h), pl.Element(g.halo_w), pl.Element(g.head_dim_pad))
  return pl.BlockSpec(block, lambda b, i, j: (b, _halo_start(g, i, 0), _halo_start(g, j, 1), 0))


def _stat_shape(g: Geometry, bh: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((bh, g.n_tiles, 1, g.tile_q), jnp.float32)


def _stat_spec(g: Geometry, bh: int, index_map) -> pl.BlockSpec:
  return _spec(g, (None, None, 1, g.tile_q), index_map, _stat_shape(g, bh).shape, jnp.float32)


def _whole_spec(shape) -> pl.BlockSpec:
  """The whole [rest...] of one batch*head (GPU loops index into it)."""
  zeros = (0,) * (len(shape) - 1)
  return pl.BlockSpec((None,) + tuple(shape[1:]), lambda b, *_: (b,) + zeros)


def _pattern_inputs(g: Geometry, names):
  arrays = [jnp.asarray(_patterns(g)[n]) for n in names]
  specs = [_spec(g, a.shape, lambda *_: (0, 0), a.shape, a.dtype) for a in arrays]
  return arrays, specs


def _global_specs(g: Geometry, bh: int, dtype):
  shape = (bh, g.global_pad, g.head_dim_pad)
  return [
      _spec(g, (None, g.global_pad, g.head_dim_pad), lambda b, i, j: (b, 0, 0), shape, dtype)
  ] * 2


def _tile_index(b, i, j, *_):
  """Grid (batch*head, tile row, tile column, ...) -> block index of a [BH, Hp, Wp, dp] tile."""
  return (b, i, j, 0)


def _stat_index(g: Geometry):
  """Grid (batch*head, tile row, tile column) -> block index of a [BH, T, 1, TQ] statistic."""
  return lambda b, i, j: (b, i * g.n_tx + j, 0, 0)


def _query_tile_inputs(g: Geometry, q, k, v, kg, vg):
  """(inputs, BlockSpecs) every per-query-tile program reads: the position patterns, its query
  tile, the key / value halo around it and, with global tokens, all pooled keys / values."""
  bh = q.shape[0]
  patterns, in_specs = _pattern_inputs(g, ("qpy", "qpx", "hpy", "hpx"))
  inputs = [*patterns, q, k, v]
  in_specs += [_tile_spec(g, bh, q.dtype, _tile_index), _halo_spec(g), _halo_spec(g)]
  if g.has_global:
    inputs += [kg, vg]
    in_specs += _global_specs(g, bh, kg.dtype)
  return inputs, in_specs


def _per_query_tile(
    g: Geometry, kernel, q, inputs, in_specs, out_specs, out_shape, *, kind: str, name: str
):
  """`kernel` run once per (batch*head, query tile row, query tile column), all parallel."""
  bh = q.shape[0]
  return pl.pallas_call(
      functools.partial(kernel, g=g),
      grid=(bh, g.n_ty, g.n_tx),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_compiler_params(g, ("parallel",) * 3),
      interpret=g.interpret,
      cost_estimate=_cost(g, bh, q.dtype.itemsize, kind),
      name=name,
  )(*inputs)


def _forward(g: Geometry, q, k, v, kg, vg):
  """Maps [BH, Hp, Wp, dp] in; o (same shape) and lse, t_val, t_pos [BH, T, 1, TQ] out."""
  bh = q.shape[0]
  inputs, in_specs = _query_tile_inputs(g, q, k, v, kg, vg)
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)] + [_stat_shape(g, bh)] * 3
  out_specs = [_tile_spec(g, bh, q.dtype, _tile_index)] + [_stat_spec(g, bh, _stat_index(g))] * 3
  return _per_query_tile(
      g,
      _forward_kernel,
      q,
      inputs,
      in_specs,
      out_specs,
      out_shape,
      kind="forward",
      name="tea_attention_forward",
  )


def _backward_dq(g: Geometry, q, k, v, kg, vg, o, do, lse, t_val, t_pos):
  """dq [BH, Hp, Wp, dp] and delta = rowsum(o * do) [BH, T, 1, TQ]."""
  bh = q.shape[0]
  stat = _stat_index(g)
  inputs, in_specs = _query_tile_inputs(g, q, k, v, kg, vg)
  inputs += [o, do, lse, t_val, t_pos]
  in_specs += [_tile_spec(g, bh, o.dtype, _tile_index), _tile_spec(g, bh, do.dtype, _tile_index)]
  in_specs += [_stat_spec(g, bh, stat)] * 3
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), _stat_shape(g, bh)]
  out_specs = [_tile_spec(g, bh, q.dtype, _tile_index), _stat_spec(g, bh, stat)]
  return _per_query_tile(
      g,
      _backward_dq_kernel,
      q,
      inputs,
      in_specs,
      out_specs,
      out_shape,
      kind="dq",
      name="tea_attention_backward_dq",
  )


def _backward_dkv(g: Geometry, q, k, v, do, lse, delta, t_val, t_pos):
  """dk, dv [BH, Hp, Wp, dp], one program per key tile."""
  bh = q.shape[0]
  patterns, pattern_specs = _pattern_inputs(g, ("qpy", "qpx", "kpy", "kpx"))
  inputs = [k, v, q, do, lse, delta, t_val, t_pos]
  out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)]
  if g.backend == "tpu":

    def query(b, i, j, n):
      qy, qx, _ = _pair(g, i, j, n)
      return (b, qy, qx, 0)

    def stat(b, i, j, n):
      qy, qx, _ = _pair(g, i, j, n)
      return (b, qy * g.n_tx + qx, 0, 0)

    in_specs = pattern_specs + [_tile_spec(g, bh, k.dtype, _tile_index)] * 2
    in_specs += [_tile_spec(g, bh, q.dtype, query)] * 2 + [_stat_spec(g, bh, stat)] * 4
    out_specs = [_tile_spec(g, bh, k.dtype, _tile_index)] * 2
    scratch = [_vmem_f32((g.tile_q, g.head_dim_pad))] * 2
    kernel, grid = _backward_dkv_grid_kernel, (bh, g.n_ty, g.n_tx, g.span_y * g.span_x)
    params = _compiler_params(g, ("parallel", "parallel", "parallel", "arbitrary"))
  else:
    in_specs = pattern_specs + [_tile_spec(g, bh, k.dtype, _tile_index)] * 2
    in_specs += [_whole_spec(a.shape) for a in inputs[2:]]
    out_specs = [_tile_spec(g, bh, k.dtype, _tile_index)] * 2
    scratch = []
    kernel, grid = _backward_dkv_loop_kernel, (bh, g.n_ty, g.n_tx)
    params = _compiler_params(g, ("parallel",) * 3)
  return pl.pallas_call(
      functools.partial(kernel, g=g),
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=scratch,
      compiler_params=params,
      interpret=g.interpret,
      cost_estimate=_cost(g, bh, q.dtype.itemsize, "dkv"),
      name="tea_attention_backward_dkv",
  )(*patterns, *inputs)


def _vmem_f32(shape):
  """A float32 VMEM scratch buffer (TPU; interpret mode accepts it on CPU too)."""
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top

  return pltpu.VMEM(shape, jnp.float32)


def _backward_global(g: Geometry, q, do, lse, delta, kg, vg):
  """Pooled keys' gradients [BH, Gp, dp] (float32)."""
  bh, n_chunks = q.shape[0], _n_chunks(g)
  gshape = (bh, g.global_pad, g.head_dim_pad)
  if g.backend == "tpu":
    tile = lambda b, c, t: (b, _idiv(t, g.n_tx), _irem(t, g.n_tx), 0)
    stat = lambda b, c, t: (b, t, 0, 0)
    chunk = _spec(
        g, (None, g.global_block, g.head_dim_pad), lambda b, c, t: (b, c, 0), gshape, kg.dtype
    )
    in_specs = [_tile_spec(g, bh, q.dtype, tile)] * 2 + [_stat_spec(g, bh, stat)] * 2
    in_specs += [chunk] * 2
    out_shape = [jax.ShapeDtypeStruct(gshape, jnp.float32)] * 2
    out_specs = [chunk] * 2
    return pl.pallas_call(
        functools.partial(_backward_global_grid_kernel, g=g),
        grid=(bh, n_chunks, g.n_tiles),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(g, ("parallel", "parallel", "arbitrary")),
        interpret=g.interpret,
        cost_estimate=_cost(g, bh, q.dtype.itemsize, "global"),
        name="tea_attention_backward_global",
    )(q, do, lse, delta, kg, vg)
  groups = g.global_groups
  chunk = pl.BlockSpec((None, g.global_block, g.head_dim_pad), lambda b, c, r: (b, c, 0))
  part = pl.BlockSpec((None, None, g.global_block, g.head_dim_pad), lambda b, c, r: (b, r, c, 0))
  inputs = (q, do, lse, delta)
  in_specs = [_whole_spec(a.shape) for a in inputs] + [chunk] * 2
  out_shape = [jax.ShapeDtypeStruct((bh, groups, g.global_pad, g.head_dim_pad), jnp.float32)] * 2
  dkg, dvg = pl.pallas_call(
      functools.partial(_backward_global_group_kernel, g=g),
      grid=(bh, n_chunks, groups),
      in_specs=in_specs,
      out_specs=[part] * 2,
      out_shape=out_shape,
      compiler_params=_compiler_params(g, ("parallel",) * 3),
      interpret=g.interpret,
      cost_estimate=_cost(g, bh, q.dtype.itemsize, "global"),
      name="tea_attention_backward_global",
  )(*inputs, kg, vg)
  return dkg.sum(axis=1), dvg.sum(axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tea_maps(g: Geometry, q, k, v, kg, vg):
  """Fused TEA attention on [BH, Hp, Wp, dp] maps (+ pooled [BH, Gp, dp]) -> o (same shape)."""
  return _forward(g, q, k, v, kg, vg)[0]


def _tea_maps_fwd(g: Geometry, q, k, v, kg, vg):
  o, lse, t_val, t_pos = _forward(g, q, k, v, kg, vg)
  return o, (q, k, v, kg, vg, o, lse, t_val, t_pos)


def _tea_maps_bwd(g: Geometry, residuals, do):
  q, k, v, kg, vg, o, lse, t_val, t_pos = residuals
  dq, delta = _backward_dq(g, q, k, v, kg, vg, o, do, lse, t_val, t_pos)
  dk, dv = _backward_dkv(g, q, k, v, do, lse, delta, t_val, t_pos)
  dkg = dvg = None
  if g.has_global:
    dkg, dvg = (x.astype(kg.dtype) for x in _backward_global(g, q, do, lse, delta, kg, vg))
  return dq, dk, dv, dkg, dvg


_tea_maps.defvjp(_tea_maps_fwd, _tea_maps_bwd)


# ----------------------------------------------------------------------------- entry point


@functools.partial(jax.jit, static_argnames=("g", "pool"))
def _tea_pallas(q, k, v, *, g: Geometry, pool: int | None):
  b, height, width, heads, dim = q.shape
  bh = b * heads
  pads = ((0, 0), (0, g.pad_h - height), (0, g.pad_w - width), (0, g.head_dim_pad - dim))
  to_map = lambda x: jnp.pad(x.transpose(0, 3, 1, 2, 4).reshape(bh, height, width, dim), pads)
  kg = vg = None
  if g.has_global:

    def pooled(x):  # [B, G, h, d] -> [BH, Gp, dp]
      x = tea_reference.avg_pool_tokens(x, pool).transpose(0, 2, 1, 3).reshape(bh, -1, dim)
      return jnp.pad(x, ((0, 0), (0, g.global_pad - g.num_global), (0, g.head_dim_pad - dim)))

    kg, vg = pooled(k), pooled(v)
  o = _tea_maps(g, to_map(q), to_map(k), to_map(v), kg, vg)  # [BH, Hp, Wp, dp]
  o = o[:, :height, :width, :dim].reshape(b, heads, height, width, dim)
  return o.transpose(0, 2, 3, 1, 4)


def default_backend() -> str:
  """'gpu' or 'tpu' for the platform the program is traced for (`platform.trace_platform`: a TPU
  topology's during ahead-of-time compilation); 'gpu' conventions on CPU (interpret mode)."""
  return "tpu" if platform.trace_platform() == "tpu" else "gpu"


def tea_attention_pallas_unchecked(
    q,
    k,
    v,
    *,
    window: int,
    top_k: int,
    pool: int | None,
    interpret: bool = False,
    backend: str | None = None,
    block: tuple[int, int] | None = None,
    global_block: int | None = None,
    selection: str = "auto",
    num_warps: int | None = None,
    global_groups: int | None = None,
) -> jax.Array:
  """`tea_attention_pallas` for arguments already validated (pool: None or >= 1)."""
  g = make_geometry(
      q.shape,
      q.dtype,
      window=window,
      top_k=top_k,
      pool=pool,
      backend=backend or default_backend(),
      interpret=interpret,
      block=block,
      global_block=global_block,
      selection=selection,
      num_warps=num_warps,
      global_groups=global_groups,
  )
  return _tea_pallas(q, k, v, g=g, pool=pool)


def tea_attention_pallas(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    window: int,
    top_k: int,
    pool: int | None,
    interpret: bool = False,
    backend: str | None = None,
    block: tuple[int, int] | None = None,
    global_block: int | None = None,
    selection: str = "auto",
    num_warps: int | None = None,
    global_groups: int | None = None,
) -> jax.Array:
  """Fused TEA attention (same contract as `tea_attention`), with a Pallas custom VJP.

  backend: "gpu" (Triton) or "tpu" (Mosaic) conventions; None = the default JAX backend.
  block: (tile_h, tile_w) of the query tiles (default: `choose_tiles`); global_block: pooled
  keys per inner step; selection: "auto", "rounds" (k rounds of max) or "radix";
  num_warps (GPU) and global_groups (GPU pooled-key backward); all for tests/tuning.
  """
  pool = tea_reference.validate_tea_args(q, k, v, window=window, top_k=top_k, pool=pool)
  return tea_attention_pallas_unchecked(
      q,
      k,
      v,
      window=window,
      top_k=top_k,
      pool=pool,
      interpret=interpret,
      backend=backend,
      block=block,
      global_block=global_block,
      selection=selection,
      num_warps=num_warps,
      global_groups=global_groups,
  )
