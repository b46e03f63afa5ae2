"""Fused Pallas TEA attention (see `jaxmilab.kernels.tea` for the semantics) with a Pallas VJP.

Layout. Heads are folded into the batch ([B*h, ...]) and queries are cut into 2-D tiles of
tile_h x tile_w positions (the last tiles repeat the last row/column: their outputs are dropped
and their cotangents are zero). Each tile gets its key/value *halo*, the (tile_h + w - 1) x
(tile_w + w - 1) rectangle, clamped like the windows, that holds every window of the tile. The
tiling and halo gathers are plain differentiable JAX outside the kernels, so their transposes
(the overlap-add of halo gradients) come from autodiff. One program = one (batch*head, tile).

Forward kernel: scores of the tile against its halo; a window mask from the query/key
coordinates; the k-th largest score per query ("threshold", with the row-major position of the
last kept tie) found without sort/top_k (Mosaic and Triton lower neither): `top_k` rounds of
row max + row min-position for small k, otherwise an exact radix select on the
order-preserving int32 bit pattern of the scores (32 counting rounds) followed by a binary
search over tie positions. Then one softmax over the selected local scores and the pooled
global keys (online log-sum-exp merge over chunks of global keys); stores o, lse, threshold.

Backward (custom_vjp): kernel 1 (per query tile) recomputes the scores and the selection from
the stored threshold, the probabilities from the stored lse, and produces dq and the halo's
dk/dv; kernel 2 (per chunk of global keys) sums over all query tiles for the pooled keys'
dk/dv, as flash attention's dkv pass (GPU: a loop inside one program; TPU: an "arbitrary" grid
axis accumulating into the output block, so VMEM holds one tile at a time). The recomputed
scores use the same tiles and dot as the forward pass, so the selection is reproduced exactly
(on hardware, a dot that rounds differently between the two kernels could flip an exact
near-tie; the gradient is then that of the other, equally valid, selection).

Backends: "gpu" (Triton lowering: power-of-two tiles, halo and head_dim padded to powers of
two, fp32 inputs use IEEE fp32 dots), "tpu" (Mosaic: block shapes checked by
`check_tpu_block_shapes`, halo padded to a multiple of 128 lanes). On TPU the whole pooled K/V
of one (batch, head) sits in VMEM (fine up to a few thousand global keys).
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

from jaxmilab.kernels import tea as tea_lib

_ROUNDS_MAX_K = 16         # top_k <= this: k rounds of row max; above: radix select.
_PAD_COORD = -(1 << 20)    # coordinate of halo padding slots: never inside a window.
_INT_MIN = -(2**31)
_BIG_POS = float(1 << 24)  # larger than any halo position, exact in float32.
_GPU_MAX_SCORES = 32768    # tile_q * halo_pad fp32 scores per Triton program (128 KiB).


# ----------------------------------------------------------------------------- TPU legality


def check_tpu_block_shapes(block_shape: Sequence[int | None], array_shape: Sequence[int],
                           dtype) -> None:
  """Raises ValueError unless Mosaic (TPU) accepts this block of this array.

  The rule jax 0.10's Pallas TPU lowering enforces (jax/_src/pallas/mosaic/lowering.py, block
  checks): for rank >= 2 the last block dim must equal the array's or be a multiple of 128 and
  the second-to-last must equal the array's or be a multiple of 8 (None = squeezed = 1); a
  rank-1 block must equal the array, be a multiple of 8 * 128, or be a power of two at least
  128 * (32 // bitwidth). Interpret mode does not check this, so the kernels call it.
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
      raise ValueError(f"TPU block check: last dim must equal the array's or be a multiple "
                       f"of 128 (lanes), {where}.")
    if not (block[-2] == array[-2] or block[-2] % 8 == 0):
      raise ValueError(f"TPU block check: second-to-last dim must equal the array's or be a "
                       f"multiple of 8 (sublanes), {where}.")
    return
  bits = jnp.dtype(dtype).itemsize * 8
  min_tiling = 128 * max(1, 32 // bits)
  b = block[0]
  if not (b == array[0] or b % 1024 == 0 or (b >= min_tiling and b & (b - 1) == 0)):
    raise ValueError(f"TPU block check: a rank-1 block must equal the array, be a multiple of "
                     f"1024, or be a power of two >= {min_tiling}, {where}.")


# ----------------------------------------------------------------------------- geometry


def _next_pow2(n: int) -> int:
  return 1 << max(0, (n - 1).bit_length())


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


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
  halo_h: int
  halo_w: int
  halo_pad: int
  num_global: int      # 0: no global keys.
  global_pad: int
  global_block: int
  selection: str       # "all" | "rounds" | "radix"
  backend: str         # "gpu" | "tpu"
  interpret: bool

  @property
  def tile_q(self) -> int:
    return self.tile_h * self.tile_w

  @property
  def n_ty(self) -> int:
    return -(-self.height // self.tile_h)

  @property
  def n_tx(self) -> int:
    return -(-self.width // self.tile_w)

  @property
  def n_tiles(self) -> int:
    return self.n_ty * self.n_tx

  @property
  def scale(self) -> float:
    return 1.0 / math.sqrt(self.head_dim)

  @property
  def has_global(self) -> bool:
    return self.num_global > 0


def _halo_pad(backend: str, n: int) -> int:
  return _next_pow2(max(n, 16)) if backend == "gpu" else _round_up(n, 128)


def make_geometry(shape: Sequence[int], *, window: int, top_k: int, pool: int | None,
                  backend: str, interpret: bool, block: tuple[int, int] | None = None,
                  global_block: int | None = None, selection: str = "auto") -> Geometry:
  """Chooses tiles and paddings for `backend` ("gpu" or "tpu")."""
  _, height, width, _, head_dim = shape
  if backend not in ("gpu", "tpu"):
    raise ValueError(f"tea_attention_pallas: backend must be 'gpu' or 'tpu', got {backend!r}.")
  halo = lambda th, tw: (min(th + window - 1, height), min(tw + window - 1, width))
  if block is None:
    if backend == "tpu":
      block = (8, 16)
    else:  # Largest queries/halo ratio whose score tile fits the Triton register budget.
      best = None
      for th, tw in ((16, 16), (8, 16), (16, 8), (8, 8), (4, 8), (8, 4), (4, 4)):
        hp = _halo_pad("gpu", math.prod(halo(th, tw)))
        if th * tw * hp <= _GPU_MAX_SCORES and (best is None or th * tw / hp > best[0]):
          best = (th * tw / hp, (th, tw))
      block = best[1] if best else (4, 4)
  th, tw = (int(b) for b in block)
  if backend == "gpu" and (th & (th - 1) or tw & (tw - 1) or th * tw < 16):
    raise ValueError(f"tea_attention_pallas: GPU (Triton) tiles need power-of-two sides and "
                     f">= 16 queries, got block={block}.")
  if backend == "tpu" and (th * tw) % 8:
    raise ValueError(f"tea_attention_pallas: TPU tiles need a multiple of 8 queries, got "
                     f"block={block}.")
  hh, hw = halo(th, tw)
  num_global = 0 if pool is None else (height // pool) * (width // pool)
  if num_global:
    if global_block is None:
      global_block = (max(16, min(64, _next_pow2(num_global))) if backend == "gpu"
                      else min(128, _round_up(num_global, 8)))
    if backend == "gpu" and (global_block & (global_block - 1) or global_block < 16):
      raise ValueError(f"tea_attention_pallas: GPU global_block must be a power of two >= 16, "
                       f"got {global_block}.")
    if backend == "tpu" and global_block % 8:
      raise ValueError(f"tea_attention_pallas: TPU global_block must be a multiple of 8, got "
                       f"{global_block}.")
    global_pad = _round_up(num_global, global_block)
  else:
    global_block = global_pad = 0
  if selection == "auto":
    selection = ("all" if top_k == window * window else
                 "rounds" if top_k <= _ROUNDS_MAX_K else "radix")
  if selection not in ("all", "rounds", "radix"):
    raise ValueError(f"tea_attention_pallas: unknown selection {selection!r}.")
  if selection == "all" and top_k != window * window:
    raise ValueError("tea_attention_pallas: selection='all' needs top_k == window**2.")
  head_dim_pad = max(16, _next_pow2(head_dim)) if backend == "gpu" else head_dim
  return Geometry(height=height, width=width, window=window, top_k=top_k, head_dim=head_dim,
                  head_dim_pad=head_dim_pad, tile_h=th, tile_w=tw, halo_h=hh, halo_w=hw,
                  halo_pad=_halo_pad(backend, hh * hw), num_global=num_global,
                  global_pad=global_pad, global_block=global_block, selection=selection,
                  backend=backend, interpret=bool(interpret))


@functools.lru_cache(maxsize=64)
def _indices(g: Geometry) -> dict[str, np.ndarray]:
  """Static gather indices (flat pixel positions) and in-kernel coordinate patterns."""
  half = g.window // 2
  ty, tx = np.meshgrid(np.arange(g.n_ty), np.arange(g.n_tx), indexing="ij")
  ty, tx = ty.reshape(-1, 1), tx.reshape(-1, 1)                            # [T, 1]
  slot = np.arange(g.tile_q)
  qpy, qpx = slot // g.tile_w, slot % g.tile_w
  qy = np.minimum(ty * g.tile_h + qpy, g.height - 1)
  qx = np.minimum(tx * g.tile_w + qpx, g.width - 1)
  query = (qy * g.width + qx).reshape(-1)                                  # [T * TQ]
  hy0 = np.clip(ty * g.tile_h - half, 0, g.height - g.halo_h)
  hx0 = np.clip(tx * g.tile_w - half, 0, g.width - g.halo_w)
  pos = np.arange(g.halo_pad)
  inside = pos < g.halo_h * g.halo_w
  hpy = np.where(inside, pos // g.halo_w, _PAD_COORD)
  hpx = np.where(inside, pos % g.halo_w, _PAD_COORD)
  halo = np.where(inside, (hy0 + hpy) * g.width + (hx0 + hpx), 0).reshape(-1)  # [T * HKp]
  y, x = np.meshgrid(np.arange(g.height), np.arange(g.width), indexing="ij")
  tile = (y // g.tile_h) * g.n_tx + x // g.tile_w
  output = (tile * g.tile_q + (y % g.tile_h) * g.tile_w + x % g.tile_w).reshape(-1)  # [HW]
  i32 = lambda a: np.asarray(a, np.int32)
  return dict(query=i32(query), halo=i32(halo), output=i32(output),
              qpy=i32(qpy)[:, None], qpx=i32(qpx)[:, None],
              hpy=i32(hpy)[None, :], hpx=i32(hpx)[None, :])


# ----------------------------------------------------------------------------- kernel pieces


def _dot_nt(a, b):
  """a @ b.T with float32 accumulation: [M, K] x [N, K] -> [M, N]."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a, b):
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _scores(g: Geometry, q, k):
  s = _dot_nt(q, k) * g.scale                                              # [TQ, HKp]
  return jnp.where(s == 0.0, 0.0, s)                                       # -0 -> +0


def _window_mask(g: Geometry, qpy, qpx, hpy, hpx):
  """[TQ, HKp] bool: halo slot inside the query's clamped window (NATTEN convention)."""
  ty, tx = pl.program_id(1), pl.program_id(2)
  half = g.window // 2
  qy = jnp.minimum(ty * g.tile_h + qpy, g.height - 1)                     # [TQ, 1]
  qx = jnp.minimum(tx * g.tile_w + qpx, g.width - 1)
  wy = jnp.clip(qy - half, 0, g.height - g.window)
  wx = jnp.clip(qx - half, 0, g.width - g.window)
  ky = jnp.clip(ty * g.tile_h - half, 0, g.height - g.halo_h) + hpy        # [1, HKp]
  kx = jnp.clip(tx * g.tile_w - half, 0, g.width - g.halo_w) + hpx
  return (ky >= wy) & (ky < wy + g.window) & (kx >= wx) & (kx < wx + g.window)


def _count(mask):
  return jnp.sum(jnp.where(mask, 1.0, 0.0), axis=1, keepdims=True)       # [TQ, 1] f32


def _threshold(g: Geometry, s, valid):
  """k-th largest valid score per row and the halo position of the last kept tie ([TQ, 1])."""
  rows = s.shape[0]
  pos = lax.broadcasted_iota(jnp.int32, (1, g.halo_pad), 1)
  if g.selection == "all":
    return (jnp.full((rows, 1), -jnp.inf, jnp.float32),
            jnp.full((rows, 1), _BIG_POS, jnp.float32))
  if g.selection == "rounds":
    posf = pos.astype(jnp.float32)
    remaining = valid
    for _ in range(g.top_k):  # Each round removes the largest score (smallest position).
      m = jnp.max(jnp.where(remaining, s, -jnp.inf), axis=1, keepdims=True)
      i = jnp.min(jnp.where(remaining & (s == m), posf, _BIG_POS), axis=1, keepdims=True)
      remaining = remaining & (posf != i)
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

  t_key = lax.fori_loop(0, 32, value_round, jnp.zeros((rows, 1), jnp.int32)) ^ int_min
  ties = valid & (key == t_key)
  need = k - _count(valid & (key > t_key))                                 # >= 1 ties kept
  nbits = max(1, (g.halo_pad - 1).bit_length())

  def index_round(r, p):  # largest p with (#ties before position p) < need
    cand = p | jnp.left_shift(jnp.int32(1), nbits - 1 - r)
    return jnp.where(_count(ties & (pos < cand)) < need, cand, p)

  t_pos = lax.fori_loop(0, nbits, index_round, jnp.zeros((rows, 1), jnp.int32))
  t_bits = jnp.where(t_key < 0, t_key ^ 0x7FFFFFFF, t_key)
  return lax.bitcast_convert_type(t_bits, jnp.float32), t_pos.astype(jnp.float32)


def _selected(g: Geometry, s, valid, t_val, t_pos):
  posf = lax.broadcasted_iota(jnp.int32, (1, g.halo_pad), 1).astype(jnp.float32)
  return valid & ((s > t_val) | ((s == t_val) & (posf <= t_pos)))


def _global_chunk(g: Geometry, q, kg_ref, vg_ref, c):
  """Scores against global chunk c (padding masked to -inf) and its values."""
  start = pl.multiple_of(c * g.global_block, g.global_block)
  kg = kg_ref[pl.ds(start, g.global_block), :]                             # [BG, dp]
  vg = vg_ref[pl.ds(start, g.global_block), :]
  gid = start + lax.broadcasted_iota(jnp.int32, (1, g.global_block), 1)
  sg = jnp.where(gid < g.num_global, _dot_nt(q, kg) * g.scale, -jnp.inf)  # [TQ, BG]
  return sg, kg, vg


# ----------------------------------------------------------------------------- kernels


def _forward_kernel(qpy_ref, qpx_ref, hpy_ref, hpx_ref, q_ref, k_ref, v_ref, *refs,
                    g: Geometry):
  if g.has_global:
    kg_ref, vg_ref, o_ref, lse_ref, tval_ref, tpos_ref = refs
  else:
    o_ref, lse_ref, tval_ref, tpos_ref = refs
  q, k, v = q_ref[...], k_ref[...], v_ref[...]                             # [TQ|HKp, dp]
  s = _scores(g, q, k)                                                     # [TQ, HKp]
  valid = _window_mask(g, qpy_ref[...], qpx_ref[...], hpy_ref[...], hpx_ref[...])
  t_val, t_pos = _threshold(g, s, valid)
  sel = _selected(g, s, valid, t_val, t_pos)
  m = jnp.max(jnp.where(sel, s, -jnp.inf), axis=1, keepdims=True)          # [TQ, 1]
  p = jnp.where(sel, jnp.exp(s - m), 0.0)
  l = jnp.sum(p, axis=1, keepdims=True)
  acc = _dot(p.astype(v.dtype), v)                                         # [TQ, dp]
  if g.has_global:
    def body(c, carry):  # Online softmax over chunks of pooled keys.
      m, l, acc = carry
      sg, _, vg = _global_chunk(g, q, kg_ref, vg_ref, c)
      m_new = jnp.maximum(m, jnp.max(sg, axis=1, keepdims=True))
      alpha = jnp.exp(m - m_new)
      pg = jnp.exp(sg - m_new)
      return (m_new, alpha * l + jnp.sum(pg, axis=1, keepdims=True),
              alpha * acc + _dot(pg.astype(vg.dtype), vg))
    m, l, acc = lax.fori_loop(0, g.global_pad // g.global_block, body, (m, l, acc))
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)
  tval_ref[...] = t_val
  tpos_ref[...] = t_pos


def _backward_local_kernel(qpy_ref, qpx_ref, hpy_ref, hpx_ref, q_ref, k_ref, v_ref, *refs,
                           g: Geometry):
  if g.has_global:
    (kg_ref, vg_ref, do_ref, lse_ref, delta_ref, tval_ref, tpos_ref,
     dq_ref, dk_ref, dv_ref) = refs
  else:
    do_ref, lse_ref, delta_ref, tval_ref, tpos_ref, dq_ref, dk_ref, dv_ref = refs
  q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]                                # [TQ, 1]
  s = _scores(g, q, k)
  valid = _window_mask(g, qpy_ref[...], qpx_ref[...], hpy_ref[...], hpx_ref[...])
  sel = _selected(g, s, valid, tval_ref[...], tpos_ref[...])
  p = jnp.where(sel, jnp.exp(s - lse), 0.0)                                # [TQ, HKp]
  ds = p * (_dot_nt(do, v) - delta)
  dv_ref[...] = _dot(p.T.astype(do.dtype), do).astype(dv_ref.dtype)       # [HKp, dp]
  dk_ref[...] = (_dot(ds.T.astype(q.dtype), q) * g.scale).astype(dk_ref.dtype)
  dq = _dot(ds.astype(k.dtype), k)                                         # [TQ, dp]
  if g.has_global:
    def body(c, dq):
      sg, kg, vg = _global_chunk(g, q, kg_ref, vg_ref, c)
      pg = jnp.exp(sg - lse)
      dsg = pg * (_dot_nt(do, vg) - delta)
      return dq + _dot(dsg.astype(kg.dtype), kg)
    dq = lax.fori_loop(0, g.global_pad // g.global_block, body, dq)
  dq_ref[...] = (dq * g.scale).astype(dq_ref.dtype)


def _global_tile_grads(g: Geometry, q, do, lse, delta, kg, vg, gid):
  """One query tile's contribution to the pooled keys' (dk / scale, dv): [BG, dp] f32 each."""
  sg = _dot_nt(q, kg) * g.scale                                            # [TQ, BG]
  pg = jnp.where(gid < g.num_global, jnp.exp(sg - lse), 0.0)
  dsg = pg * (_dot_nt(do, vg) - delta)
  return _dot(dsg.T.astype(q.dtype), q), _dot(pg.T.astype(do.dtype), do)


def _backward_global_loop_kernel(q_ref, do_ref, lse_ref, delta_ref, kg_ref, vg_ref, dkg_ref,
                                 dvg_ref, *, g: Geometry):
  """GPU: one program per (batch*head, global chunk) loops over all query tiles."""
  kg, vg = kg_ref[...], vg_ref[...]                                        # [BG, dp]
  gid = pl.program_id(1) * g.global_block + lax.broadcasted_iota(
      jnp.int32, (1, g.global_block), 1)

  def body(t, carry):
    dk, dv = _global_tile_grads(g, q_ref[t], do_ref[t], lse_ref[t], delta_ref[t], kg, vg, gid)
    return carry[0] + dk, carry[1] + dv

  zeros = jnp.zeros((g.global_block, g.head_dim_pad), jnp.float32)
  dk, dv = lax.fori_loop(0, g.n_tiles, body, (zeros, zeros))
  dkg_ref[...] = dk * g.scale
  dvg_ref[...] = dv


def _backward_global_grid_kernel(q_ref, do_ref, lse_ref, delta_ref, kg_ref, vg_ref, dkg_ref,
                                 dvg_ref, *, g: Geometry):
  """TPU: query tiles are the innermost ("arbitrary") grid axis, accumulated in the outputs."""
  t = pl.program_id(2)

  @pl.when(t == 0)
  def _():
    dkg_ref[...] = jnp.zeros_like(dkg_ref)
    dvg_ref[...] = jnp.zeros_like(dvg_ref)

  gid = pl.program_id(1) * g.global_block + lax.broadcasted_iota(
      jnp.int32, (1, g.global_block), 1)
  dk, dv = _global_tile_grads(g, q_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
                              kg_ref[...], vg_ref[...], gid)
  dkg_ref[...] += dk * g.scale
  dvg_ref[...] += dv


# ----------------------------------------------------------------------------- pallas calls


def _compiler_params(g: Geometry, ndims: int):
  if g.interpret:
    return None
  if g.backend == "gpu":
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    return plgpu.CompilerParams(num_warps=4, num_stages=2)
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  return pltpu.CompilerParams(dimension_semantics=("parallel",) * ndims)


def _spec(g: Geometry, block, index_map, array: jax.ShapeDtypeStruct) -> pl.BlockSpec:
  if g.backend == "tpu":
    check_tpu_block_shapes(block, array.shape, array.dtype)
  return pl.BlockSpec(block, index_map)


def _sds(x) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _tile_specs(g: Geometry, arrays, rows_of):
  """Specs for per-tile arrays [BH, T, rows, cols] on the (bh, ty, tx) grid."""
  index = lambda b, i, j: (b, i * g.n_tx + j, 0, 0)
  return [_spec(g, (None, None, rows_of(a), a.shape[-1]), index, a) for a in arrays]


def _pattern_inputs(g: Geometry):
  idx = _indices(g)
  arrays = [jnp.asarray(idx[n]) for n in ("qpy", "qpx", "hpy", "hpx")]
  specs = [_spec(g, a.shape, lambda b, i, j: (0, 0), _sds(a)) for a in arrays]
  return arrays, specs


def _global_specs(g: Geometry, arrays):
  return [_spec(g, (None, g.global_pad, g.head_dim_pad), lambda b, i, j: (b, 0, 0), _sds(a))
          for a in arrays]


def _forward(g: Geometry, q_t, k_h, v_h, kg, vg):
  """Tiles in, (o_t [BH, T, TQ, dp], lse, t_val, t_pos [BH, T, TQ, 1] f32) out."""
  bh = q_t.shape[0]
  patterns, pattern_specs = _pattern_inputs(g)
  inputs = [q_t, k_h, v_h]
  in_specs = pattern_specs + _tile_specs(g, map(_sds, inputs), lambda a: a.shape[2])
  if g.has_global:
    inputs += [kg, vg]
    in_specs += _global_specs(g, [kg, vg])
  stat = jax.ShapeDtypeStruct((bh, g.n_tiles, g.tile_q, 1), jnp.float32)
  out_shape = [jax.ShapeDtypeStruct(q_t.shape, q_t.dtype), stat, stat, stat]
  out_specs = _tile_specs(g, out_shape, lambda a: g.tile_q)
  return pl.pallas_call(
      functools.partial(_forward_kernel, g=g), grid=(bh, g.n_ty, g.n_tx),
      in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=_compiler_params(g, 3), interpret=g.interpret,
      name="tea_attention_forward")(*patterns, *inputs)


def _backward_local(g: Geometry, q_t, k_h, v_h, kg, vg, do_t, lse, delta, t_val, t_pos):
  bh = q_t.shape[0]
  patterns, pattern_specs = _pattern_inputs(g)
  in_specs = pattern_specs + _tile_specs(g, map(_sds, [q_t, k_h, v_h]), lambda a: a.shape[2])
  inputs = [q_t, k_h, v_h]
  if g.has_global:
    inputs += [kg, vg]
    in_specs += _global_specs(g, [kg, vg])
  rest = [do_t, lse, delta, t_val, t_pos]
  inputs += rest
  in_specs += _tile_specs(g, map(_sds, rest), lambda a: g.tile_q)
  out_shape = [_sds(q_t), _sds(k_h), _sds(v_h)]
  out_specs = _tile_specs(g, out_shape, lambda a: a.shape[2])
  return pl.pallas_call(
      functools.partial(_backward_local_kernel, g=g), grid=(bh, g.n_ty, g.n_tx),
      in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=_compiler_params(g, 3), interpret=g.interpret,
      name="tea_attention_backward_local")(*patterns, *inputs)


def _backward_global(g: Geometry, q_t, kg, vg, do_t, lse, delta):
  """Pooled keys' gradients [BH, Gp, dp] (float32)."""
  bh, n_chunks = q_t.shape[0], g.global_pad // g.global_block
  out_shape = [jax.ShapeDtypeStruct(kg.shape, jnp.float32)] * 2
  inputs = (q_t, do_t, lse, delta, kg, vg)
  if g.backend == "gpu":
    whole = lambda a: _spec(g, (None,) + a.shape[1:], lambda b, c: (b, 0, 0, 0), _sds(a))
    chunk = lambda a: _spec(g, (None, g.global_block, g.head_dim_pad), lambda b, c: (b, c, 0),
                            _sds(a))
    kernel, grid, params = _backward_global_loop_kernel, (bh, n_chunks), _compiler_params(g, 2)
  else:
    whole = lambda a: _spec(g, (None, None) + a.shape[2:], lambda b, c, t: (b, t, 0, 0),
                            _sds(a))
    chunk = lambda a: _spec(g, (None, g.global_block, g.head_dim_pad),
                            lambda b, c, t: (b, c, 0), _sds(a))
    kernel, grid = _backward_global_grid_kernel, (bh, n_chunks, g.n_tiles)
    params = None
    if not g.interpret:
      from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
      params = pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary"))
  return pl.pallas_call(
      functools.partial(kernel, g=g), grid=grid,
      in_specs=[whole(a) for a in inputs[:4]] + [chunk(a) for a in inputs[4:]],
      out_specs=[chunk(a) for a in out_shape], out_shape=out_shape,
      compiler_params=params, interpret=g.interpret,
      name="tea_attention_backward_global")(*inputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tea_tiles(g: Geometry, q_t, k_h, v_h, kg, vg):
  """Fused TEA attention on tiles: q_t [BH, T, TQ, dp], halos [BH, T, HKp, dp] -> o_t."""
  return _forward(g, q_t, k_h, v_h, kg, vg)[0]


def _tea_tiles_fwd(g: Geometry, q_t, k_h, v_h, kg, vg):
  o_t, lse, t_val, t_pos = _forward(g, q_t, k_h, v_h, kg, vg)
  return o_t, (q_t, k_h, v_h, kg, vg, o_t, lse, t_val, t_pos)


def _tea_tiles_bwd(g: Geometry, residuals, do_t):
  q_t, k_h, v_h, kg, vg, o_t, lse, t_val, t_pos = residuals
  delta = jnp.sum(o_t.astype(jnp.float32) * do_t.astype(jnp.float32), axis=-1,
                  keepdims=True)                                           # [BH, T, TQ, 1]
  dq_t, dk_h, dv_h = _backward_local(g, q_t, k_h, v_h, kg, vg, do_t, lse, delta, t_val, t_pos)
  dkg = dvg = None
  if g.has_global:
    dkg, dvg = (x.astype(kg.dtype) for x in _backward_global(g, q_t, kg, vg, do_t, lse, delta))
  return dq_t, dk_h, dv_h, dkg, dvg


_tea_tiles.defvjp(_tea_tiles_fwd, _tea_tiles_bwd)


# ----------------------------------------------------------------------------- entry point


@functools.partial(jax.jit, static_argnames=("g", "pool"))
def _tea_pallas(q, k, v, *, g: Geometry, pool: int | None):
  b, height, width, heads, dim = q.shape
  bh, hw = b * heads, height * width
  pad_d = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, g.head_dim_pad - dim)])
  flat = lambda x: pad_d(x.transpose(0, 3, 1, 2, 4).reshape(bh, hw, dim))  # [BH, HW, dp]
  idx = _indices(g)
  q_t = jnp.take(flat(q), idx["query"], axis=1).reshape(bh, g.n_tiles, g.tile_q, -1)
  k_h = jnp.take(flat(k), idx["halo"], axis=1).reshape(bh, g.n_tiles, g.halo_pad, -1)
  v_h = jnp.take(flat(v), idx["halo"], axis=1).reshape(bh, g.n_tiles, g.halo_pad, -1)
  kg = vg = None
  if g.has_global:
    def pooled(x):  # [B, G, h, d] -> [BH, Gp, dp]
      x = tea_lib.avg_pool_tokens(x, pool).transpose(0, 2, 1, 3).reshape(bh, -1, dim)
      return jnp.pad(pad_d(x), ((0, 0), (0, g.global_pad - g.num_global), (0, 0)))
    kg, vg = pooled(k), pooled(v)
  o_t = _tea_tiles(g, q_t, k_h, v_h, kg, vg)                               # [BH, T, TQ, dp]
  o = jnp.take(o_t.reshape(bh, -1, g.head_dim_pad), idx["output"], axis=1)[..., :dim]
  return o.reshape(b, heads, height, width, dim).transpose(0, 2, 3, 1, 4)


def default_backend() -> str:
  """'gpu' or 'tpu' for the default JAX backend ('gpu' conventions on CPU)."""
  return "tpu" if jax.default_backend() == "tpu" else "gpu"


def tea_attention_pallas(q: jax.Array, k: jax.Array, v: jax.Array, *, window: int,
                         top_k: int, pool: int | None, interpret: bool = False,
                         backend: str | None = None, block: tuple[int, int] | None = None,
                         global_block: int | None = None,
                         selection: str = "auto") -> jax.Array:
  """Fused TEA attention (same contract as `tea.tea_attention`), with a Pallas custom VJP.

  backend: "gpu" (Triton) or "tpu" (Mosaic) conventions; None = the default JAX backend.
  block: (tile_h, tile_w) of the query tiles; global_block: pooled keys per inner step;
  selection: "auto", "rounds" (k rounds of row max) or "radix"; all three for tests/tuning.
  """
  pool = tea_lib.validate_tea_args(q, k, v, window=window, top_k=top_k, pool=pool)
  g = make_geometry(q.shape, window=window, top_k=top_k, pool=pool,
                    backend=backend or default_backend(), interpret=interpret, block=block,
                    global_block=global_block, selection=selection)
  return _tea_pallas(q, k, v, g=g, pool=pool)
