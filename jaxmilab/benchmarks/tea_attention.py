r"""TEA attention speed and memory: fused Pallas kernel vs the XLA reference vs dense attention.

  python -m jaxmilab.benchmarks.tea_attention [--sizes=64,128,256 --windows=7,15 --top_ks=4,16]
  python -m jaxmilab.benchmarks.tea_attention --quick        # CPU, small maps, under a minute

For every (map size, window, top_k) it times the forward pass and forward+backward (gradient of
<out, random projection> w.r.t. q, k, v): median of --steps runs after a warm-up, each ending
in block_until_ready. Memory is the compiled executable's temp bytes (memory_analysis()).
"dense" is jax.nn.dot_product_attention over all H*W tokens (no window, no pooling: the
quadratic baseline). Ratios are against the XLA reference of the same row group.
On CPU the default is xla + dense at small sizes: the Pallas kernel only runs there in interpret
mode (--interpret), which measures nothing about kernel speed.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab.kernels import tea
from jaxmilab.kernels import tea_pallas

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", [], "Map sides (H = W). Default 64,128,256 on GPU/TPU, 16,32 on CPU.")
flags.DEFINE_list("windows", ["7", "15"], "Odd window sizes.")
flags.DEFINE_list("top_ks", ["4", "16"], "top_k values ('all' = window**2); > window**2 skipped.")
flags.DEFINE_integer("pool", 8, "Global-key pooling r (0 = no global keys); must divide sizes.")
flags.DEFINE_integer("batch", 1, "Batch size.")
flags.DEFINE_integer("heads", 2, "Attention heads.")
flags.DEFINE_integer("head_dim", 32, "Head dimension.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "q/k/v dtype.")
flags.DEFINE_list("impls", [], "Subset of pallas,xla,dense. Default: all three on GPU/TPU, "
                  "xla,dense on CPU (plus pallas with --interpret).")
flags.DEFINE_integer("steps", 5, "Timed runs per measurement (median reported).")
flags.DEFINE_bool("interpret", False, "Run Pallas in interpret mode (CPU; not a speed measure).")
flags.DEFINE_bool("quick", False, "Small CPU-friendly run: sizes 16,32, windows 3,7, 3 steps.")
flags.DEFINE_float("max_dense_gib", 16.0, "Skip dense attention when its [B, h, N, N] f32 "
                   "scores would exceed this many GiB.")
flags.DEFINE_string("json_out", "", "Also write the results as JSON here.")


def _median_seconds(fn: Callable[[], object], steps: int) -> float:
  jax.block_until_ready(fn())  # warm-up
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _measure(attn: Callable, q, k, v, proj, steps: int) -> dict[str, float]:
  """Forward and forward+backward: median seconds and compiled temp bytes."""
  loss = lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32) * proj)
  result = {}
  for name, fn in (("fwd", attn), ("fwd_bwd", jax.grad(loss, argnums=(0, 1, 2)))):
    compiled = jax.jit(fn).lower(q, k, v).compile()
    memory = compiled.memory_analysis()
    result[f"{name}_s"] = _median_seconds(lambda c=compiled: c(q, k, v), steps)
    result[f"{name}_temp_bytes"] = float(getattr(memory, "temp_size_in_bytes", float("nan")))
  return result


def _dense(q, k, v):
  b, height, width, heads, dim = q.shape
  flat = lambda x: x.reshape(b, height * width, heads, dim)
  return jax.nn.dot_product_attention(flat(q), flat(k), flat(v)).reshape(q.shape)


def _config(backend: str):
  on_cpu = backend == "cpu"
  sizes = [int(s) for s in FLAGS.sizes] or ([16, 32] if on_cpu or FLAGS.quick else
                                            [64, 128, 256])
  windows = [int(w) for w in FLAGS.windows]
  steps = FLAGS.steps
  if FLAGS.quick:
    sizes = [int(s) for s in FLAGS.sizes] or [16, 32]
    windows = [3, 7] if FLAGS["windows"].using_default_value else windows
    steps = min(steps, 3)
  impls = FLAGS.impls or (["xla", "dense"] + (["pallas"] if FLAGS.interpret else [])
                          if on_cpu else ["pallas", "xla", "dense"])
  if "xla" not in impls:
    impls = ["xla"] + list(impls)  # the ratio baseline
  return sizes, windows, steps, impls


def run() -> list[dict]:
  backend = jax.default_backend()
  sizes, windows, steps, impls = _config(backend)
  dtype = jnp.dtype(FLAGS.dtype)
  pool = FLAGS.pool or None
  print(f"device: {jax.devices()[0].device_kind} ({backend}), jax {jax.__version__}, "
        f"dtype {dtype.name}, batch {FLAGS.batch}, heads {FLAGS.heads}, head_dim "
        f"{FLAGS.head_dim}, pool {pool}")
  if "pallas" in impls and (FLAGS.interpret or backend == "cpu"):
    print("note: Pallas runs in interpret mode here: its times and memory say nothing about "
          "the kernel on GPU/TPU.")
  print("memory = compiled temp bytes (memory_analysis); ratios vs the XLA reference.")
  rows = []
  dense_cache: dict[int, dict] = {}
  for size in sizes:
    shape = (FLAGS.batch, size, size, FLAGS.heads, FLAGS.head_dim)
    keys = jax.random.split(jax.random.key(size), 4)
    q, k, v = (jax.random.normal(kk, shape, jnp.float32).astype(dtype) for kk in keys[:3])
    proj = jax.random.normal(keys[3], shape, jnp.float32)
    for window in windows:
      for top_k_str in FLAGS.top_ks:
        top_k = window * window if top_k_str == "all" else int(top_k_str)
        if window > size or top_k > window * window or (pool and size % pool):
          print(f"skip size={size} window={window} top_k={top_k}: invalid combination")
          continue
        group = {}
        for impl in ["xla"] + [i for i in impls if i != "xla"]:
          row = dict(size=size, window=window, top_k=top_k, impl=impl)
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
              attn = lambda q, k, v, w=window, t=top_k: tea.tea_attention(
                  q, k, v, window=w, top_k=t, pool=pool)
            else:
              attn = lambda q, k, v, w=window, t=top_k: tea_pallas.tea_attention_pallas(
                  q, k, v, window=w, top_k=t, pool=pool,
                  interpret=FLAGS.interpret or backend == "cpu")
            try:
              row.update(_measure(attn, q, k, v, proj, steps))
            except Exception as e:  # pylint: disable=broad-except  (OOM etc.: report, go on)
              row.update(skipped=f"{type(e).__name__}: {str(e).splitlines()[0][:80]}")
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
  head = (f"{'tokens':>9} {'win':>3} {'top_k':>5} {'impl':>6} | {'fwd ms':>9} {'x xla':>6} | "
          f"{'f+b ms':>9} {'x xla':>6} | {'fwd MiB':>9} {'x xla':>6} | {'f+b MiB':>9} "
          f"{'x xla':>6}")
  print(head)
  print("-" * len(head))
  for r in rows:
    lead = f"{r['size']:>4}x{r['size']:<4} {r['window']:>3} {r['top_k']:>5} {r['impl']:>6} |"
    if "skipped" in r:
      print(f"{lead} skipped: {r['skipped']}")
      continue
    f = lambda key, s=1.0: f"{r[key] * s:>9.2f} {r.get(key + '_vs_xla', float('nan')):>6.2f}"
    print(f"{lead} {f('fwd_s', 1e3)} | {f('fwd_bwd_s', 1e3)} | "
          f"{f('fwd_temp_bytes', 2**-20)} | {f('fwd_bwd_temp_bytes', 2**-20)}")


def main(argv):
  del argv
  rows = run()
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
