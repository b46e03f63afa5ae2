"""FSDP across processes: MaskDCPT smoke with parameters sharded over ("data", "fsdp").

2 processes x 2 fake CPU devices (jax.distributed over gloo on 127.0.0.1) must give the losses
of 1 process x 4 devices and of 1 process x 1 device (nothing sharded), step for step.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import portpicker
import pytest

from jaxmilab import metrics as metrics_lib
from test_trainer_slow import REPO
from tests.subprocess_env import env  # the child's environment: N fake CPU devices, gloo

pytestmark = pytest.mark.slow

FLAGS = [
    "--config=configs/maskdcpt.py:smoke",
    "--config.total_steps=4",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=4",
    "--config.eval_every_steps=4",
    "--config.mesh.shard_params_over=('data','fsdp')",
    "--config.mesh.min_shard_size=64",
]  # shard even the tiny smoke model's kernels


def cmd(workdir, *extra):
  return [sys.executable, "-m", "jaxmilab.main", f"--workdir={workdir}", *FLAGS, *extra]


def losses(workdir):
  return [
      (r["step"], r["loss"])
      for r in metrics_lib.read_jsonl(workdir)
      if r["split"] == "train" and "loss" in r
  ]


def test_fsdp_two_processes_match_one(tmp_path):
  runs = {
      "four": (4, ["--config.mesh.data=2", "--config.mesh.fsdp=2"]),
      "one": (1, ["--config.mesh.data=1", "--config.mesh.fsdp=1"]),
  }
  for name, (devices, extra) in runs.items():
    subprocess.run(
        cmd(str(tmp_path / name), *extra),
        cwd=REPO,
        env=env(devices),
        check=True,
        capture_output=True,
        timeout=900,
    )
  multi = str(tmp_path / "multi")
  port = portpicker.pick_unused_port()
  procs = [
      subprocess.Popen(
          cmd(
              multi,
              "--config.mesh.data=2",
              "--config.mesh.fsdp=2",
              f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2",
              f"--process_id={i}",
          ),
          cwd=REPO,
          env=env(2),
          stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE,
      )
      for i in range(2)
  ]
  for p in procs:
    assert p.wait(timeout=900) == 0, p.stderr.read().decode()[-3000:]
  ref = losses(str(tmp_path / "four"))
  assert [s for s, _ in ref] == [1, 2, 3, 4]
  for other in (losses(multi), losses(str(tmp_path / "one"))):
    assert [s for s, _ in other] == [s for s, _ in ref]
    np.testing.assert_allclose([l for _, l in other], [l for _, l in ref], rtol=2e-4)

  # And evaluate alike. (Parameters are not compared element-wise: Adam's first steps divide
  # tiny gradients by their own magnitude, which turns last-bit reduction-order differences into
  # ~1e-4 parameter differences that no longer say anything about sharding.)
  def last_eval(workdir):
    return metrics_lib.read_split(workdir, "eval")[-1]

  for other in (multi, str(tmp_path / "one")):
    np.testing.assert_allclose(
        last_eval(other)["psnr"], last_eval(str(tmp_path / "four"))["psnr"], rtol=1e-3
    )
