"""TEA attention: reference vs a brute-force loop, vs masked dense attention, Pallas vs reference.

Inputs that decide the top-k selection are multiples of 1/8 with head_dim 4 (scale 1/2), so
every score is exact in float32 and float64: the float64 brute force and the float32
implementations see the same order and the same ties.
"""

from __future__ import annotations

import inspect

import jax
from jax.experimental import pallas as pl
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmilab.kernels
from jaxmilab.kernels import tea_attention
from jaxmilab.kernels import tea_pallas
from jaxmilab.kernels import tea_reference

# ----------------------------------------------------------------------------- helpers


def _inputs(seed: int, shape, kind: str):
  """q, k (exact-score values: 'grid' = multiples of 1/8, 'ties' = {-1, 0, 1}), v normal."""
  rng = np.random.default_rng(seed)
  if kind == "ties":
    q, k = (rng.integers(-1, 2, shape).astype(np.float32) for _ in range(2))
  else:
    q, k = (
        np.round(rng.normal(size=shape) * 8).clip(-24, 24).astype(np.float32) / 8 for _ in range(2)
    )
  v = rng.normal(size=shape).astype(np.float32)
  return q, k, v


def _brute_force(q, k, v, window, top_k, pool):
  """One query at a time, straight from the definition (float64, stable sort on -score)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b_, h_, w_, heads, dim = q.shape
  scale = 1.0 / np.sqrt(dim)
  if pool:
    k_g = k.reshape(b_, h_ // pool, pool, w_ // pool, pool, heads, dim).mean((2, 4))
    v_g = v.reshape(b_, h_ // pool, pool, w_ // pool, pool, heads, dim).mean((2, 4))
    k_g, v_g = k_g.reshape(b_, -1, heads, dim), v_g.reshape(b_, -1, heads, dim)
  out = np.zeros_like(q)
  for b in range(b_):
    for i in range(h_):
      for j in range(w_):
        y0 = min(max(i - window // 2, 0), h_ - window)
        x0 = min(max(j - window // 2, 0), w_ - window)
        cand = [(y, x) for y in range(y0, y0 + window) for x in range(x0, x0 + window)]
        for h in range(heads):
          s = np.array([q[b, i, j, h] @ k[b, y, x, h] for y, x in cand]) * scale
          keep = np.argsort(-s, kind="stable")[:top_k]  # equal scores: smaller index first
          logits = list(s[keep])
          values = [v[b, cand[n][0], cand[n][1], h] for n in keep]
          if pool:
            logits += list(k_g[b, :, h] @ q[b, i, j, h] * scale)
            values += list(v_g[b, :, h])
          p = np.exp(np.array(logits) - max(logits))
          out[b, i, j, h] = (p / p.sum()) @ np.array(values)
  return out


def _window_mask(height, width, window):
  """[HW, HW] bool: key inside the query's clamped window (kernels/tea_reference.py docstring)."""
  start = lambda i, n: min(max(i - window // 2, 0), n - window)
  mask = np.zeros((height * width, height * width), bool)
  for i in range(height):
    for j in range(width):
      y0, x0 = start(i, height), start(j, width)
      for y in range(y0, y0 + window):
        mask[i * width + j, y * width + x0 : y * width + x0 + window] = True
  return mask


# ----------------------------------------------------------------------------- reference


BRUTE_CASES = {
    # name: (batch, height, width, heads, head_dim, window, top_k, pool, inputs)
    "odd_9x11_borders": (1, 9, 11, 2, 4, 5, 7, None, "grid"),
    "ties_pool2_3heads": (2, 6, 8, 3, 4, 3, 4, 2, "ties"),
    "top1_pool1": (1, 5, 7, 1, 4, 5, 1, 1, "grid"),
    "ties_top1": (1, 6, 6, 2, 4, 3, 1, None, "ties"),
    "window_is_map": (1, 5, 5, 1, 4, 5, 13, 5, "ties"),
}


@pytest.mark.parametrize("name", list(BRUTE_CASES))
def test_reference_matches_brute_force(name):
  b, h, w, heads, d, window, top_k, pool, kind = BRUTE_CASES[name]
  q, k, v = _inputs(len(name), (b, h, w, heads, d), kind)
  got = tea_attention(
      jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), window=window, top_k=top_k, pool=pool
  )
  np.testing.assert_allclose(
      np.asarray(got), _brute_force(q, k, v, window, top_k, pool), atol=2e-5, rtol=2e-5
  )


def test_window_one_attends_to_itself():
  q, k, v = _inputs(0, (1, 4, 5, 2, 4), "grid")
  got = tea_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), window=1, top_k=1, pool=None)
  np.testing.assert_allclose(np.asarray(got), v, atol=1e-6)


def test_tie_break_prefers_smaller_row_major_index():
  # All scores equal (k = 0): top_k=2 must pick the first two keys of the clamped window.
  shape = (1, 4, 4, 1, 4)
  q = jnp.ones(shape)
  k = jnp.zeros(shape)
  v = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4, 1, 1) * jnp.ones(shape)
  got = np.asarray(tea_attention(q, k, v, window=3, top_k=2, pool=None))[0, :, :, 0, 0]
  start = np.clip(np.arange(4) - 1, 0, 1)
  # Window rows start at start[i], columns at start[j]: first two keys (y0, x0), (y0, x0 + 1).
  want = np.array([[start[i] * 4 + start[j] + 0.5 for j in range(4)] for i in range(4)])
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("pool", [None, 3])
def test_full_top_k_is_masked_dense_attention(pool):
  b, h, w, heads, d, window = 1, 6, 9, 2, 8, 3
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(rng.normal(size=(b, h, w, heads, d)), jnp.float32) for _ in range(3))
  got = tea_attention(q, k, v, window=window, top_k=window * window, pool=pool)
  flat = lambda x: x.reshape(b, h * w, heads, d)
  keys, values, mask = flat(k), flat(v), _window_mask(h, w, window)
  if pool:  # Global keys: r x r means, visible to every query.
    pooled = lambda x: x.reshape(b, h // pool, pool, w // pool, pool, heads, d).mean((2, 4))
    keys = jnp.concatenate([keys, pooled(k).reshape(b, -1, heads, d)], axis=1)
    values = jnp.concatenate([values, pooled(v).reshape(b, -1, heads, d)], axis=1)
    mask = np.concatenate([mask, np.ones((h * w, keys.shape[1] - h * w), bool)], axis=1)
  want = jax.nn.dot_product_attention(flat(q), keys, values, mask=jnp.asarray(mask)[None, None])
  np.testing.assert_allclose(np.asarray(got), np.asarray(want).reshape(got.shape), atol=2e-5)


def test_xla_path_never_builds_hw_by_hw():
  # 64x64 tokens: an [HW, HW] f32 score matrix alone would be 64 MiB.
  shape = (1, 64, 64, 1, 4)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  fn = lambda q, k, v: jnp.sum(tea_attention(q, k, v, window=3, top_k=4, pool=None))
  compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(x, x, x).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < (64 * 64) ** 2 * 4 // 16, temp


def test_public_signature():
  """The contract others call: q, k, v positional; the rest keyword-only with these defaults."""
  params = inspect.signature(jaxmilab.kernels.tea_attention).parameters
  assert [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD] == ["q", "k", "v"]
  keyword = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
  empty = inspect.Parameter.empty
  assert keyword == {
      "window": empty,
      "top_k": empty,
      "pool": empty,
      "implementation": "xla",
      "interpret": False,
  }


# ----------------------------------------------------------------------------- pallas


PALLAS_CASES = {
    # name: (shape, window, top_k, pool, inputs, backend, block, global_block, selection)
    "gpu_rounds_global_9x11": ((1, 9, 11, 2, 4), 5, 3, 1, "grid", "gpu", (4, 4), 16, "auto"),
    "tpu_radix_ties_pool2": ((2, 6, 8, 1, 4), 5, 20, 2, "ties", "tpu", (2, 8), 8, "auto"),
    "gpu_all_pool4_borders": ((1, 8, 8, 2, 4), 3, 9, 4, "grid", "gpu", (4, 4), None, "auto"),
}


def _pallas_fn(window, top_k, pool, backend, block, global_block, selection):
  return lambda q, k, v: tea_pallas.tea_attention_pallas(
      q,
      k,
      v,
      window=window,
      top_k=top_k,
      pool=pool,
      interpret=True,
      backend=backend,
      block=block,
      global_block=global_block,
      selection=selection,
  )


def _out_and_grads(fn, q, k, v, proj):
  @jax.jit
  def run(q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(proj)  # gradients of <out, proj> w.r.t. q, k, v

  return run(q, k, v)


@pytest.mark.parametrize("name", list(PALLAS_CASES))
def test_pallas_matches_reference_forward_and_gradients(name):
  shape, window, top_k, pool, kind, backend, block, global_block, selection = PALLAS_CASES[name]
  q, k, v = (jnp.asarray(x) for x in _inputs(7, shape, kind))
  proj = jax.random.normal(jax.random.key(3), shape)
  ref = lambda q, k, v: tea_reference.tea_attention_reference(
      q, k, v, window=window, top_k=top_k, pool=pool
  )
  fn = _pallas_fn(window, top_k, pool, backend, block, global_block, selection)
  out, grads = _out_and_grads(fn, q, k, v, proj)
  want_out, want_grads = _out_and_grads(ref, q, k, v, proj)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), atol=2e-5, rtol=2e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-5, rtol=5e-5)


def test_pallas_row_max_rounds_break_ties_like_brute_force():
  shape, window, top_k = (1, 6, 8, 2, 4), 3, 5
  q, k, v = _inputs(11, shape, "ties")
  fn = _pallas_fn(window, top_k, None, "tpu", (2, 8), None, "rounds")
  got = jax.jit(fn)(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
  np.testing.assert_allclose(
      np.asarray(got), _brute_force(q, k, v, window, top_k, None), atol=2e-5, rtol=2e-5
  )


def test_pallas_bfloat16_forward():
  # Grid values are exact in bfloat16, so the selection matches; p @ V runs in bfloat16.
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in _inputs(13, (1, 8, 8, 2, 4), "grid"))
  got = tea_pallas.tea_attention_pallas(
      q, k, v, window=3, top_k=4, pool=4, interpret=True, backend="gpu"
  )
  assert got.dtype == jnp.bfloat16
  want = _brute_force(*(np.asarray(x, np.float32) for x in (q, k, v)), 3, 4, 4)
  np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2, rtol=3e-2)


def test_public_pallas_path_interpret():
  q, k, v = (jnp.asarray(x) for x in _inputs(5, (1, 8, 8, 1, 4), "grid"))
  got = tea_attention(
      q, k, v, window=3, top_k=2, pool=None, implementation="pallas", interpret=True
  )
  np.testing.assert_allclose(np.asarray(got), _brute_force(q, k, v, 3, 2, None), atol=2e-5)


@pytest.mark.parametrize("platform,backend", [("cuda", "gpu"), ("tpu", "tpu")])
def test_pallas_kernels_lower_for_triton_and_mosaic(platform, backend):
  # Lowers (no device needed) forward + backward kernels to Triton IR / Mosaic MLIR: catches
  # primitives these backends do not support and TPU-illegal block shapes.
  x = jax.ShapeDtypeStruct((1, 24, 40, 2, 32), jnp.bfloat16)
  for top_k, pool in ((4, 4), (20, None)):  # row-max rounds + global keys; radix select
    fn = lambda q, k, v: jnp.sum(
        tea_pallas.tea_attention_pallas(
            q, k, v, window=7, top_k=top_k, pool=pool, backend=backend
        ).astype(jnp.float32)
    )
    lowered = (
        jax.jit(jax.grad(fn, argnums=(0, 1, 2)))
        .trace(x, x, x)
        .lower(lowering_platforms=(platform,))
    )
    text = lowered.as_text()
    marker = "xla.gpu.triton" if platform == "cuda" else "tpu_custom_call"
    assert text.count(marker) >= (3 if pool else 2), (platform, top_k, pool)


@pytest.mark.slow
def test_pallas_default_tiles_larger_map():
  shape = (2, 24, 40, 2, 8)
  q, k, v = (jnp.asarray(x) for x in _inputs(9, shape, "grid"))
  proj = jax.random.normal(jax.random.key(4), shape)
  for backend in ("gpu", "tpu"):
    fn = lambda q, k, v: tea_pallas.tea_attention_pallas(
        q, k, v, window=7, top_k=12, pool=4, interpret=True, backend=backend
    )
    ref = lambda q, k, v: tea_reference.tea_attention_reference(q, k, v, window=7, top_k=12, pool=4)
    out, grads = _out_and_grads(fn, q, k, v, proj)
    want_out, want_grads = _out_and_grads(ref, q, k, v, proj)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want_out), atol=2e-5, rtol=2e-5)
    for got, want in zip(grads, want_grads):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- errors


_SHAPE = (1, 8, 10, 2, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            dict(window=4, top_k=3, pool=None),
            r"window must be an odd integer.*4.*\(1, 8, 10, 2, 4\)",
        ),
        (dict(window=0, top_k=1, pool=None), r"window must be an odd integer"),
        (dict(window=True, top_k=1, pool=None), r"window must be an odd integer"),
        (dict(window=3.0, top_k=1, pool=None), r"window must be an odd integer"),
        (dict(window=9, top_k=3, pool=None), r"window=9 is larger.*height=8.*\(1, 8, 10, 2, 4\)"),
        (dict(window=3, top_k=0, pool=None), r"top_k must be an integer in \[1, window\*\*2 = 9\]"),
        (dict(window=3, top_k=10, pool=None), r"top_k.*got 10"),
        (dict(window=3, top_k=3, pool=3), r"pool=3 must divide height=8 and width=10"),
        (dict(window=3, top_k=3, pool=-2), r"pool must be None/0"),
        (dict(window=3, top_k=3, pool=2, implementation="cuda"), r"implementation must be"),
    ],
)
def test_invalid_arguments_raise_before_tracing(kwargs, match):
  x = jnp.zeros(_SHAPE)
  with pytest.raises(ValueError, match=match):
    tea_attention(x, x, x, **kwargs)


def test_pool_zero_means_no_global_keys():
  q, k, v = (jnp.asarray(x) for x in _inputs(2, _SHAPE, "grid"))
  a = tea_attention(q, k, v, window=3, top_k=4, pool=0)
  b = tea_attention(q, k, v, window=3, top_k=4, pool=None)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "args,match",
    [
        ((jnp.zeros((8, 10, 2, 4)),) * 3, r"5 dims\), got shape \(8, 10, 2, 4\)"),
        (
            (jnp.zeros(_SHAPE), jnp.zeros((1, 8, 10, 2, 8)), jnp.zeros(_SHAPE)),
            r"same shape.*k \(1, 8, 10, 2, 8\)",
        ),
        ((jnp.zeros(_SHAPE, jnp.int32),) * 3, r"q has dtype int32"),
        ((jnp.zeros(_SHAPE), jnp.zeros(_SHAPE, jnp.bfloat16), jnp.zeros(_SHAPE)), r"same dtype"),
        (([[1.0]], jnp.zeros(_SHAPE), jnp.zeros(_SHAPE)), r"q must be an array"),
    ],
)
def test_invalid_shapes_and_dtypes(args, match):
  with pytest.raises(ValueError, match=match):
    tea_attention(*args, window=3, top_k=3, pool=None)


def test_pallas_on_cpu_needs_interpret():
  if jax.default_backend() != "cpu":
    pytest.skip("only meaningful on CPU")
  x = jnp.zeros(_SHAPE)
  with pytest.raises(ValueError, match="interpret=True"):
    tea_attention(x, x, x, window=3, top_k=3, pool=None, implementation="pallas")


def test_pallas_traces_for_the_target_platform_not_the_host():
  """Ahead-of-time compilation traces on a CPU host for a TPU: the Pallas path (and TEAFormer's
  "auto") follow the platform traced for (`kernels.platform`), not `jax.default_backend()`,
  which refused the kernel during `jaxmilab.compile`. Under a TPU mesh or override the lowered
  program holds the Mosaic custom call; for the CPU host the same call is refused."""
  from jaxmilab.kernels import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab.models import teaformer  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu":
    pytest.skip("only meaningful on a CPU host")
  x = jax.ShapeDtypeStruct((2, 16, 16, 2, 8), jnp.float32)

  def attn(q, k, v):
    return tea_attention(q, k, v, window=3, top_k=4, pool=4, implementation="pallas")

  assert teaformer.resolve_implementation("auto") == "xla"
  with platform_lib.for_platform("tpu"):
    assert teaformer.resolve_implementation("auto") == "pallas"
    lowered = jax.jit(attn).trace(x, x, x).lower(lowering_platforms=("tpu",))
  assert "tpu_custom_call" in lowered.as_text()
  with pytest.raises(ValueError, match="traced for 'cpu'"):
    jax.jit(lambda q, k, v: attn(q, k, v)).trace(x, x, x)  # a fresh jit: traces are cached


# ----------------------------------------------------------------------------- TPU blocks


BLOCK_CASES = [
    # (block_shape, array_shape, dtype, legal)
    ((8, 128), (64, 256), jnp.float32, True),
    ((16, 384), (32, 768), jnp.bfloat16, True),
    ((None, 128, 32), (4, 128, 32), jnp.float32, True),  # last two equal the array's
    ((None, None, 128, 1), (2, 6, 128, 1), jnp.float32, True),
    ((4, 128), (16, 128), jnp.float32, False),  # 4 rows: not 8k, not full
    ((8, 100), (8, 200), jnp.float32, False),  # 100 lanes: not 128k, not full
    ((None, 8, None), (2, 8, 4), jnp.float32, False),  # squeezed last dim of size 4
    ((2048,), (4096,), jnp.float32, True),
    ((256,), (4096,), jnp.float32, True),  # power of two >= 128
    ((100,), (4096,), jnp.float32, False),
    ((128,), (4096,), jnp.bfloat16, False),  # bf16 needs >= 256
]


@pytest.mark.parametrize("block,array,dtype,legal", BLOCK_CASES)
def test_check_tpu_block_shapes_hand_cases(block, array, dtype, legal):
  if legal:
    tea_pallas.check_tpu_block_shapes(block, array, dtype)
  else:
    with pytest.raises(ValueError, match="TPU block check"):
      tea_pallas.check_tpu_block_shapes(block, array, dtype)


@pytest.mark.parametrize("block,array,dtype,legal", BLOCK_CASES[:7])
def test_tpu_block_checker_agrees_with_mosaic_lowering(block, array, dtype, legal):
  # Independent oracle: jax's own Pallas TPU lowering of a copy kernel with this block.
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top

  grid = tuple(a // (1 if b is None else b) for a, b in zip(array, block))
  spec = pl.BlockSpec(block, lambda *i: i)

  def copy(x_ref, o_ref):
    o_ref[...] = x_ref[...]

  fn = pl.pallas_call(
      copy,
      grid=grid,
      in_specs=[spec],
      out_specs=spec,
      out_shape=jax.ShapeDtypeStruct(array, dtype),
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",) * len(grid)),
  )
  try:
    jax.jit(fn).trace(jax.ShapeDtypeStruct(array, dtype)).lower(lowering_platforms=("tpu",))
    lowered = True
  except ValueError:
    lowered = False
  assert lowered == legal


def test_tpu_aot_benchmark_reports_a_program_that_does_not_fit_and_goes_on(monkeypatch, capsys):
  """`benchmarks.tea_attention --tpu_aot`: a compile that runs out of HBM (the TPU compiler's
  message, as libtpu 0.0.42 words it) becomes a row with fits=False and the compiler's figures,
  and the other programs still compile and print; any other compile error propagates. Compiled
  for the host's CPU here (the TPU device is stood in for), so it runs without libtpu."""
  import types  # pylint: disable=g-import-not-at-top

  from jaxmilab.benchmarks import tea_attention as bench  # pylint: disable=g-import-not-at-top

  monkeypatch.setattr(
      bench,
      "FLAGS",
      types.SimpleNamespace(
          topology="v5e:1x1",
          aot_size=8,
          aot_window=3,
          aot_top_k=4,
          aot_pool=0,
          batch=1,
          heads=1,
          head_dim=4,
          aot_dtypes=["float32"],
          aot_impls=["xla"],
      ),
  )
  monkeypatch.setattr(bench, "_tpu_device", lambda topology: jax.devices("cpu")[0])
  real_jit, calls = jax.jit, []

  def jit_failing_second(message):
    def fake(fn, **kwargs):
      calls.append(fn)
      if len(calls) % 2:  # the forward compiles for real
        return real_jit(fn, **kwargs)

      class Lowered:

        def compile(self):
          raise RuntimeError(message)

      return types.SimpleNamespace(lower=lambda *a: Lowered())

    return fake

  oom = (
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
      "temporaries (19.06G) exceeds available HBM (15.75G)."
  )
  monkeypatch.setattr(bench.jax, "jit", jit_failing_second(oom))
  rows = bench.run_tpu_aot()
  assert [(r["pass_"], r["fits"]) for r in rows] == [("fwd", True), ("fwd_bwd", False)]
  assert rows[1]["needed_bytes"] == 19.06 * 2**30 and rows[1]["hbm_bytes"] == 15.75 * 2**30
  assert rows[0]["temp_bytes"] >= 0
  out = capsys.readouterr().out
  assert "fwd_bwd does not fit one chip: the compiler needs 19.06 GiB" in out
  assert "does not fit: needs 19.06 GiB of 15.75 GiB HBM (compiler)" in out
  calls.clear()
  monkeypatch.setattr(bench.jax, "jit", jit_failing_second("INVALID_ARGUMENT: something else"))
  with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
    bench.run_tpu_aot()
