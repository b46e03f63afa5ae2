r"""Train-step throughput: images/s, achieved FLOP/s vs a same-run matmul peak, JAX vs PyTorch.

  python -m jaxmilab.benchmarks.train_step --config=configs/dcpt.py:quickstart [--steps=20]

Times the config's jitted train step (its method, e.g. DCPT's two forwards + one backward)
and a plain L1 restoration step of the same backbone; when torch is installed, the same
L1 NAFNet step in PyTorch on the same device (CPU) with the same batch, and the ratio.
FLOPs per step come from XLA's cost analysis of the compiled step, which is the trainer's own
(`Trainer.compile_train_step()`, the executable the training loop calls).

The steps are timed interleaved: `--rounds` rounds, each running every step `--steps / --rounds`
times in turn, so a change in the machine's speed during the run reaches all of them alike (on
the shared 2-core host PyTorch's step gave 42, 54 and 78 images/s in three back-to-back runs of
this benchmark when they were timed one after the other). Images/s are from the median step
time over all rounds; the JAX / PyTorch ratio is the median of the per-round ratios, printed
with its range.

On CPU, also "JAX L1, XLA convs": the same L1 step traced with
`platform_lib.for_platform("generic")`, i.e. with the convolutions and LayerNorms every platform
ran before issue #33 (XLA's grouped / 1x1 convs, the norm differentiated by JAX; what TPU and GPU
still get), and a per-op table, fwd+bwd of one op at the backbone's level-0 shapes:
JAX before (XLA's conv) / JAX after (layers' CPU form) / PyTorch, for NAFNet's ops and for
Restormer's (the transformer family's depthwise qkv / FFN convs and channel LayerNorm).

`--profile_steps=N` (default 5; 0 = off) then says where the JAX L1 step's time goes: a
jax.profiler trace of N steps, each executed HLO op's time attributed, through its `op_name`
metadata, to forward or backward and to the innermost module of the network that issued it
(`conv2` = every block's conv2, `encoders` = ops of an encoder block outside its sub-modules,
e.g. NAFNet's SimpleGate and scaled residuals), or to "outside the network" (loss, optimizer);
ops the compiler created without a source (layout copies) are "unattributed". Shares are of the
summed op time (the CPU runtime runs independent ops concurrently, so it can exceed wall time).
"""

from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import json
import re
import tempfile
import time
from typing import Any, Callable, Iterable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxmilab import config_lib
from jaxmilab import console
from jaxmilab import sharding as sharding_lib
from jaxmilab import trainer as trainer_lib
from jaxmilab.kernels import platform as platform_lib
from jaxmilab.models import layers

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines this benchmark's flags; on demand, as benchmarks share flag names."""
  flags.DEFINE_string(
      "config",
      "configs/dcpt.py:quickstart",
      "configs/<exp>.py:<variant>",
      allow_override=True,
      flag_values=flag_values,
  )  # jaxmilab.compile defines --config too (one process may import both)
  flags.DEFINE_integer(
      "steps", 20, "Timed steps (after one warm-up step).", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "rounds",
      5,
      "Interleaved timing rounds (each runs every step steps / rounds times).",
      flag_values=flag_values,
  )
  flags.DEFINE_integer(
      "batch_size", 0, "Override the global batch size (0 = the config's).", flag_values=flag_values
  )
  flags.DEFINE_string("output", "", "Also write the results as JSON here.", flag_values=flag_values)
  flags.DEFINE_integer(
      "profile_steps",
      5,
      "Profile this many JAX L1 steps and print where their time goes (0 = off).",
      flag_values=flag_values,
  )
  flags.DEFINE_bool(
      "compare_xla_convs",
      True,
      "On CPU, also time the L1 step and the per-op table "
      "with XLA's convolutions (the program before issue #33, today's TPU/GPU forms).",
      flag_values=flag_values,
  )


def time_interleaved(
    fns: dict[str, Callable[[], Any]], steps: int, rounds: int
) -> dict[str, list[list[float]]]:
  """Seconds of each call of each fn (which must block until done): {name: [round][call]}.

  After one untimed warm-up call of each, `rounds` rounds run each fn max(steps // rounds, 1)
  times in turn, so that a slower or faster phase of the machine falls on every fn."""
  for fn in fns.values():
    fn()
  per_round = max(steps // max(rounds, 1), 1)
  times = {name: [] for name in fns}
  for _ in range(max(rounds, 1)):
    for name, fn in fns.items():
      round_times = []
      for _ in range(per_round):
        t0 = time.perf_counter()
        fn()
        round_times.append(time.perf_counter() - t0)
      times[name].append(round_times)
  return times


def _time(fn, steps: int) -> float:
  """Median seconds per call of fn() (which must block until its result is ready): one warm-up
  call, then `steps` timed calls (`time_interleaved` with one fn and one round)."""
  return float(np.median(time_interleaved({"fn": fn}, steps, rounds=1)["fn"][0]))


def round_ratios(times: dict[str, list[list[float]]], num: str, den: str) -> list[float]:
  """Per round, median seconds of `den` / median seconds of `num`: num's speed relative to den."""
  return [float(np.median(d) / np.median(n)) for n, d in zip(times[num], times[den])]


def matmul_peak(n: int = 2048, steps: int = 10) -> float:
  """FLOP/s of a jitted float32 n x n matmul on the default device: the roofline of this run."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / _time(lambda: f(a).block_until_ready(), steps)


def prepare_jax_step(
    config, stack: contextlib.ExitStack, platform: str | None = None
) -> tuple[Callable[[], None], dict[str, Any]]:
  """(step, info): `step()` runs the trainer's compiled train step once (blocking); info has
  "flops" (XLA's cost analysis), "hlo_text" and "modules" (for `profile_by_module`). The
  trainer's temporary workdir lives until `stack` closes. `platform` traces the step with
  platform_lib.for_platform(platform)."""
  workdir = stack.enter_context(tempfile.TemporaryDirectory())
  with platform_lib.for_platform(platform) if platform else contextlib.nullcontext():
    t = trainer_lib.Trainer(config, workdir)
    state = t.initial_state()
    batch = sharding_lib.put_batch(next(t.data.train), t.mesh)
    # The trainer's own compiled step (lowered inside jax.set_mesh), as the training loop runs it.
    compiled, _ = t.compile_train_step()
  holder = {"state": state}
  rng = t._rng()  # pylint: disable=protected-access

  def step():
    with t.mesh_context():
      holder["state"], metrics = compiled(holder["state"], batch, rng)
    jax.block_until_ready(metrics)

  info = {
      "flops": trainer_lib.compiled_stats(compiled)["flops_per_device"],
      "hlo_text": compiled.as_text(),
      "modules": module_names(state.params),
  }
  return step, info


def profile_step(step: Callable[[], None], info: dict[str, Any], steps: int) -> list[dict]:
  """`profile_by_module` of `steps` calls of a step from `prepare_jax_step`."""
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir, create_perfetto_trace=True)
    for _ in range(steps):
      step()
    jax.profiler.stop_trace()
    events = _trace_events(logdir)
  return profile_by_module(info["hlo_text"], events, info["modules"], steps)


def _step_result(seconds: float, batch_size: int, flops: float | None = None) -> dict[str, Any]:
  out = {"seconds": seconds, "images_per_s": batch_size / seconds}
  if flops is not None:
    out.update(flops=flops, flops_per_s=flops / seconds)
  return out


def time_jax_step(config, steps: int) -> dict[str, Any]:
  """Median seconds, images/s and FLOP/s of the config's train step, timed on its own."""
  with contextlib.ExitStack() as stack:
    step, info = prepare_jax_step(config, stack)
    return _step_result(_time(step, steps), config.batch_size, info["flops"])


def module_names(params: Any) -> set[str]:
  """Names of the network's modules: the non-leaf keys of its parameter tree."""
  names = set()
  for path, _ in jax.tree_util.tree_leaves_with_path(params):
    names.update(str(getattr(k, "key", k)) for k in path[:-1])
  return names


def _trace_events(logdir: str) -> list[dict]:
  (path,) = glob.glob(f"{logdir}/**/*.trace.json.gz", recursive=True)
  with gzip.open(path) as f:
    return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def op_module(op_name: str, modules: set[str]) -> str:
  """Where an HLO op belongs, from its op_name metadata: "fwd <module>" or "bwd <module>"."""
  body = op_name.split("/", 1)[1] if op_name.startswith("jit(") else op_name
  direction = "bwd" if "transpose(" in body else "fwd"
  parts = [p for p in re.sub(r"[\w\-]+\(|\)", "", body).split("/") if p]
  inside = [p for p in parts[:-1] if p in modules]
  if not inside:
    return f"{direction} outside the network"
  module = re.sub(r"(_\d+)+$", "", inside[-1])  # encoders_0_0 -> encoders
  return f"{direction} {module}"


def profile_by_module(
    hlo_text: str, events: Iterable[dict], modules: set[str], steps: int
) -> list[dict]:
  """[{where, ms_per_step, share, ops}] over the traced HLO ops, largest first."""
  where = {
      m.group(1): op_module(m.group(2), modules)
      for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"', hlo_text, re.M)
  }
  hlo_names = set(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = ", hlo_text, re.M))
  total = collections.Counter()
  count = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if name in where:
      key = where[name]
    elif name in hlo_names:
      key = "unattributed (compiler copies, layout)"
    else:
      continue  # runtime bookkeeping (executor, Python frames)
    total[key] += float(e.get("dur", 0.0))
    count[key] += 1
  summed = sum(total.values()) or 1.0
  return [
      {
          "where": key,
          "ms_per_step": us / 1e3 / steps,
          "share": us / summed,
          "ops": count[key] // steps,
      }
      for key, us in total.most_common()
  ]


def prepare_torch_step(config) -> tuple[Callable[[], None], int] | None:
  """(step, threads): the same NAFNet + L1 + AdamW step in PyTorch (None without torch)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from tests.torch_reference import nafnet as torch_nafnet  # pylint: disable=g-import-not-at-top
  from jaxmilab.models import nafnet  # pylint: disable=g-import-not-at-top

  arch = nafnet.resolve_config(config.model)
  net = torch_nafnet.build(
      arch["width"], list(arch["enc_blocks"]), arch["middle_blocks"], list(arch["dec_blocks"])
  )
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
  p = config.data.patch_size
  lq = torch.rand(config.batch_size, 3, p, p)
  gt = torch.rand(config.batch_size, 3, p, p)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = (net(lq)[0] - gt).abs().mean()
    loss.backward()
    opt.step()

  return step, torch.get_num_threads()


# Per-op rows: (label, kind, channels in, channels out) at [batch, patch, patch, C].
# NAFNet-small level 0 (width 16): LN on 16, conv1 16 -> 32, depthwise on 32, conv3 16 -> 16.
# Restormer (dim 16 here; official 48) level 0: BiasFree LN, qkv 1x1 16 -> 48, depthwise on 48,
# FFN depthwise on 2 * 42 (hidden 42 = int(16 * 2.66)).
OPS = {
    "NAFNet": [
        ("LayerNorm2d (C=16)", "ln", 16, 16),
        ("1x1 conv 16->32", "pw", 16, 32),
        ("depthwise 3x3 (C=32)", "dw", 32, 32),
        ("1x1 conv 16->16", "pw", 16, 16),
    ],
    "Restormer": [
        ("ChannelLayerNorm BiasFree (C=16)", "ln_bf", 16, 16),
        ("1x1 conv 16->48 (qkv)", "pw", 16, 48),
        ("depthwise 3x3 (C=48, qkv)", "dw", 48, 48),
        ("depthwise 3x3 (C=84, FFN)", "dw", 84, 84),
    ],
}


def _jax_op(kind: str, cin: int, cout: int):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class Op(nn.Module):

    @nn.compact
    def __call__(self, x):
      if kind == "ln":
        return layers.LayerNorm2d(name="ln")(x)
      if kind == "ln_bf":
        return layers.ChannelLayerNorm(with_bias=False, eps=1e-5, name="ln")(x)
      k, groups = (3, cin) if kind == "dw" else (1, 1)
      return layers.conv2d(x, cout, k, name="conv", groups=groups)

  return Op()


def time_jax_op(kind: str, cin: int, cout: int, shape, steps: int, platform: str) -> float:
  """Seconds per fwd+bwd (grads w.r.t. input and params) of one op, traced for `platform`."""
  op = _jax_op(kind, cin, cout)
  x = jax.random.normal(jax.random.key(0), tuple(shape) + (cin,))
  v = op.init(jax.random.key(1), x)
  ct = jax.random.normal(jax.random.key(2), tuple(shape) + (cout,))
  with platform_lib.for_platform(platform):
    f = (
        jax.jit(jax.grad(lambda v, x, ct: jnp.sum(op.apply(v, x) * ct), (0, 1)))
        .trace(v, x, ct)
        .lower()
        .compile()
    )
  return _time(lambda: jax.block_until_ready(f(v, x, ct)), steps)


def time_torch_op(kind: str, cin: int, cout: int, shape, steps: int) -> float | None:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from tests.torch_reference import nafnet as torch_nafnet  # pylint: disable=g-import-not-at-top

  if kind == "ln":
    op = torch_nafnet.layer_norm_2d(cin)
  elif kind == "ln_bf":  # Restormer BiasFree_LayerNorm over the channels of NCHW
    scale = torch.nn.Parameter(torch.ones(cin))
    op = torch.nn.Module()
    op.register_parameter("weight", scale)
    op.forward = (
        lambda t: t
        / torch.sqrt(t.var(1, keepdim=True, unbiased=False) + 1e-5)
        * scale[:, None, None]
    )
  elif kind == "dw":
    op = torch.nn.Conv2d(cin, cout, 3, padding=1, groups=cin)
  else:
    op = torch.nn.Conv2d(cin, cout, 1)
  b, h, w = shape
  x = torch.randn(b, cin, h, w, requires_grad=True)
  ct = torch.randn(b, cout, h, w)

  def step():
    x.grad = None
    op.zero_grad(set_to_none=True)
    (op(x) * ct).sum().backward()

  return _time(step, steps)


def per_op_table(batch: int, patch: int, steps: int) -> dict[str, list[dict]]:
  shape = (batch, patch, patch)
  out = {}
  for net, rows in OPS.items():
    out[net] = []
    for label, kind, cin, cout in rows:
      out[net].append(
          {
              "op": label,
              "shape": f"[{batch}, {patch}, {patch}, {cin}]",
              "jax_before_s": time_jax_op(kind, cin, cout, shape, steps, "generic"),
              "jax_after_s": time_jax_op(kind, cin, cout, shape, steps, "cpu"),
              "torch_s": time_torch_op(kind, cin, cout, shape, steps),
          }
      )
  return out


def main(argv):
  del argv
  console.setup()  # no libtpu start-up lines on a CPU host with the [tpu] extra
  overrides = {"mesh.num_devices": 1}
  if FLAGS.batch_size:
    overrides["batch_size"] = FLAGS.batch_size
  config = config_lib.load(FLAGS.config, overrides)
  l1 = config_lib.load(FLAGS.config, overrides)
  l1.unlock()
  l1.method = {"name": "restoration", "init_from": ""}
  l1.lock()
  peak = matmul_peak()
  compare = FLAGS.compare_xla_convs and jax.default_backend() == "cpu"
  with contextlib.ExitStack() as stack:
    step_fns, infos = {}, {}
    step_fns["jax_method"], infos["jax_method"] = prepare_jax_step(config, stack)
    step_fns["jax_l1"], infos["jax_l1"] = prepare_jax_step(l1, stack)
    if compare:
      step_fns["jax_l1_xla_convs"], infos["jax_l1_xla_convs"] = prepare_jax_step(
          l1, stack, platform="generic"
      )
    torch_step = prepare_torch_step(l1)
    if torch_step:
      step_fns["torch_l1"], threads = torch_step
    times = time_interleaved(step_fns, FLAGS.steps, FLAGS.rounds)
    profile = None
    if FLAGS.profile_steps > 0:
      profile = profile_step(step_fns["jax_l1"], infos["jax_l1"], FLAGS.profile_steps)
  results = {
      "device": jax.devices()[0].device_kind,
      "config": FLAGS.config,
      "batch_size": config.batch_size,
      "patch": config.data.get("patch_size"),
      "matmul_peak_flops_per_s": peak,
      "rounds": FLAGS.rounds,
      "step_seconds": times,
  }
  for name, t in times.items():
    flops = infos[name]["flops"] if name in infos else None
    results[name] = _step_result(float(np.median(sum(t, []))), config.batch_size, flops)
  if profile is not None:
    results["jax_l1"]["profile"] = profile
  if torch_step:
    results["torch_l1"]["threads"] = threads
    results["ratio_rounds"] = round_ratios(times, "jax_l1", "torch_l1")
    if compare:
      results["ratio_rounds_xla_convs"] = round_ratios(times, "jax_l1_xla_convs", "torch_l1")
  rows = [("JAX " + config.method.name, results["jax_method"]), ("JAX L1", results["jax_l1"])]
  if compare:
    rows.append(("JAX L1, XLA convs (before #33)", results["jax_l1_xla_convs"]))
    results["per_op"] = per_op_table(config.batch_size, results["patch"], max(FLAGS.steps // 2, 5))
  print(
      f"\ndevice: {results['device']}   config: {FLAGS.config}   batch {config.batch_size} x "
      f"{results['patch']}px   matmul peak: {peak / 1e9:.1f} GFLOP/s"
  )
  print("| step | images/s | GFLOP/step | achieved GFLOP/s | % of matmul peak |")
  print("|---|---|---|---|---|")
  for name, r in rows:
    print(
        f"| {name} | {r['images_per_s']:.2f} | {r['flops'] / 1e9:.2f} | "
        f"{r['flops_per_s'] / 1e9:.1f} | "
        f"{100 * r['flops_per_s'] / peak:.1f}% |"
    )
  if torch_step:
    t = results["torch_l1"]
    print(f"| PyTorch L1 ({t['threads']} threads) | {t['images_per_s']:.2f} | | | |")
    print(_ratio_line("JAX / PyTorch images/s (L1 step)", results["ratio_rounds"]))
    if compare:
      print(
          _ratio_line(
              "JAX with XLA convs (before #33) / PyTorch images/s (L1 step)",
              results["ratio_rounds_xla_convs"],
          )
      )
  if compare:
    ms = lambda v: "" if v is None else f"{1e3 * v:.1f}"
    for net, rows_ in results["per_op"].items():
      print(
          f"\n{net} ops, fwd+bwd ms (median of {max(FLAGS.steps // 2, 5)}); before = XLA's conv "
          f"(TPU/GPU form), after = layers' CPU form:"
      )
      print("| op | input | JAX before | JAX after | PyTorch | after / PyTorch |")
      print("|---|---|---|---|---|---|")
      for r in rows_:
        ratio = f"{r['jax_after_s'] / r['torch_s']:.2f}" if r["torch_s"] else ""
        print(
            f"| {r['op']} | {r['shape']} | {ms(r['jax_before_s'])} | {ms(r['jax_after_s'])} | "
            f"{ms(r['torch_s'])} | {ratio} |"
        )
  if results["jax_l1"].get("profile"):
    rows_ = results["jax_l1"]["profile"]
    print(
        f"\nWhere the JAX L1 step's time goes ({FLAGS.profile_steps} profiled steps; share of the "
        f"summed op time, {sum(r['ms_per_step'] for r in rows_):.1f} ms per step; wall "
        f"{1e3 * results['jax_l1']['seconds']:.1f} ms):"
    )
    print("| where | ms per step | share | ops per step |")
    print("|---|---|---|---|")
    for r in rows_[:24]:
      print(f"| {r['where']} | {r['ms_per_step']:.2f} | {100 * r['share']:.1f}% | {r['ops']} |")
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)


def _ratio_line(label: str, ratios: list[float]) -> str:
  return (
      f"{label}: {np.median(ratios):.2f}x (median of {len(ratios)} interleaved rounds; "
      f"range {min(ratios):.2f}-{max(ratios):.2f})"
  )


def run() -> None:
  """Entry point (python -m jaxmilab.benchmarks.train_step)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
