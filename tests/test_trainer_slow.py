"""Process-level checks: kill -9 and SIGTERM resume, two processes vs one (gloo) without host
syncs on ordinary steps, and opt-in tensor parallelism on SwinIR vs one device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import portpicker
import pytest

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import metrics as metrics_lib
from tests.subprocess_env import env  # also read as test_trainer_slow.env by test_gcs_emulator.py

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--config=configs/dcpt.py:smoke",
    "--config.total_steps=120",
    "--config.log_every_steps=4",
    "--config.checkpoint_every_steps=8",
    "--config.eval_every_steps=120",
]


def main_cmd(workdir, *extra):
  return [sys.executable, "-m", "jaxmilab.main", f"--workdir={workdir}", *FLAGS, *extra]


def run_to_end(workdir, devices=1, *extra):
  subprocess.run(
      main_cmd(workdir, *extra),
      cwd=REPO,
      env=env(devices),
      check=True,
      capture_output=True,
      timeout=900,
  )


def checkpoints(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def start_and_wait_for_checkpoint(workdir):
  proc = subprocess.Popen(
      main_cmd(workdir), cwd=REPO, env=env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  deadline = time.time() + 600
  while not checkpoints(workdir):
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  return proc


def train_losses(workdir):
  return [
      (r["step"], r["loss"])
      for r in metrics_lib.read_jsonl(workdir)
      if r["split"] == "train" and "loss" in r
  ]


def assert_same_run(dir_a, dir_b):
  a, b = ckpt_lib.load_variables(dir_a), ckpt_lib.load_variables(dir_b)
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_array_equal(x, y)
  assert train_losses(dir_a) == train_losses(dir_b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reference"))
  run_to_end(workdir)
  return workdir


def test_kill_9_then_resume_equals_uninterrupted(reference, tmp_path):
  workdir = str(tmp_path)
  proc = start_and_wait_for_checkpoint(workdir)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert checkpoints(workdir) and checkpoints(workdir)[-1] < 120, "killed too late to test resume"
  run_to_end(workdir)
  assert checkpoints(workdir)[-1] == 120
  assert_same_run(reference, workdir)


def test_sigterm_saves_and_exits_zero(reference, tmp_path):
  workdir = str(tmp_path)
  proc = start_and_wait_for_checkpoint(workdir)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-3000:]
  stopped_at = checkpoints(workdir)[-1]
  assert 0 < stopped_at < 120
  run_to_end(workdir)
  assert_same_run(reference, workdir)


def test_two_processes_match_one(tmp_path):
  """2 processes x 2 fake devices (gloo) give the losses of 1 process x 4 devices; their
  ordinary steps (3 of every 4) run under a device-to-host transfer guard that raises on any
  device_get / allgather, so the loop does not sync the hosts there."""
  single = str(tmp_path / "single")
  extra = [
      "--config.total_steps=8",
      "--config.checkpoint_every_steps=8",
      "--config.eval_every_steps=8",
  ]
  run_to_end(single, 4, *extra)
  multi = str(tmp_path / "multi")
  port = portpicker.pick_unused_port()
  probes = [str(tmp_path / f"probe_{i}.json") for i in range(2)]
  procs = []
  for i in range(2):
    # jaxmilab.main under tests/test_trainer.py's HostReadProbe (see there).
    runner = [
        sys.executable,
        "-c",
        "import sys; sys.path[:0] = ['tests', '.']; import test_trainer; "
        f"sys.argv[0] = 'jaxmilab.main'; test_trainer.run_main_with_probe({probes[i]!r})",
    ]
    cmd = (
        runner
        + main_cmd(
            multi,
            *extra,
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )[3:]
    )
    procs.append(
        subprocess.Popen(
            cmd, cwd=REPO, env=env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    )
  for p in procs:
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-3000:]
  for path in probes:
    with open(path, encoding="utf-8") as f:
      probe = json.load(f)
    # Steps 1-3 and 5-7 of 8 are ordinary (log every 4): no device_get, no allgather there.
    assert probe == {"ordinary_steps": 6, "reads": []}, probe
  a, b = train_losses(single), train_losses(multi)
  assert [s for s, _ in a] == [s for s, _ in b] == [4, 8]
  np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=2e-4)
  evals = metrics_lib.read_split(multi, "eval")
  single_evals = metrics_lib.read_split(single, "eval")
  np.testing.assert_allclose(evals[-1]["psnr"], single_evals[-1]["psnr"], rtol=1e-4)


def test_tensor_parallel_swinir_matches_one_device(tmp_path):
  """Megatron-style rules (attention qkv and MLP fc1 column-split, fc2 row-split over "model")
  on SwinIR: the same SGD losses on data 4 x model 2 as on one device."""
  flags = [
      "--config=configs/restoration.py:smoke",
      "--config.model.name=swinir",
      "--config.model.preset=swinir_tiny",
      "--config.total_steps=3",
      "--config.log_every_steps=1",
      "--config.eval_every_steps=3",
      "--config.checkpoint_every_steps=3",
      "--config.optimizer.name=sgd",
      "--config.optimizer.learning_rate=0.05",
  ]
  rules = (
      "--config.mesh.tensor_parallel=((r'qkv/kernel$',-1),(r'qkv/bias$',-1),"
      "(r'fc1/kernel$',-1),(r'fc1/bias$',-1),(r'fc2/kernel$',0))"
  )
  one, tp = str(tmp_path / "one"), str(tmp_path / "tp")
  for workdir, devices, extra in (
      (one, 1, []),
      (tp, 8, ["--config.mesh.data=4", "--config.mesh.model=2", rules]),
  ):
    subprocess.run(
        [sys.executable, "-m", "jaxmilab.main", f"--workdir={workdir}", *flags, *extra],
        cwd=REPO,
        env=env(devices),
        check=True,
        capture_output=True,
        timeout=900,
    )
  a, b = train_losses(one), train_losses(tp)
  assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3]
  np.testing.assert_allclose([l for _, l in a], [l for _, l in b], rtol=2e-4)
