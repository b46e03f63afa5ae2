r"""Ahead-of-time compile of a config's real train step for a device topology, without the hardware.

  python -m jaxmilab.compile --config=configs/maskdcpt.py:pod --topology=v5e-64
  python -m jaxmilab.compile --config=configs/dcpt.py:smoke --topology=cpu:8

MaxText's `train_compile` idea: learn whether a config fits a slice before paying for it.
The program is the trainer's own (`Trainer.lower_train_step()`: the jit the training loop
runs, lowered inside `jax.set_mesh`), compiled by the target's compiler: TPU slices through
`jax.experimental.topologies.get_topology_desc` (needs libtpu: `pip install -e '.[tpu]'`,
which installs on an x86 CPU machine), or `cpu:N` fake host devices. The last line printed
is one JSON object: topology, devices, mesh, flops_per_device, argument / output / temp /
alias / peak bytes per device (peak = argument + temp + output - alias, the state being
donated) and, when the compiler's cost analysis gives one, its time estimate.

Data: only shapes are needed. When the config's dataset cannot be built here (its folders
are on the pod), restoration datasets are replaced by a shape-only stand-in with the same
batch keys, patch size and number of degradation types; the JSON says so ("data").
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import app
from absl import flags

from jaxmilab import console

# Topology names (Cloud TPU slice names count TensorCores for v4 / v5p, chips otherwise).
TOPOLOGIES = {
    "v5e-64": dict(topology_name="v5e:8x8"),
    "v5e-16": dict(topology_name="v5e:4x4"),
    "v5e-4": dict(topology_name="v5e:2x2"),
    "v4-32": dict(topology_name="v4:2x2x4", chip_config_name="megacore"),
    "v4-8": dict(topology_name="v4:2x2x1", chip_config_name="megacore"),
    "v5p-128": dict(topology_name="v5p:4x4x4", chip_config_name="megacore"),
    "v6e-64": dict(topology_name="v6e:8x8"),
    "v6e-4": dict(topology_name="v6e:2x2"),
}
RESTORATION_DATA = ("array_records", "uir2p5m", "paired_folders", "degraded_photos")

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "configs/<exp>.py:<variant>; override keys with "
                    "--config.<key>=<value>.", allow_override=True)  # also in benchmarks.train_step
flags.DEFINE_string("topology", "cpu:8", f"{', '.join(TOPOLOGIES)} or cpu:N (N fake CPU devices).")
flags.DEFINE_bool("fast", False, "Skip XLA's backend optimisations (CPU only; same sharding and "
                  "buffer assignment, less accurate FLOPs).")


def topology_devices(topology: str) -> list[Any]:
  """The devices of `topology` (TPU: descriptions without hardware; cpu:N: host devices)."""
  import jax  # pylint: disable=g-import-not-at-top
  if topology.startswith("cpu:"):
    n = int(topology.split(":", 1)[1])
    devices = jax.devices("cpu")
    if len(devices) < n:
      raise ValueError(f"--topology={topology}: only {len(devices)} CPU devices; set "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts "
                       f"(python -m jaxmilab.compile does).")
    return devices[:n]
  if topology not in TOPOLOGIES:
    raise ValueError(f"--topology={topology!r}: use one of {sorted(TOPOLOGIES)} or cpu:N.")
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(f"--topology={topology} compiles with libtpu: pip install -e '.[tpu]' "
                      f"(installs on x86 CPU machines).") from e
  # Compiling for a topology opens no TPU; another process holding libtpu's lock is harmless.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return list(topologies.get_topology_desc(platform="tpu", **TOPOLOGIES[topology]).devices)


class _ShapeOnlyIterator:
  """An endless iterator of one zero batch, with grain's get_state / set_state."""

  def __init__(self, batch):
    self._batch = batch

  def __iter__(self):
    return self

  def __next__(self):
    return self._batch

  def get_state(self):
    return {}

  def set_state(self, state):
    del state


def stand_in_data(config, error: Exception):
  """Shape-only restoration data ({"lq", "gt", "label"}) when the config's cannot be built."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import base as data_base  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import uir_degradations  # pylint: disable=g-import-not-at-top
  if config.data.name not in RESTORATION_DATA:
    raise ValueError(f"config.data ({config.data.name}) could not be built here ({error}); "
                     f"jaxmilab.compile has a shape-only stand-in for {RESTORATION_DATA} only. "
                     f"Point the config's data keys at a local copy of (a part of) the data.") from error
  types = config.data.get("types", None) or uir_degradations.UIR_TYPE_NAMES
  types = (types,) if isinstance(types, str) else tuple(types)
  if len(types) == 1 and types[0] not in uir_degradations.UIR_TYPE_NAMES:
    types = uir_degradations.UIR_TYPE_NAMES  # A task-set name: count every UIR type.
  p, b = int(config.data.patch_size), int(config.batch_size)
  batch = {"lq": np.zeros((b, p, p, 3), np.float32), "gt": np.zeros((b, p, p, 3), np.float32),
           "label": np.zeros((b,), np.int32)}
  info = data_base.DataInfo(num_classes=len(types), class_names=types, image_channels=3)
  return data_base.Datasets(train=_ShapeOnlyIterator(batch), eval_batches=lambda: [], info=info)


def compile_config(config, topology: str, fast: bool = False) -> dict[str, Any]:
  """Compiles `config`'s train step for `topology`; returns the figures of the JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import base as data_base  # pylint: disable=g-import-not-at-top
  from jaxmilab import registry  # pylint: disable=g-import-not-at-top
  devices = topology_devices(topology)
  data_note = config.data.name
  try:
    data = registry.get_data(config.data.name)(
        config.data, batch_size=config.batch_size, seed=config.seed, process_index=0,
        process_count=1)
  except (data_base.DataError, FileNotFoundError, OSError, ValueError) as e:
    data = stand_in_data(config, e)
    data_note = f"shape-only stand-in for {config.data.name} ({type(e).__name__})"
  t = trainer_lib.Trainer(config, None, devices=devices, data=data)
  compiled, seconds = t.compile_train_step(trainer_lib._FAST_COMPILE if fast else None)  # pylint: disable=protected-access
  stats = trainer_lib.compiled_stats(compiled)
  n_params = sum(int(x.size) for x in jax.tree.leaves(t.abstract_state.params))
  return {"topology": topology, "device_kind": devices[0].device_kind, "devices": len(devices),
          "mesh": dict(t.mesh.shape), "global_batch": int(config.batch_size),
          "parameters": n_params, "data": data_note, "compile_seconds": round(seconds, 1), **stats}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()   # libraries' INFO logs only with --verbosity=1
  if FLAGS.topology.startswith("cpu:"):
    n = int(FLAGS.topology.split(":", 1)[1])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={n}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Never grab a local accelerator.
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load(FLAGS.config, _OVERRIDES, string_values=True)
  t0 = time.time()
  result = compile_config(config, FLAGS.topology, FLAGS.fast)
  result["wall_seconds"] = round(time.time() - t0, 1)
  print(json.dumps(result), flush=True)


_OVERRIDES: dict[str, str] = {}


def _parse_flags(argv):
  """absl flags, with `--config.<key>=<value>` overrides set aside for config_lib.load."""
  rest = []
  for arg in argv:
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        raise app.UsageError(f"--config.{key} needs a value: --config.{key}=VALUE.")
      _OVERRIDES[key] = value
    else:
      rest.append(arg)
  return FLAGS(rest)


def run():
  """Console-script entry point (jaxmilab-compile)."""
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
