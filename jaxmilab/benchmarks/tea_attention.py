r"""TEA attention: fused Pallas kernel vs the XLA reference vs dense attention.

  # Accelerator run (GPU/TPU), one command, JSON out (64/128/256 tokens, window 7/15,
  # bf16 + f32, fwd and fwd+bwd, dense attention's cost per attended key alongside):
  python -m jaxmilab.benchmarks.tea_attention --device_run --output=/tmp/tea_bench.json
  # TPU compiler figures without a TPU (needs libtpu: pip install -e '.[tpu]'):
  python -m jaxmilab.benchmarks.tea_attention --tpu_aot [--topology=v5e:1x1]
  # Analytic HBM-traffic / FLOP model with predicted H100 and v5e times:
  python -m jaxmilab.benchmarks.tea_attention --model
  python -m jaxmilab.benchmarks.tea_attention --quick        # CPU, small maps, under a minute

Timing: median of --steps runs after a warm-up, each ending in block_until_ready; forward and
forward+backward (gradient of <out, random projection> w.r.t. q, k, v). Memory: the compiled
executable's temp bytes (memory_analysis()) and, where the device reports it, the peak bytes in
use during the timed runs. "dense" is jax.nn.dot_product_attention over all H*W tokens (no
window, no pooling: the quadratic baseline); its time per attended key (ns per query-key pair)
is printed beside TEA's. Ratios are against the XLA reference of the same row group.
On CPU the default is xla + dense at small sizes: the Pallas kernel only runs there in interpret
mode (--interpret), which measures nothing about kernel speed.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import trainer as trainer_lib
from jaxmilab.kernels import tea_pallas
from jaxmilab.kernels import tea_reference

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this benchmark's flags; on demand, as benchmarks share flag names."""
  flags.DEFINE_list(
      "sizes",
      [],
      "Map sides (H = W). Default 64,128,256 on GPU/TPU, 16,32 on CPU.",
      flag_values=flag_values,
  )
  flags.DEFINE_list("windows", ["7", "15"], "Odd window sizes.", flag_values=flag_values)
  flags.DEFINE_list(
      "top_ks",
      ["4", "16"],
      "top_k values ('all' = window**2); > window**2 " "skipped.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "pool",
      8,
      "Global-key pooling r (0 = no global keys); must divide sizes.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer("batch", 1, "Batch size.", flag_values=flag_values)
  flags.DEFINE_integer("heads", 2, "Attention heads.", flag_values=flag_values)
  flags.DEFINE_integer("head_dim", 32, "Head dimension.", flag_values=flag_values)
  flags.DEFINE_list(
      "dtypes", ["float32"], "q/k/v dtypes (float32, bfloat16).", flag_values=flag_values
  )
  flags.DEFINE_list(
      "impls",
      [],
      "Subset of pallas,xla,dense. Default: all three on GPU/TPU, "
      "xla,dense on CPU (plus pallas with --interpret).",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "steps", 5, "Timed runs per measurement (median reported).", flag_values=flag_values
  )
  flags.DEFINE_bool(
      "interpret",
      False,
      "Run Pallas in interpret mode (CPU; not a speed measure).",
      flag_values=flag_values,
  )
  flags.DEFINE_bool(
      "quick",
      False,
      "Small CPU-friendly run: sizes 16,32, windows 3,7, 3 steps.",
      flag_values=flag_values,
  )
  flags.DEFINE_bool(
      "device_run",
      False,
      "The accelerator preset: sizes 64,128,256, windows 7,15, "
      "top_k 16, pool 8, dtypes bfloat16,float32, all three implementations.",
      flag_values=flag_values,
  )
  flags.DEFINE_float(
      "max_dense_gib",
      16.0,
      "Skip dense attention when its [B, h, N, N] f32 " "scores would exceed this many GiB.",
      flag_values=flag_values,
  )
  flags.DEFINE_string("output", "", "Also write the results as JSON here.", flag_values=flag_values)
  flags.DEFINE_bool(
      "tpu_aot",
      False,
      "Compile reference and Pallas (fwd, fwd+bwd) for a TPU "
      "topology on this machine and print compiler memory / cost side by side.",
      flag_values=flag_values,
  )
  flags.DEFINE_string("topology", "v5e:1x1", "TPU topology for --tpu_aot.", flag_values=flag_values)
  flags.DEFINE_bool(
      "model",
      False,
      "Print the analytic HBM-traffic / FLOP model and predicted "
      "H100 / v5e times for the --aot_* problem.",
      flag_values=flag_values,
  )
  flags.DEFINE_integer("aot_size", 128, "--tpu_aot / --model: map side.", flag_values=flag_values)
  flags.DEFINE_integer("aot_window", 15, "--tpu_aot / --model: window.", flag_values=flag_values)
  flags.DEFINE_integer("aot_top_k", 32, "--tpu_aot / --model: top_k.", flag_values=flag_values)
  flags.DEFINE_integer("aot_pool", 4, "--tpu_aot / --model: pool.", flag_values=flag_values)
  flags.DEFINE_list(
      "aot_dtypes", ["float32", "bfloat16"], "--tpu_aot / --model: dtypes.", flag_values=flag_values
  )
  flags.DEFINE_list(
      "aot_impls",
      ["xla", "pallas"],
      "--tpu_aot: implementations to compile (the "
      "reference takes minutes to compile at 128x128 and more beyond).",
      flag_values=flag_values,
  )


# Published peaks (per chip). H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (HBM3 3.35 TB/s,
# dense BF16 989 TFLOP/s, FP32 67 TFLOP/s); v5e: Cloud TPU v5e documentation (HBM 819 GB/s,
# BF16 197 TFLOP/s). ASSUMPTIONS (not published as such): float32 dots at HIGHEST precision run
# at the FP32 CUDA-core rate on H100 (Triton IEEE fp32) and at 1/6 of the bf16 MXU rate on v5e
# (6-pass bf16 emulation); elementwise ops/s = H100 FP32 rate / 2 (one op per FMA slot), v5e
# 8 sublanes x 128 lanes x 4 VALU slots x 1.5 GHz.
HARDWARE = {
    "H100": dict(hbm=3.35e12, mxu_bf16=989e12, mxu_f32=67e12, vector=33.5e12),
    "v5e": dict(hbm=819e9, mxu_bf16=197e12, mxu_f32=197e12 / 6, vector=8 * 128 * 4 * 1.5e9),
}


# ----------------------------------------------------------------------------- model


def traffic_model(g: tea_pallas.Geometry, batch: int, heads: int, itemsize: int) -> dict:
  """HBM bytes, MXU FLOPs, elementwise ops and exps of one Pallas call (fwd and bwd).

  Counts what the kernels move and compute, tile by tile: every halo read goes to HBM (no
  cache credit for overlapping halos), the pooled K/V once per (batch*head) (TPU: constant
  block index, not re-fetched; GPU: a few hundred KiB shared by all programs of a head, served
  by L2); the XLA-side layout copies (transpose + pad in, slice + transpose out, pooling) are
  included.
  """
  bh, d, e = batch * heads, g.head_dim_pad, itemsize
  n = g.pad_h * g.pad_w  # padded tokens per (batch*head)
  t, tq, hk, gk = g.n_tiles, g.tile_q, g.halo_k, g.global_pad
  scores = t * tq * hk  # local scores per (batch*head)
  glob = n * gk
  per_score = {
      "all": 4,
      "rounds": 6 * g.top_k,
      "radix": 3 * (32 + (g.height * g.width).bit_length()),
  }[g.selection]
  pooled_reads = 2 * gk * d * e
  layout = 3 * 2 * n * d * e + 2 * n * d * e + 2 * n * d * e  # q,k,v in; pooling; o out
  fwd = dict(
      bytes=bh * (n * d * e + t * 2 * hk * d * e + pooled_reads + n * d * e + 3 * n * 4)
      + batch * heads * layout,
      flops=bh * (4 * scores * d + 4 * glob * d),
      vector=bh * (scores * (per_score + 8) + glob * 6),
      exp=bh * (scores + glob),
  )
  pairs = tea_pallas.dkv_pairs(g)
  chunks = max(1, gk // max(1, g.global_block))
  bwd = dict(
      bytes=bh
      * (
          # dQ kernel: q, o, do, halos, stats in; dq, delta out
          4 * n * d * e
          + t * 2 * hk * d * e
          + pooled_reads
          + 4 * n * 4
          + n * 4
          # dK/dV kernel: k, v tiles once, q/do tiles and 4 stats per pair; dk, dv out
          + 2 * n * d * e
          + pairs * (2 * tq * d * e + 4 * tq * 4)
          + 2 * n * d * e
          # pooled-key kernel: q, do, 2 stats per (chunk, tile); dkg, dvg f32
          + (chunks * (2 * n * d * e + 2 * n * 4) + 2 * gk * d * 4 if gk else 0)
      )
      + batch * heads * (2 * n * d * e + 3 * 2 * n * d * e),  # do in; dq, dk, dv out
      flops=bh * (6 * scores * d + 8 * pairs * tq * tq * d + (6 + 8) * glob * d),
      vector=bh * (scores * 14 + pairs * tq * tq * 14 + glob * 12),
      exp=bh * (scores + pairs * tq * tq + 2 * glob),
  )
  return dict(fwd=fwd, bwd=bwd)


def predict_seconds(cost: dict, hardware: dict, dtype) -> dict:
  """Roofline lower bound: max(bytes / HBM, FLOPs / MXU, vector ops / VPU)."""
  mxu = hardware["mxu_f32"] if jnp.dtype(dtype) == jnp.float32 else hardware["mxu_bf16"]
  parts = dict(
      hbm=cost["bytes"] / hardware["hbm"],
      mxu=cost["flops"] / mxu,
      vector=(cost["vector"] + cost.get("exp", 0)) / hardware["vector"],
  )
  bound = max(parts, key=parts.get)
  return dict(seconds=parts[bound], bound=bound, **{f"{k}_s": v for k, v in parts.items()})


def _reference_cost(shape, dtype, window, top_k, pool) -> dict:
  """The XLA reference's FLOPs and bytes from the compiler's cost analysis (this backend)."""
  x = jax.ShapeDtypeStruct(shape, dtype)
  attn = lambda q, k, v: tea_reference.tea_attention_reference(
      q, k, v, window=window, top_k=top_k, pool=pool
  )
  loss = lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32))
  out = {}
  for name, fn in (("fwd", attn), ("fwd_bwd", jax.grad(loss, argnums=(0, 1, 2)))):
    ca = jax.jit(fn).lower(x, x, x).compile().cost_analysis() or {}
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    out[name] = dict(
        flops=float(ca.get("flops", float("nan"))),
        bytes=float(ca.get("bytes accessed", float("nan"))),
    )
  return out


def run_model() -> list[dict]:
  size, window, top_k, pool = (
      FLAGS.aot_size,
      FLAGS.aot_window,
      FLAGS.aot_top_k,
      FLAGS.aot_pool or None,
  )
  shape = (FLAGS.batch, size, size, FLAGS.heads, FLAGS.head_dim)
  print(
      f"analytic model: B={FLAGS.batch} {size}x{size} tokens, {FLAGS.heads} heads, head_dim "
      f"{FLAGS.head_dim}, window {window}, top_k {top_k}, pool {pool}. Predictions "
      "(roofline lower bounds from published peaks), not measurements."
  )
  rows = []
  for dt in FLAGS.aot_dtypes:
    dtype = jnp.dtype(dt)
    ref = _reference_cost(shape, dtype, window, top_k, pool)
    for backend, hw_name in (("gpu", "H100"), ("tpu", "v5e")):
      g = tea_pallas.make_geometry(
          shape, dtype, window=window, top_k=top_k, pool=pool, backend=backend, interpret=False
      )
      cost = traffic_model(g, FLAGS.batch, FLAGS.heads, dtype.itemsize)
      both = {k: cost["fwd"][k] + cost["bwd"][k] for k in cost["fwd"]}
      hw = HARDWARE[hw_name]
      for name, c, r in (("fwd", cost["fwd"], ref["fwd"]), ("fwd_bwd", both, ref["fwd_bwd"])):
        pred = predict_seconds(c, hw, dtype)
        ref_pred = predict_seconds(dict(bytes=r["bytes"], flops=r["flops"], vector=0.0), hw, dtype)
        row = dict(
            dtype=dt,
            hardware=hw_name,
            tile=(g.tile_h, g.tile_w),
            halo=(g.halo_h, g.halo_w),
            pass_=name,
            pallas_bytes=c["bytes"],
            pallas_flops=c["flops"],
            pallas_vector_ops=c["vector"] + c["exp"],
            pallas_intensity=c["flops"] / c["bytes"],
            pallas_pred_s=pred["seconds"],
            pallas_bound=pred["bound"],
            reference_bytes=r["bytes"],
            reference_flops=r["flops"],
            reference_pred_s=ref_pred["seconds"],
            predicted_speedup=ref_pred["seconds"] / pred["seconds"],
        )
        rows.append(row)
  head = (
      f"{'dtype':>8} {'hw':>5} {'pass':>7} | {'Pallas MB':>9} {'GFLOP':>7} {'Gvec':>7} "
      f"{'FLOP/B':>6} {'pred us':>8} {'bound':>6} | {'ref MB':>8} {'ref GFLOP':>9} "
      f"{'ref us':>8} | {'speed-up':>8}"
  )
  print(head)
  print("-" * len(head))
  for r in rows:
    print(
        f"{r['dtype']:>8} {r['hardware']:>5} {r['pass_']:>7} | {r['pallas_bytes'] / 1e6:9.1f} "
        f"{r['pallas_flops'] / 1e9:7.2f} {r['pallas_vector_ops'] / 1e9:7.2f} "
        f"{r['pallas_intensity']:6.1f} {r['pallas_pred_s'] * 1e6:8.1f} {r['pallas_bound']:>6} | "
        f"{r['reference_bytes'] / 1e6:8.0f} {r['reference_flops'] / 1e9:9.2f} "
        f"{r['reference_pred_s'] * 1e6:8.0f} | {r['predicted_speedup']:7.1f}x"
    )
  print(
      "Reference bytes/FLOPs: XLA cost analysis of the reference compiled for this machine's "
      "backend; Pallas: traffic_model() (every halo read from HBM, no cache credit)."
  )
  return rows


# ----------------------------------------------------------------------------- TPU AOT


def _tpu_device(topology: str):
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only; share libtpu
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  chips = [int(c) for c in topology.split(":")[1].split("x")] if ":" in topology else [1, 1]
  desc = topologies.get_topology_desc(
      platform="tpu",
      topology_name=topology,
      chips_per_host_bounds=tuple(chips + [1] * (3 - len(chips))),
      num_slices=1,
  )
  return desc.devices[0]


def run_tpu_aot() -> list[dict]:
  device = _tpu_device(FLAGS.topology)
  sharding = jax.sharding.SingleDeviceSharding(device)
  size, window, top_k, pool = (
      FLAGS.aot_size,
      FLAGS.aot_window,
      FLAGS.aot_top_k,
      FLAGS.aot_pool or None,
  )
  shape = (FLAGS.batch, size, size, FLAGS.heads, FLAGS.head_dim)
  print(
      f"TPU AOT ({FLAGS.topology}, {device.device_kind}): B={FLAGS.batch} {size}x{size} tokens, "
      f"{FLAGS.heads} heads, head_dim {FLAGS.head_dim}, window {window}, top_k {top_k}, "
      f"pool {pool}. Compiled on this machine, no TPU used. Pallas FLOPs/bytes are invisible "
      "to XLA's cost analysis (custom calls): see --model."
  )
  rows = []
  for dt in FLAGS.aot_dtypes:
    x = jax.ShapeDtypeStruct(shape, jnp.dtype(dt), sharding=sharding)
    impls = {
        "xla": lambda q, k, v: tea_reference.tea_attention_reference(
            q, k, v, window=window, top_k=top_k, pool=pool
        ),
        "pallas": lambda q, k, v: tea_pallas.tea_attention_pallas(
            q, k, v, window=window, top_k=top_k, pool=pool, backend="tpu"
        ),
    }
    for impl, attn in impls.items():
      if impl not in FLAGS.aot_impls:
        continue
      loss = lambda q, k, v, a=attn: jnp.sum(a(q, k, v).astype(jnp.float32))
      for name, fn in (("fwd", attn), ("fwd_bwd", jax.grad(loss, argnums=(0, 1, 2)))):
        t0 = time.perf_counter()
        try:
          compiled = jax.jit(fn).lower(x, x, x).compile()
        except Exception as e:  # pylint: disable=broad-except
          figures = trainer_lib.oom_figures(str(e))
          if figures is None:
            raise
          # A program that does not fit one chip is a result, not a crash: record the compiler's
          # figure and go on with the other programs.
          rows.append(
              dict(
                  dtype=dt,
                  impl=impl,
                  pass_=name,
                  fits=False,
                  needed_bytes=figures[0],
                  hbm_bytes=figures[1],
                  temp_bytes=float("nan"),
                  argument_bytes=float("nan"),
                  output_bytes=float("nan"),
                  flops=float("nan"),
                  bytes_accessed=float("nan"),
                  optimal_seconds=float("nan"),
                  compile_s=time.perf_counter() - t0,
              )
          )
          print(
              f"  {dt} {impl} {name} does not fit one chip: the compiler needs "
              f"{figures[0] / 2**30:.2f} GiB of HBM, the chip has {figures[1] / 2**30:.2f} GiB",
              flush=True,
          )
          continue
        mem = compiled.memory_analysis()
        ca = compiled.cost_analysis() or {}
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        rows.append(
            dict(
                dtype=dt,
                impl=impl,
                pass_=name,
                fits=True,
                temp_bytes=float(mem.temp_size_in_bytes),
                argument_bytes=float(mem.argument_size_in_bytes),
                output_bytes=float(mem.output_size_in_bytes),
                flops=float(ca.get("flops", float("nan"))),
                bytes_accessed=float(ca.get("bytes accessed", float("nan"))),
                optimal_seconds=float(ca.get("optimal_seconds", float("nan"))),
                compile_s=time.perf_counter() - t0,
            )
        )
        print(f"  compiled {dt} {impl} {name} in {rows[-1]['compile_s']:.0f} s", flush=True)
  head = (
      f"{'dtype':>8} {'pass':>7} {'impl':>6} | {'temp MiB':>9} {'arg MiB':>7} "
      f"{'out MiB':>7} | {'GB accessed':>11} {'GFLOP':>7} | {'xla temp / this':>15}"
  )
  print(head)
  print("-" * len(head))
  for dt in FLAGS.aot_dtypes:
    for name in ("fwd", "fwd_bwd"):
      r = {row["impl"]: row for row in rows if row["dtype"] == dt and row["pass_"] == name}
      for impl, row in r.items():
        ratio = ""
        if not row["fits"]:
          print(
              f"{dt:>8} {name:>7} {impl:>6} | does not fit: needs {row['needed_bytes'] / 2**30:.2f}"
              f" GiB of {row['hbm_bytes'] / 2**30:.2f} GiB HBM (compiler)"
          )
          continue
        if "xla" in r and impl != "xla" and r["xla"]["fits"]:
          # HBM temp under 1 MiB (XLA may keep small intermediates in VMEM): a lower bound.
          floor = row["temp_bytes"] < 2**20
          row["temp_ratio_xla_over_this"] = r["xla"]["temp_bytes"] / max(row["temp_bytes"], 2**20)
          ratio = f"{'>=' if floor else ''}{row['temp_ratio_xla_over_this']:.0f}x"
        print(
            f"{dt:>8} {name:>7} {impl:>6} | {row['temp_bytes'] / 2**20:9.2f} "
            f"{row['argument_bytes'] / 2**20:7.1f} {row['output_bytes'] / 2**20:7.1f} | "
            f"{row['bytes_accessed'] / 1e9:11.2f} {row['flops'] / 1e9:7.2f} | {ratio:>15}"
        )
  return rows


# ----------------------------------------------------------------------------- device timing


def _median_seconds(fn: Callable[[], object], steps: int) -> float:
  jax.block_until_ready(fn())  # warm-up
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _peak_bytes() -> float:
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
  return float(stats.get("peak_bytes_in_use", float("nan")))


def _measure(attn: Callable, q, k, v, proj, steps: int) -> dict[str, float]:
  """Forward and forward+backward: median seconds, compiled temp bytes, device peak bytes."""
  loss = lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32) * proj)
  result = {}
  for name, fn in (("fwd", attn), ("fwd_bwd", jax.grad(loss, argnums=(0, 1, 2)))):
    compiled = jax.jit(fn).lower(q, k, v).compile()
    memory = compiled.memory_analysis()
    result[f"{name}_s"] = _median_seconds(lambda c=compiled: c(q, k, v), steps)
    result[f"{name}_temp_bytes"] = float(getattr(memory, "temp_size_in_bytes", float("nan")))
    result[f"{name}_device_peak_bytes"] = _peak_bytes()  # process high-water mark so far
  return result


def _dense(q, k, v):
  b, height, width, heads, dim = q.shape
  flat = lambda x: x.reshape(b, height * width, heads, dim)
  return jax.nn.dot_product_attention(flat(q), flat(k), flat(v)).reshape(q.shape)


def _config(backend: str):
  on_cpu = backend == "cpu"
  sizes = [int(s) for s in FLAGS.sizes] or ([16, 32] if on_cpu or FLAGS.quick else [64, 128, 256])
  windows = [int(w) for w in FLAGS.windows]
  steps = FLAGS.steps
  dtypes = list(FLAGS.dtypes)
  if FLAGS.quick:
    sizes = [int(s) for s in FLAGS.sizes] or [16, 32]
    windows = [3, 7] if FLAGS["windows"].using_default_value else windows
    steps = min(steps, 3)
  if FLAGS.device_run:
    sizes = [int(s) for s in FLAGS.sizes] or [64, 128, 256]
    dtypes = ["bfloat16", "float32"] if FLAGS["dtypes"].using_default_value else dtypes
    if FLAGS["top_ks"].using_default_value:
      FLAGS.top_ks = ["16"]
  impls = FLAGS.impls or (
      ["xla", "dense"] + (["pallas"] if FLAGS.interpret else [])
      if on_cpu
      else ["pallas", "xla", "dense"]
  )
  if "xla" not in impls:
    impls = ["xla"] + list(impls)  # the ratio baseline
  return sizes, windows, steps, impls, dtypes


def run() -> list[dict]:
  backend = jax.default_backend()
  sizes, windows, steps, impls, dtypes = _config(backend)
  pool = FLAGS.pool or None
  print(
      f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, "
      f"dtypes {dtypes}, batch {FLAGS.batch}, heads {FLAGS.heads}, head_dim "
      f"{FLAGS.head_dim}, pool {pool}"
  )
  if "pallas" in impls and (FLAGS.interpret or backend == "cpu"):
    print(
        "note: Pallas runs in interpret mode here: its times and memory say nothing about "
        "the kernel on GPU/TPU."
    )
  print("memory = compiled temp bytes (memory_analysis); ratios vs the XLA reference.")
  rows = []
  for dt in dtypes:
    dtype = jnp.dtype(dt)
    dense_cache: dict[int, dict] = {}
    for size in sizes:
      shape = (FLAGS.batch, size, size, FLAGS.heads, FLAGS.head_dim)
      keys = jax.random.split(jax.random.key(size), 4)
      q, k, v = (jax.random.normal(kk, shape, jnp.float32).astype(dtype) for kk in keys[:3])
      proj = jax.random.normal(keys[3], shape, jnp.float32)
      queries = FLAGS.batch * size * size * FLAGS.heads
      for window in windows:
        for top_k_str in FLAGS.top_ks:
          top_k = window * window if top_k_str == "all" else int(top_k_str)
          if window > size or top_k > window * window or (pool and size % pool):
            print(f"skip size={size} window={window} top_k={top_k}: invalid combination")
            continue
          attended = top_k + (size // pool) ** 2 if pool else top_k
          group = {}
          for impl in ["xla"] + [i for i in impls if i != "xla"]:
            row = dict(
                dtype=dt,
                size=size,
                window=window,
                top_k=top_k,
                impl=impl,
                keys_per_query=size * size if impl == "dense" else attended,
            )
            if impl == "dense":
              gib = FLAGS.batch * FLAGS.heads * (size * size) ** 2 * 4 / 2**30
              if gib > FLAGS.max_dense_gib:
                row.update(skipped=f"[B,h,N,N] scores {gib:.0f} GiB > --max_dense_gib")
              else:
                if size not in dense_cache:
                  dense_cache[size] = _measure(_dense, q, k, v, proj, steps)
                row.update(dense_cache[size])
            else:
              if impl == "xla":
                attn = lambda q, k, v, w=window, t=top_k: tea_reference.tea_attention_reference(
                    q, k, v, window=w, top_k=t, pool=pool
                )
              else:
                attn = lambda q, k, v, w=window, t=top_k: tea_pallas.tea_attention_pallas(
                    q,
                    k,
                    v,
                    window=w,
                    top_k=t,
                    pool=pool,
                    interpret=FLAGS.interpret or backend == "cpu",
                )
              try:
                row.update(_measure(attn, q, k, v, proj, steps))
              except Exception as e:  # pylint: disable=broad-except  (OOM etc.: report, go on)
                row.update(skipped=f"{type(e).__name__}: {str(e).splitlines()[0][:80]}")
            if "fwd_s" in row:
              row["fwd_ns_per_attended_key"] = (
                  row["fwd_s"] / (queries * row["keys_per_query"]) * 1e9
              )
            group[impl] = row
            rows.append(row)
          base = group["xla"]
          for row in group.values():
            for key in ("fwd_s", "fwd_bwd_s", "fwd_temp_bytes", "fwd_bwd_temp_bytes"):
              if key in row and key in base and base[key]:
                row[key + "_vs_xla"] = row[key] / base[key]
  _print_table(rows)
  return rows


def _print_table(rows: list[dict]) -> None:
  head = (
      f"{'dtype':>8} {'tokens':>9} {'win':>3} {'top_k':>5} {'impl':>6} | {'fwd ms':>9} "
      f"{'x xla':>6} | {'f+b ms':>9} {'x xla':>6} | {'fwd MiB':>9} {'x xla':>6} | "
      f"{'f+b MiB':>9} {'x xla':>6} | {'ns/key':>7}"
  )
  print(head)
  print("-" * len(head))
  for r in rows:
    lead = (
        f"{r['dtype']:>8} {r['size']:>4}x{r['size']:<4} {r['window']:>3} {r['top_k']:>5} "
        f"{r['impl']:>6} |"
    )
    if "skipped" in r:
      print(f"{lead} skipped: {r['skipped']}")
      continue
    f = lambda key, s=1.0: f"{r[key] * s:>9.2f} {r.get(key + '_vs_xla', float('nan')):>6.2f}"
    print(
        f"{lead} {f('fwd_s', 1e3)} | {f('fwd_bwd_s', 1e3)} | "
        f"{f('fwd_temp_bytes', 2**-20)} | {f('fwd_bwd_temp_bytes', 2**-20)} | "
        f"{r['fwd_ns_per_attended_key']:7.4f}"
    )


def main(argv):
  del argv
  result: dict = {}
  if FLAGS.tpu_aot:
    result["tpu_aot"] = run_tpu_aot()
  if FLAGS.model:
    result["model"] = run_model()
  if not (FLAGS.tpu_aot or FLAGS.model):
    result["timings"] = run()
    result["device"] = jax.devices()[0].device_kind
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(result, f, indent=1, default=str)
    print(f"wrote {FLAGS.output}")


def cli() -> None:
  """Entry point (python -m jaxmilab.benchmarks.tea_attention)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  cli()
