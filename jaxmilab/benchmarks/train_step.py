r"""Train-step throughput: images/s, achieved FLOP/s vs a same-run matmul peak, JAX vs PyTorch.

  python -m jaxmilab.benchmarks.train_step --config=configs/dcpt.py:quickstart [--steps=20]

Times the config's jitted train step (its method, e.g. DCPT's two forwards + one backward)
and a plain L1 restoration step of the same backbone; when torch is installed, the same
L1 NAFNet step in PyTorch on the same device (CPU) with the same batch, and the ratio.
FLOPs per step come from XLA's cost analysis of the compiled step, which is the trainer's own
(`Trainer.compile_train_step()`, the executable the training loop calls).
"""

from __future__ import annotations

import json
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import config_lib
from jaxmilab import sharding as sharding_lib
from jaxmilab import trainer as trainer_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/dcpt.py:quickstart", "configs/<exp>.py:<variant>",
                    allow_override=True)  # jaxmilab.compile defines --config too (one process may import both)
flags.DEFINE_integer("steps", 20, "Timed steps (after one warm-up step).")
flags.DEFINE_integer("batch_size", 0, "Override the global batch size (0 = the config's).")
flags.DEFINE_string("output", "", "Also write the results as JSON here.")


def _time(fn, steps: int) -> float:
  """Median seconds per call of fn() (which must block until its result is ready)."""
  fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def matmul_peak(n: int = 2048, steps: int = 10) -> float:
  """FLOP/s of a jitted float32 n x n matmul on the default device: the roofline of this run."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / _time(lambda: f(a).block_until_ready(), steps)


def time_jax_step(config, steps: int) -> dict[str, float]:
  with tempfile.TemporaryDirectory() as workdir:
    t = trainer_lib.Trainer(config, workdir)
    state = t.initial_state()
    batch = sharding_lib.put_batch(next(t.data.train), t.mesh)
    # The trainer's own compiled step (lowered inside jax.set_mesh), as the training loop runs it.
    compiled, _ = t.compile_train_step()
    flops = trainer_lib.compiled_stats(compiled)["flops_per_device"]
    holder = {"state": state}
    rng = t._rng()  # pylint: disable=protected-access

    def step():
      with t.mesh_context():
        holder["state"], metrics = compiled(holder["state"], batch, rng)
      jax.block_until_ready(metrics)

    seconds = _time(step, steps)
  return {"seconds": seconds, "images_per_s": config.batch_size / seconds, "flops": flops,
          "flops_per_s": flops / seconds}


def time_torch_step(config, steps: int) -> dict[str, float] | None:
  """The same NAFNet + L1 + AdamW step in PyTorch (None without torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from tests.torch_reference import nafnet as torch_nafnet  # pylint: disable=g-import-not-at-top
  from jaxmilab.models import nafnet  # pylint: disable=g-import-not-at-top
  arch = nafnet.resolve_config(config.model)
  net = torch_nafnet.build(arch["width"], list(arch["enc_blocks"]), arch["middle_blocks"],
                           list(arch["dec_blocks"]))
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
  p = config.data.patch_size
  lq = torch.rand(config.batch_size, 3, p, p)
  gt = torch.rand(config.batch_size, 3, p, p)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = (net(lq)[0] - gt).abs().mean()
    loss.backward()
    opt.step()

  seconds = _time(step, steps)
  return {"seconds": seconds, "images_per_s": config.batch_size / seconds,
          "threads": torch.get_num_threads()}


def main(argv):
  del argv
  overrides = {"mesh.num_devices": 1}
  if FLAGS.batch_size:
    overrides["batch_size"] = FLAGS.batch_size
  config = config_lib.load(FLAGS.config, overrides)
  l1 = config_lib.load(FLAGS.config, overrides)
  l1.unlock()
  l1.method = {"name": "restoration", "init_from": ""}
  l1.lock()
  peak = matmul_peak()
  results = {"device": jax.devices()[0].device_kind, "config": FLAGS.config,
             "batch_size": config.batch_size, "patch": config.data.get("patch_size"),
             "matmul_peak_flops_per_s": peak,
             "jax_method": time_jax_step(config, FLAGS.steps),
             "jax_l1": time_jax_step(l1, FLAGS.steps),
             "torch_l1": time_torch_step(l1, FLAGS.steps)}
  rows = [("JAX " + config.method.name, results["jax_method"]), ("JAX L1", results["jax_l1"])]
  print(f"\ndevice: {results['device']}   config: {FLAGS.config}   batch {config.batch_size} x "
        f"{results['patch']}px   matmul peak: {peak / 1e9:.1f} GFLOP/s")
  print("| step | images/s | GFLOP/step | achieved GFLOP/s | % of matmul peak |")
  print("|---|---|---|---|---|")
  for name, r in rows:
    print(f"| {name} | {r['images_per_s']:.2f} | {r['flops'] / 1e9:.2f} | {r['flops_per_s'] / 1e9:.1f} | "
          f"{100 * r['flops_per_s'] / peak:.1f}% |")
  if results["torch_l1"]:
    t = results["torch_l1"]
    print(f"| PyTorch L1 ({t['threads']} threads) | {t['images_per_s']:.2f} | | | |")
    print(f"JAX / PyTorch images/s (L1 step): {results['jax_l1']['images_per_s'] / t['images_per_s']:.2f}x")
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
