"""TEA kernel v2: halo index maps at borders, key-tile backward ranges, shard_map, precision.

The index maths is checked against brute-force enumerations of the clamped windows (numpy);
the kernels against the XLA reference in interpret mode (values and gradients) on maps whose
sides are not multiples of the tile and where windows are clamped at every border.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmilab.kernels import tea_api
from jaxmilab.kernels import tea_pallas
from jaxmilab.kernels import tea_reference


def _starts(size, window):
  return np.clip(np.arange(size) - window // 2, 0, size - window)


GEOMETRIES = [
    # (height, width, window, backend, dtype, block)
    (11, 13, 5, "tpu", jnp.float32, (4, 8)),
    (9, 24, 7, "tpu", jnp.bfloat16, (8, 16)),
    (128, 128, 15, "tpu", jnp.float32, None),
    (128, 128, 15, "tpu", jnp.bfloat16, None),
    (10, 7, 7, "gpu", jnp.float32, (4, 4)),
    (37, 29, 9, "gpu", jnp.float32, (2, 8)),
    (64, 64, 15, "gpu", jnp.bfloat16, None),
    (8, 8, 3, "gpu", jnp.float32, (8, 8)),
]


def _geometry(h, w, window, backend, dtype, block, top_k=3, pool=None):
  return tea_pallas.make_geometry(
      (1, h, w, 1, 32),
      dtype,
      window=window,
      top_k=top_k,
      pool=pool,
      backend=backend,
      interpret=True,
      block=block,
  )


@pytest.mark.parametrize("h,w,window,backend,dtype,block", GEOMETRIES)
def test_halo_reads_cover_every_window_and_stay_in_bounds(h, w, window, backend, dtype, block):
  g = _geometry(h, w, window, backend, dtype, block)
  for axis, size, tile, n_t, read, pad in (
      (0, h, g.tile_h, g.n_ty, g.halo_h, g.pad_h),
      (1, w, g.tile_w, g.n_tx, g.halo_w, g.pad_w),
  ):
    ws = _starts(size, window)
    for t in range(n_t):
      start = int(tea_pallas._halo_start(g, jnp.int32(t), axis))
      rows = np.minimum(np.arange(t * tile, (t + 1) * tile), size - 1)  # padded -> clamped
      assert start <= ws[rows].min() and ws[rows].max() + window <= start + read, (axis, t)
      assert start + read <= pad, (axis, t, start, read, pad)
      if axis == 1 and backend == "tpu":
        assert start % (16 if dtype == jnp.bfloat16 else 8) == 0  # Mosaic DMA alignment
  assert g.pad_h % g.tile_h == 0 and g.pad_w % g.tile_w == 0


@pytest.mark.parametrize(
    "size,tile,window",
    [
        (11, 4, 5),
        (13, 8, 5),
        (128, 8, 15),
        (128, 16, 15),
        (7, 4, 7),
        (37, 2, 9),
        (9, 8, 3),
        (30, 4, 1),
    ],
)
def test_key_tile_visits_exactly_the_query_tiles_that_reach_it(size, tile, window):
  ws = _starts(size, window)
  n_t = -(-size // tile)
  g = tea_pallas.make_geometry(
      (1, size, size, 1, 4),
      jnp.float32,
      window=window,
      top_k=1,
      pool=None,
      backend="gpu",
      interpret=True,
      block=(tile, tile) if tile & (tile - 1) == 0 and tile * tile >= 16 else (4, 4),
  )
  for kt in range(n_t):
    keys = np.arange(kt * tile, min((kt + 1) * tile, size))
    reach = [r for r in range(size) if np.any((ws[r] <= keys) & (keys < ws[r] + window))]
    want = (min(reach) // tile, max(reach) // tile)
    assert tea_pallas._query_tile_range(size, tile, window, kt) == want, kt
    if tile == g.tile_h:
      lo, hi = tea_pallas._q_range(g, jnp.int32(kt), 0)
      assert (int(lo), int(hi)) == want
      assert want[1] - want[0] + 1 <= g.span_y


def _inputs(seed, shape):
  rng = np.random.default_rng(seed)
  q, k = (
      np.round(rng.normal(size=shape) * 8).clip(-24, 24).astype(np.float32) / 8 for _ in range(2)
  )
  return jnp.asarray(q), jnp.asarray(k), jnp.asarray(rng.normal(size=shape), jnp.float32)


def _vjp(fn, q, k, v, proj):
  out, pullback = jax.vjp(fn, q, k, v)
  return out, pullback(proj)


BORDER_CASES = {
    # name: (shape, window, top_k, pool, backend, block)
    "tpu_11x13_not_tile_multiple": ((1, 11, 13, 2, 4), 5, 6, None, "tpu", (4, 8)),
    "gpu_10x7_window_is_width": ((1, 10, 7, 1, 4), 7, 10, 1, "gpu", (4, 4)),
    "tpu_9x24_radix_pool3": ((2, 9, 24, 1, 4), 7, 20, 3, "tpu", (8, 8)),
}
_SLOW_BORDER_CASES = ("tpu_9x24_radix_pool3",)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_BORDER_CASES else n
        for n in BORDER_CASES
    ],
)
def test_pallas_borders_forward_and_gradients(name):
  shape, window, top_k, pool, backend, block = BORDER_CASES[name]
  q, k, v = _inputs(3, shape)
  proj = jax.random.normal(jax.random.key(1), shape)
  fn = lambda q, k, v: tea_pallas.tea_attention_pallas(
      q,
      k,
      v,
      window=window,
      top_k=top_k,
      pool=pool,
      interpret=True,
      backend=backend,
      block=block,
      global_block=8 if backend == "tpu" else 16,
  )
  ref = lambda q, k, v: tea_reference.tea_attention_reference(
      q, k, v, window=window, top_k=top_k, pool=pool
  )
  out, grads = jax.jit(lambda *a: _vjp(fn, *a, proj))(q, k, v)
  want, want_grads = jax.jit(lambda *a: _vjp(ref, *a, proj))(q, k, v)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-5, rtol=2e-5)
  for got, exp in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(exp), atol=5e-5, rtol=5e-5)


@pytest.mark.slow
def test_gpu_pooled_key_backward_groups_sum_to_the_same_gradient():
  # One group (a serial loop over every tile) vs many groups (partial sums added by XLA).
  shape = (1, 8, 16, 1, 4)
  q, k, v = _inputs(5, shape)
  proj = jax.random.normal(jax.random.key(2), shape)
  grads = []
  for groups in (1, 5):
    fn = lambda q, k, v, n=groups: tea_pallas.tea_attention_pallas(
        q,
        k,
        v,
        window=3,
        top_k=2,
        pool=2,
        interpret=True,
        backend="gpu",
        block=(4, 4),
        global_block=16,
        global_groups=n,
    )
    grads.append(jax.jit(lambda *a, f=fn: _vjp(f, *a, proj)[1])(q, k, v))
  assert (
      tea_pallas.make_geometry(
          shape,
          jnp.float32,
          window=3,
          top_k=2,
          pool=2,
          backend="gpu",
          interpret=True,
          block=(4, 4),
          global_groups=5,
      ).global_groups
      == 5
  )
  for a, b in zip(*grads):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_backward_has_no_scatter_and_no_halo_residuals():
  # v1 gathered halos with jnp.take (8x K/V here) and scatter-added their gradients.
  x = jax.ShapeDtypeStruct((1, 64, 64, 2, 32), jnp.float32)
  fn = lambda q, k, v: jnp.sum(
      tea_pallas.tea_attention_pallas(q, k, v, window=15, top_k=8, pool=4, backend="tpu")
  )
  text = (
      jax.jit(jax.grad(fn, argnums=(0, 1, 2)))
      .trace(x, x, x)
      .lower(lowering_platforms=("tpu",))
      .as_text()
  )
  assert "scatter" not in text and "gather" not in text
  for name in (
      "tea_attention_forward",
      "tea_attention_backward_dq",
      "tea_attention_backward_dkv",
      "tea_attention_backward_global",
  ):
    assert name in text, name
  _, residuals = jax.vjp(
      lambda q, k, v: tea_pallas._tea_maps(
          tea_pallas.make_geometry(
              (1, 64, 64, 1, 32),
              jnp.float32,
              window=15,
              top_k=8,
              pool=None,
              backend="tpu",
              interpret=True,
          ),
          q,
          k,
          v,
          None,
          None,
      ),
      *(jnp.zeros((2, 64, 64, 32)),) * 3,
  )
  sizes = [leaf.size for leaf in jax.tree.leaves(residuals)]
  assert max(sizes) <= 2 * 64 * 64 * 32, sizes  # nothing bigger than one [BH, H, W, d] map


@pytest.mark.parametrize("dtype,highest", [(jnp.float32, True), (jnp.bfloat16, False)])
def test_float32_kernel_dots_use_highest_precision(dtype, highest):
  x = jnp.zeros((1, 8, 16, 1, 16), dtype)
  fn = lambda q, k, v: tea_pallas.tea_attention_pallas(
      q, k, v, window=3, top_k=2, pool=2, interpret=True, backend="gpu"
  )
  text = str(
      jax.make_jaxpr(
          jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), argnums=(0, 1, 2))
      )(x, x, x)
  )
  n_dots = text.count("dot_general")
  n_highest = text.count("Precision.HIGHEST")
  assert n_dots >= 10
  assert (n_highest >= n_dots) if highest else n_highest == 0, (n_dots, n_highest)


def test_autotune_table_respects_score_budgets():
  for row in tea_pallas.autotune_table():
    th, tw = row["tile"]
    if row["backend"] == "gpu":
      assert row["scores"] <= (16384 if row["num_warps"] == 4 else 32768), row
      assert th * tw >= 16
    else:
      assert th * tw >= 128 and row["scores"] <= 256 * 1024, row
      assert tw % (16 if row["dtype"] == "bfloat16" else 8) == 0


def test_pallas_under_mesh_runs_per_device_slice():
  devices = jax.devices()
  if len(devices) < 8:
    pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
  mesh = jax.make_mesh((4, 2, 1), ("data", "fsdp", "model"), devices=devices[:8])
  shape = (8, 8, 8, 1, 4)
  q, k, v = _inputs(9, shape)
  fn = lambda q, k, v: jnp.sum(
      tea_api.tea_attention(
          q, k, v, window=3, top_k=2, pool=None, implementation="pallas", interpret=True
      )
      ** 2
  )
  want_loss, want_grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(q, k, v)
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  args = [jax.device_put(x, sharding) for x in (q, k, v)]
  with jax.set_mesh(mesh):
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
    hlo = step.lower(*args).compile().as_text()
    loss, grads = step(*args)
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  assert "f32[1,8,8,1,4]" in hlo and "f32[8,8,8,1,4]" not in hlo  # per-device slices only
  np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
  for got, exp in zip(grads, want_grads):
    assert got.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(got), np.asarray(exp), atol=1e-5, rtol=1e-5)
  # The trainer's mesh (jax.sharding.Mesh: Auto axes) with replicated inputs, and a call from
  # inside an enclosing shard_map (axes already Manual; a pallas_call inside shard_map needs
  # check_vma=False, as for any Pallas kernel): same values.
  auto = jax.sharding.Mesh(np.asarray(devices[:8]).reshape(4, 2, 1), ("data", "fsdp", "model"))
  with jax.set_mesh(auto):
    loss_auto = jax.jit(fn)(q, k, v)
    inner = jax.shard_map(
        lambda q, k, v: fn(q, k, v)[None],
        in_specs=P(("data", "fsdp")),
        out_specs=P(("data", "fsdp")),
        check_vma=False,
    )
    loss_inner = jax.jit(inner)(q, k, v).sum()
  np.testing.assert_allclose(float(loss_auto), float(want_loss), rtol=1e-5)
  np.testing.assert_allclose(float(loss_inner), float(want_loss), rtol=1e-5)


def _tpu_topology():
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # AOT compiles only: share libtpu with other processes instead of failing on its lockfile.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    return topologies.get_topology_desc(
        platform="tpu", topology_name="v5e:1x1", chips_per_host_bounds=(1, 1, 1), num_slices=1
    )
  except Exception as e:  # pylint: disable=broad-except  (libtpu present but unusable here)
    pytest.skip(f"no TPU topology from libtpu: {e}")


@pytest.mark.slow
@pytest.mark.libtpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_and_both_backward_kernels_compile_for_tpu_v5e(dtype):
  topology = _tpu_topology()
  sharding = jax.sharding.SingleDeviceSharding(topology.devices[0])
  x = jax.ShapeDtypeStruct((1, 64, 64, 2, 32), dtype, sharding=sharding)
  for top_k, pool in ((32, 4), (8, None)):  # radix select + global keys; max rounds
    fn = lambda q, k, v: jnp.sum(
        tea_pallas.tea_attention_pallas(
            q, k, v, window=15, top_k=top_k, pool=pool, backend="tpu"
        ).astype(jnp.float32)
    )
    compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(x, x, x).compile()
    text = compiled.as_text()
    for name in (
        "tea_attention_forward",
        "tea_attention_backward_dq",
        "tea_attention_backward_dkv",
    ):
      assert name in text, name
    assert ("tea_attention_backward_global" in text) == bool(pool)
    # q, k, v, o, do, dq, dk, dv maps at most (16 MiB here), never 8x halos.
    assert compiled.memory_analysis().temp_size_in_bytes < 16 * 2**20
    # The kernels' cost estimates reach XLA's cost analysis (custom calls count 0 otherwise):
    # at least the forward's local QK^T and PV FLOPs (2 heads x 4 x scores x head_dim).
    g = tea_pallas.make_geometry(
        x.shape, dtype, window=15, top_k=top_k, pool=pool, backend="tpu", interpret=False
    )
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    assert ca["flops"] >= 2 * 4 * g.n_tiles * g.tile_q * g.halo_k * 32, ca["flops"]
