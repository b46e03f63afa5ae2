"""Ahead-of-time compile of the MaskDCPT `pod` train step on a mesh of fake CPU devices.

Compiles the trainer's own train step (`Trainer.lower_train_step()`: the jit the loop runs,
lowered inside `jax.set_mesh`, with the batch-axis activation constraint) for
configs/maskdcpt.py:pod (NAFNet-DCPT width 64, bfloat16 compute, float32 parameters and Adam
state, FSDP over ("data", "fsdp"), gradient accumulation) on 8 fake devices (mesh data 2 x
fsdp 4) from abstract shapes only: no data (jaxmilab.compile's shape-only stand-in), no
parameters in memory. Prints the per-device memory (compiled.memory_analysis()) and XLA's
FLOP count, and checks that the large parameters and their Adam moments are split over all 8
devices. TPU figures: `python -m jaxmilab.compile --config=configs/maskdcpt.py:pod
--topology=v5e-64` (tests/test_compile.py).

The default test compiles a stand-in (NAFNet-DCPT's width 64 and classifier, 1 instead of 28
blocks at the deepest level, unoptimised CPU backend) on 32 px images, 1 example per device:
the full model takes ~2 min to compile on a 2-core CPU and is the slow test.

  python tests/test_pod_compile.py --devices=8 --image=128 --per_device_batch=4
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__":  # Fake devices only in entry points; pytest: conftest.
  _parser = argparse.ArgumentParser()
  _parser.add_argument("--devices", type=int, default=8)
  _parser.add_argument("--image", type=int, default=128)
  _parser.add_argument("--per_device_batch", type=int, default=4)
  _ARGS = _parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={_ARGS.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxmilab import compile as compile_lib  # noqa: E402
from jaxmilab import config_lib  # noqa: E402
from jaxmilab import trainer as trainer_lib  # noqa: E402


def compile_pod_step(
    num_devices: int,
    image: int,
    per_device_batch: int,
    fsdp: int = 4,
    enc_blocks: tuple[int, ...] | None = None,
    fast: bool = False,
):
  """(compiled step, abstract state with shardings, mesh, config) of the pod config on the first
  num_devices devices, for a global batch of per_device_batch * num_devices image x image crops.
  enc_blocks overrides NAFNet's encoder depth (a cheaper stand-in of the same width); fast skips
  XLA's CPU backend optimisations (sharding and buffer assignment are unchanged)."""
  fsdp = min(fsdp, num_devices)
  overrides = {
      "mesh.num_devices": num_devices,
      "mesh.data": num_devices // fsdp,
      "mesh.fsdp": fsdp,
      "batch_size": per_device_batch * num_devices,
      "data.patch_size": image,
      "data.eval_batch_size": per_device_batch * num_devices,
  }
  config = config_lib.load("configs/maskdcpt.py:pod", overrides)
  if enc_blocks is not None:
    with config.unlocked():
      config.model.enc_blocks = tuple(enc_blocks)
  data = compile_lib.stand_in_data(config, FileNotFoundError(config.data.path))
  t = trainer_lib.Trainer(config, None, devices=jax.devices()[:num_devices], data=data)
  compiled, _ = t.compile_train_step(trainer_lib._FAST_COMPILE if fast else None)  # pylint: disable=protected-access
  return compiled, t.abstract_sharded_state, t.mesh, config


def report(compiled, num_devices: int) -> dict[str, float]:
  """Per-device memory (bytes) and FLOPs of one compiled step, printed and returned."""
  stats = trainer_lib.compiled_stats(compiled)
  out = {"flops_per_device": stats["flops_per_device"]}
  for k in ("argument", "output", "temp", "alias", "peak"):
    out[f"{k}_bytes"] = stats[f"{k}_bytes_per_device"]
  print(
      f"\npod train step on {num_devices} device(s): "
      f"{out['flops_per_device'] / 1e9:.1f} GFLOP/device; memory per device: "
      + ", ".join(f"{k[:-6]} {v / 2**20:.1f} MiB" for k, v in out.items() if k.endswith("_bytes"))
  )
  return out


def _check_sharded(abstract, num_devices: int) -> float:
  """Asserts that one device holds about 1/num_devices of the parameters and Adam moments.

  sharding.py's rule gives each mesh axis its own dimension (e.g. a [3, 3, 1, 2048] depthwise
  kernel splits 2048 over "data" only, since no other dimension divides by the fsdp size), so a
  few arrays are split fewer than num_devices ways: allow 25% over the ideal 1/num_devices.
  Returns the fraction of the parameters that one device holds.
  """

  def per_device(tree):
    leaves = jax.tree.leaves(tree)
    full = sum(int(np.prod(x.shape)) for x in leaves)
    local = sum(int(np.prod(x.sharding.shard_shape(x.shape))) for x in leaves)
    return local / full

  fraction = per_device(abstract.params)
  print(f"one device holds {fraction:.2%} of the parameters (ideal {1 / num_devices:.2%})")
  assert fraction < 1.25 / num_devices, fraction
  mu = [
      x
      for p, x in jax.tree_util.tree_leaves_with_path(abstract.opt_state)
      if "mu" in jax.tree_util.keystr(p)
  ]
  assert mu and per_device(mu) < 1.25 / num_devices
  return fraction


def _check_pod(abstract, config, out, num_devices):
  # No accumulation: the pod batch fits in one step (configs/maskdcpt.py:pod).
  assert config.model.dtype == "bfloat16" and config.optimizer.accumulate_steps == 1
  assert tuple(config.mesh.shard_params_over) == ("data", "fsdp")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract.params))  # master weights
  _check_sharded(abstract, num_devices)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  # The state (parameters, Adam moments, accumulated gradients) is split, not replicated.
  assert out["argument_bytes"] < 1.3 * state_bytes / num_devices + 2**20, (out, state_bytes)


@pytest.mark.slow  # 110 s on 2 cores: over the default suite's 15-minute budget (README)
def test_pod_step_compiles_sharded_stand_in():
  """The pod step with NAFNet-DCPT's width 64 and classifier but 1 (not 28) block at the
  deepest encoder level, 32 px images: the same sharding and dtypes, ~4x cheaper to compile."""
  t0 = time.time()
  compiled, abstract, _, config = compile_pod_step(
      8, image=32, per_device_batch=1, enc_blocks=(1, 1, 1, 1), fast=True
  )
  out = report(compiled, 8)
  print(f"compile: {time.time() - t0:.1f} s")
  _check_pod(abstract, config, out, 8)


@pytest.mark.slow
def test_pod_step_compiles_full_model():
  compiled, abstract, _, config = compile_pod_step(8, image=32, per_device_batch=1)
  _check_pod(abstract, config, report(compiled, 8), 8)


if __name__ == "__main__":
  t = time.time()
  c, a, _, _ = compile_pod_step(_ARGS.devices, _ARGS.image, _ARGS.per_device_batch)
  r = report(c, _ARGS.devices)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(a.params))
  print(
      f"parameters: {n / 1e6:.2f} M; compile {time.time() - t:.0f} s; "
      f"GFLOP per image: {r['flops_per_device'] / _ARGS.per_device_batch / 1e9:.2f}"
  )
