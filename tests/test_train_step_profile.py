"""benchmarks.train_step's profile: HLO ops attributed to forward / backward and network
modules."""

from __future__ import annotations

import pytest

from jaxmilab.benchmarks import train_step

MODULES = {"backbone", "encoders_0_0", "encoders_1_0", "conv2", "norm1", "downs_0"}

HLO = """HloModule jit__train_step

%fused_computation.1 (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %inner.3 = f32[8]{0} multiply(%p, %p), metadata={op_name="jit(_train_step)/jvp(NAFNet)/encoders_0_0/norm1/mul"}
}

ENTRY %main.9 (a: f32[8]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %ynn_fusion.7 = f32[8]{0} fusion(%a), kind=kLoop, calls=%fused_computation.1, metadata={op_name="jit(_train_step)/jvp(NAFNet)/encoders_0_0/norm1/mul" stack_frame_id=3}
  %concatenate_pad_fusion = f32[8]{0} fusion(%a), kind=kLoop, metadata={op_name="jit(_train_step)/transpose(jvp(NAFNet))/encoders_1_0/encoders_1_0._conv/conv2/jit(_pad)/pad"}
  %multiply.4 = f32[8]{0} multiply(%a, %a), metadata={op_name="jit(_train_step)/transpose(jvp(NAFNet))/encoders_1_0/mul"}
  %add.5 = f32[8]{0} add(%a, %a), metadata={op_name="jit(_train_step)/adam/add"}
  ROOT %copy.6 = f32[8]{0} copy(%a)
}
"""  # noqa: E501 (verbatim XLA HLO text)


def test_op_module_names_direction_and_innermost_module():
  name = (
      "jit(_train_step)/transpose(jvp(NAFNet))/encoders_1_0/encoders_1_0._conv/conv2/jit(_pad)/pad"
  )
  assert train_step.op_module(name, MODULES) == "bwd conv2"  # the jit-wrapped _pad is no module
  assert train_step.op_module("jit(_train_step)/jvp(NAFNet)/downs_0/conv", MODULES) == "fwd downs"
  assert train_step.op_module("jit(_train_step)/jvp(NAFNet)/encoders_0_0/mul", MODULES) == (
      "fwd encoders"
  )
  assert train_step.op_module("jit(_train_step)/adam/add", MODULES) == "fwd outside the network"


def test_profile_sums_each_traced_op_into_its_module_per_step():
  events = [
      {"name": "ynn_fusion.7", "dur": 300.0},
      {"name": "ynn_fusion.7", "dur": 500.0},
      {"name": "concatenate_pad_fusion", "dur": 1000.0},
      {"name": "concatenate_pad_fusion", "dur": 1000.0},
      {"name": "multiply.4", "dur": 200.0},
      {"name": "add.5", "dur": 400.0},
      {"name": "copy.6", "dur": 600.0},
      {"name": "ThunkExecutor::Execute", "dur": 99999.0},  # runtime bookkeeping: not an op
      {"name": "$train_step.py:10 step", "dur": 99999.0},
  ]
  rows = train_step.profile_by_module(HLO, events, MODULES, steps=2)
  got = {r["where"]: (r["ms_per_step"], r["ops"]) for r in rows}
  assert got == {
      "bwd conv2": (1.0, 1),
      "fwd norm1": (0.4, 1),
      "unattributed (compiler copies, layout)": (0.3, 0),
      "fwd outside the network": (0.2, 0),
      "bwd encoders": (0.1, 0),
  }
  assert [r["where"] for r in rows][0] == "bwd conv2"
  assert sum(r["share"] for r in rows) == pytest.approx(1.0)
  assert rows[0]["share"] == pytest.approx(2000 / 4000)


def test_steps_are_timed_in_alternating_rounds_after_one_warm_up_each():
  calls = []
  fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  times = train_step.time_interleaved(fns, steps=6, rounds=3)
  assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-ups, then rounds of 6 // 3 calls
  assert {k: [len(r) for r in v] for k, v in times.items()} == {"a": [2, 2, 2], "b": [2, 2, 2]}


def test_round_ratio_is_speed_of_num_relative_to_den_per_round():
  # Round 2 is a slow phase of the machine for both: the paired ratio does not move.
  times = {"jax": [[2.0, 2.0], [4.0, 4.0]], "torch": [[1.0, 1.0], [2.0, 2.0]]}
  assert train_step.round_ratios(times, "jax", "torch") == [0.5, 0.5]
