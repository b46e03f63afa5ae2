r"""Ahead-of-time compile of a config's real train step for a device topology, without the hardware.

  python -m jaxmilab.compile --config=configs/maskdcpt.py:pod --topology=v5e-64
  python -m jaxmilab.compile --config=configs/dcpt.py:smoke --topology=cpu:8
  python -m jaxmilab.compile --config=configs/maskdcpt.py:multislice --topology=v5e-256 \
      --num_slices=2

MaxText's `train_compile` idea: learn whether a config fits a slice before paying for it.
The program is the trainer's own (`Trainer.lower_train_step()`: the jit the training loop
runs, lowered inside `jax.set_mesh`), compiled by the target's compiler: TPU slices through
`jax.experimental.topologies.get_topology_desc` (needs libtpu: `pip install -e '.[tpu]'`,
which installs on an x86 CPU machine), or `cpu:N` fake host devices. The last line printed
is one JSON object: topology, devices, mesh, flops_per_device, argument / output / temp /
alias / peak bytes per device (peak = argument + temp + output - alias, the state being
donated) and, when the compiler's cost analysis gives one, its time estimate.

Multislice (`--num_slices=N`, TPU only): N copies of the slice joined by the data-centre network
(DCN), laid out by `sharding.create_mesh` (create_hybrid_device_mesh). The JSON adds
`num_slices`, `dcn_axes` (mesh axes that span slices -> number of slices they span),
`params_sharded_over_dcn` (some parameter or optimizer array is split over such an axis) and
what the step sends over DCN, read from the compiled program (`dcn_traffic`): libtpu compiles
one program per slice whose collectives stay inside the slice (their replica groups name the
slice's devices) and whose cross-slice part is Megascale host transfers (`send` ops with
`_xla_megascale_transfer_type`); their payloads, times the trip counts of the loops around them,
are the bytes per chip per step; any collective whose replica groups span slices is counted too.

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
    "v5e-256": dict(topology_name="v5e:16x16"),
    "v5e-128": dict(topology_name="v5e:8x16"),
    "v5e-64": dict(topology_name="v5e:8x8"),
    "v5e-32": dict(topology_name="v5e:4x8"),
    "v5e-16": dict(topology_name="v5e:4x4"),
    "v5e-8": dict(topology_name="v5e:2x4"),
    "v5e-4": dict(topology_name="v5e:2x2"),
    "v4-32": dict(topology_name="v4:2x2x4", chip_config_name="megacore"),
    "v4-8": dict(topology_name="v4:2x2x1", chip_config_name="megacore"),
    "v5p-128": dict(topology_name="v5p:4x4x4", chip_config_name="megacore"),
    "v6e-256": dict(topology_name="v6e:16x16"),
    "v6e-64": dict(topology_name="v6e:8x8"),
    "v6e-4": dict(topology_name="v6e:2x2"),
}
RESTORATION_DATA = ("array_records", "uir2p5m", "paired_folders", "degraded_photos")

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "config",
    None,
    "configs/<exp>.py:<variant>; override keys with " "--config.<key>=<value>.",
    allow_override=True,
)  # also in benchmarks.train_step
flags.DEFINE_string("topology", "cpu:8", f"{', '.join(TOPOLOGIES)} or cpu:N (N fake CPU devices).")
flags.DEFINE_integer(
    "num_slices",
    1,
    "Multislice: this many copies of --topology joined by DCN " "(TPU topologies only).",
)
flags.DEFINE_string("hlo_out", "", "Also write the compiled program's HLO text to this file.")
flags.DEFINE_bool(
    "fast",
    False,
    "Skip XLA's backend optimisations (CPU only; same sharding and "
    "buffer assignment, less accurate FLOPs).",
)


def topology_devices(topology: str, num_slices: int = 1) -> list[Any]:
  """The devices of `topology` x `num_slices` (TPU: descriptions without hardware; cpu:N: host
  devices)."""
  import jax  # pylint: disable=g-import-not-at-top

  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices}: use 1 or more.")
  if topology.startswith("cpu:"):
    if num_slices != 1:
      raise ValueError(
          f"--topology={topology} --num_slices={num_slices}: host CPU devices have no "
          f"slices; Multislice compiles need a TPU topology (e.g. --topology=v5e-4)."
      )
    n = int(topology.split(":", 1)[1])
    devices = jax.devices("cpu")
    if len(devices) < n:
      raise ValueError(
          f"--topology={topology}: only {len(devices)} CPU devices; set "
          f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts "
          f"(python -m jaxmilab.compile does)."
      )
    return devices[:n]
  if topology not in TOPOLOGIES:
    raise ValueError(f"--topology={topology!r}: use one of {sorted(TOPOLOGIES)} or cpu:N.")
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError(
        f"--topology={topology} compiles with libtpu: pip install -e '.[tpu]' "
        f"(installs on x86 CPU machines)."
    ) from e
  # Compiling for a topology opens no TPU; another process holding libtpu's lock is harmless.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  return list(
      topologies.get_topology_desc(
          platform="tpu", num_slices=num_slices, **TOPOLOGIES[topology]
      ).devices
  )


_DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
    "token": 0,
}
_COLLECTIVE_OPS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "all-reduce-start",
    "all-gather-start",
    "collective-permute-start",
)


def _shape_bytes(shape: str) -> int:
  """Bytes of one HLO array type such as "bf16[256,512]{1,0:T(8,128)}" (0 for token[])."""
  import re  # pylint: disable=g-import-not-at-top

  m = re.match(r"\s*([a-z0-9]+)\[([0-9,]*)\]", shape)
  if not m:
    return 0
  n = 1
  for d in filter(None, m.group(2).split(",")):
    n *= int(d)
  return n * _DTYPE_BYTES.get(m.group(1), 4)


def _split_type(rest: str) -> tuple[str, str]:
  """("<result type>", "<opcode and the rest>") of an instruction's right-hand side."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += {"(": 1, ")": -1}.get(ch, 0)
      if depth == 0:
        return rest[: i + 1], rest[i + 1 :].lstrip()
  head, _, tail = rest.partition(" ")
  return head, tail


def _tuple_elements(type_str: str) -> list[str]:
  if not type_str.startswith("("):
    return [type_str]
  out, depth, cur = [], 0, ""
  for ch in type_str[1:-1]:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      out.append(cur.strip())
      cur = ""
    else:
      cur += ch
  return out + ([cur.strip()] if cur.strip() else [])


def _replica_groups(attrs: str) -> list[list[int]] | None:
  """replica_groups={{0,1},{2,3}} or the iota form [G,S]<=[dims]T(perm); None if absent."""
  import re  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  m = re.search(r"replica_groups=\[([0-9,]+)\]<=\[([0-9,]+)\](?:T\(([0-9,]+)\))?", attrs)
  if m:
    shape = [int(x) for x in m.group(1).split(",")]
    dims = [int(x) for x in m.group(2).split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if m.group(3):
      ids = ids.transpose([int(x) for x in m.group(3).split(",")])
    return ids.reshape(shape).tolist()
  m = re.search(r"(?:replica_groups|source_target_pairs)=\{((?:\{[0-9,]*\},?)*)\}", attrs)
  if m:
    return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([0-9,]*)\}", m.group(1))]
  return None


def dcn_traffic(hlo_text: str, device_slices: list[int]) -> dict[str, Any]:
  """What one step of a compiled program sends over DCN, per chip (module docstring).

  `device_slices`: slice index of each device of the program's device assignment (the ids in
  replica groups). Returns {"dcn_bytes_per_chip_per_step", "dcn_transfers" (kind -> bytes per
  chip per step), "dcn_ops" (number of such ops in the program text), "loops_without_trip_count"}.
  """
  import collections  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top

  comps: dict[str, list[tuple[str, str, str]]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = re.match(r"^(ENTRY )?%?([^\s(]+) \(.*\) -> .*\{\s*$", line)
    if header:
      current = header.group(2)
      comps[current] = []
      if header.group(1):
        entry = current
      continue
    ins = re.match(r"^\s+(?:ROOT )?%?(\S+) = (.*)$", line)
    if ins and current is not None:
      type_str, rest = _split_type(ins.group(2))
      op = rest.split("(", 1)[0]
      comps[current].append((op, type_str, rest))
  # How often each computation runs per step: while bodies x their known trip count.
  mult: dict[str, float] = collections.defaultdict(float)
  unknown_loops = 0
  order, seen = [], set()

  def visit(name):
    if name in seen or name not in comps:
      return
    seen.add(name)
    for _, _, rest in comps[name]:
      for callee in re.findall(
          r"(?:body|condition|calls|to_apply|true_computation|" r"false_computation)=%?([\w.\-]+)",
          rest,
      ):
        visit(callee)
      for group in re.findall(r"branch_computations=\{([^}]*)\}", rest):
        for callee in re.findall(r"%?([\w.\-]+)", group):
          visit(callee)
    order.append(name)

  if entry is None:
    return {
        "dcn_bytes_per_chip_per_step": 0.0,
        "dcn_transfers": {},
        "dcn_ops": 0,
        "loops_without_trip_count": 0,
    }
  visit(entry)
  mult[entry] = 1.0
  for name in reversed(order):  # callers before callees
    for op, _, rest in comps[name]:
      factor = 1.0
      if op == "while":
        trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        if trip:
          factor = float(trip.group(1))
        else:
          unknown_loops += 1
      for callee in re.findall(
          r"(?:body|calls|true_computation|false_computation)=%?([\w.\-]+)", rest
      ):
        mult[callee] += mult[name] * factor
      for group in re.findall(r"branch_computations=\{([^}]*)\}", rest):
        for callee in re.findall(r"%?([\w.\-]+)", group):
          mult[callee] += mult[name]
  transfers: dict[str, float] = collections.defaultdict(float)
  ops = 0
  for name, instructions in comps.items():
    for op, type_str, rest in instructions:
      if op == "send" and "_xla_megascale_transfer_type" in rest:
        kind = re.search(r'_xla_megascale_transfer_type="(\w+)"', rest).group(1)
        transfers[kind] += _shape_bytes(_tuple_elements(type_str)[0]) * mult[name]
        ops += 1
      elif op in _COLLECTIVE_OPS:
        groups = _replica_groups(rest)
        if not groups:
          continue
        spans = any(
            len({device_slices[i] for i in g if i < len(device_slices)}) > 1 for g in groups
        )
        if spans:
          elements = _tuple_elements(type_str)
          if op.endswith("-start") and len(elements) > 1:
            elements = elements[1:2] if op != "all-reduce-start" else elements
          transfers[op.replace("-start", "").upper().replace("-", "_")] += (
              sum(_shape_bytes(e) for e in elements) * mult[name]
          )
          ops += 1
  return {
      "dcn_bytes_per_chip_per_step": float(sum(transfers.values())),
      "dcn_transfers": dict(transfers),
      "dcn_ops": ops,
      "loops_without_trip_count": unknown_loops,
  }


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
    raise ValueError(
        f"config.data ({config.data.name}) could not be built here ({error}); "
        f"jaxmilab.compile has a shape-only stand-in for {RESTORATION_DATA} only. "
        f"Point the config's data keys at a local copy of (a part of) the data."
    ) from error
  types = config.data.get("types", None) or uir_degradations.UIR_TYPE_NAMES
  types = (types,) if isinstance(types, str) else tuple(types)
  if len(types) == 1 and types[0] not in uir_degradations.UIR_TYPE_NAMES:
    types = uir_degradations.UIR_TYPE_NAMES  # A task-set name: count every UIR type.
  p, b = int(config.data.patch_size), int(config.batch_size)
  batch = {
      "lq": np.zeros((b, p, p, 3), np.float32),
      "gt": np.zeros((b, p, p, 3), np.float32),
      "label": np.zeros((b,), np.int32),
  }
  info = data_base.DataInfo(num_classes=len(types), class_names=types, image_channels=3)
  return data_base.Datasets(train=_ShapeOnlyIterator(batch), eval_batches=lambda: [], info=info)


def compile_config(
    config, topology: str, fast: bool = False, num_slices: int = 1, hlo_out: str = ""
) -> dict[str, Any]:
  """Compiles `config`'s train step for `topology` x `num_slices`; returns the JSON line's
  figures."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxmilab import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import base as data_base  # pylint: disable=g-import-not-at-top
  from jaxmilab import registry  # pylint: disable=g-import-not-at-top
  from jaxmilab import sharding as sharding_lib  # pylint: disable=g-import-not-at-top

  devices = topology_devices(topology, num_slices)
  data_note = config.data.name
  try:
    data = registry.get_data(config.data.name)(
        config.data,
        batch_size=config.batch_size,
        seed=config.seed,
        process_index=0,
        process_count=1,
    )
  except (data_base.DataError, FileNotFoundError, OSError, ValueError) as e:
    data = stand_in_data(config, e)
    data_note = f"shape-only stand-in for {config.data.name} ({type(e).__name__})"
  t = trainer_lib.Trainer(config, None, devices=devices, data=data)
  n_params = sum(int(x.size) for x in jax.tree.leaves(t.abstract_state.params))
  head = {
      "topology": topology,
      "num_slices": num_slices,
      "device_kind": devices[0].device_kind,
      "devices": len(devices),
      "mesh": dict(t.mesh.shape),
      "dcn_axes": sharding_lib.dcn_axes(t.mesh),
      "params_sharded_over_dcn": sharding_lib.params_sharded_over_dcn(t.state_shardings, t.mesh),
      "global_batch": int(config.batch_size),
      "parameters": n_params,
      "data": data_note,
  }
  t0 = time.perf_counter()
  try:
    compiled, seconds = t.compile_train_step(trainer_lib._FAST_COMPILE if fast else None)  # pylint: disable=protected-access
  except Exception as e:  # pylint: disable=broad-except
    figures = trainer_lib.oom_figures(str(e))
    if figures is None:
      raise
    # Does not fit one chip: a result (with the compiler's figures), not a traceback.
    return {
        **head,
        "fits": False,
        "compile_seconds": round(time.perf_counter() - t0, 1),
        "needed_bytes_per_device": figures[0],
        "hbm_bytes_per_device": figures[1],
    }
  stats = trainer_lib.compiled_stats(compiled)
  # The jit's device assignment is the mesh's devices in order (ids of the replica groups).
  slices = [getattr(d, "slice_index", 0) for d in t.mesh.devices.flat]
  text = compiled.as_text()
  if hlo_out:
    with open(hlo_out, "w", encoding="utf-8") as f:
      f.write(text)
  traffic = dcn_traffic(text, slices) if num_slices > 1 else {}
  if traffic:
    traffic["dcn_bytes_per_slice_per_step"] = (
        traffic["dcn_bytes_per_chip_per_step"] * len(devices) // num_slices
    )
  return {**head, "fits": True, "compile_seconds": round(seconds, 1), **stats, **traffic}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()  # libraries' INFO logs only with --verbosity=1
  if FLAGS.topology.startswith("cpu:"):
    n = int(FLAGS.topology.split(":", 1)[1])
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}"
    ).strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # Never grab a local accelerator.
  from jaxmilab import config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.load(FLAGS.config, _OVERRIDES, string_values=True)
  t0 = time.time()
  result = compile_config(config, FLAGS.topology, FLAGS.fast, FLAGS.num_slices, FLAGS.hlo_out)
  result["wall_seconds"] = round(time.time() - t0, 1)
  print(json.dumps(result), flush=True)
  if not result["fits"]:
    raise ValueError(
        f"{FLAGS.config} does not fit one {result['device_kind']} chip of {FLAGS.topology}: the "
        f"TPU compiler needs {result['needed_bytes_per_device'] / 2**30:.2f} GiB of HBM, the chip "
        f"has {result['hbm_bytes_per_device'] / 2**30:.2f} GiB; lower config.batch_size, shard "
        "more (config.mesh.*) or use a larger slice."
    )


_OVERRIDES: dict[str, str] = {}


def _parse_flags(argv):
  """absl flags, with `--config.<key>=<value>` overrides set aside for config_lib.load."""
  rest = []
  for arg in argv:
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config.") :].partition("=")
      if not eq:
        raise app.UsageError(f"--config.{key} needs a value: --config.{key}=VALUE.")
      _OVERRIDES[key] = value
    else:
      rest.append(arg)
  return FLAGS(rest)


def run():
  """Console-script entry point (jaxmilab-compile)."""
  flags.mark_flags_as_required(["config"])
  console.run_app(main, flags_parser=_parse_flags)  # one-line errors (exit 2), --help 0


if __name__ == "__main__":
  run()
