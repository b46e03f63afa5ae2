"""launch/tpu_pod.sh and launch/gpu_multinode.sh on a simulated pod and a simulated SLURM cluster.

tests/fakes/ holds a fake `gcloud` (queued resources, TPU VM ssh/scp running each worker as a
local process session, preemption), a fake `uv` for the workers (which have no network) and
fake `sbatch` / `srun` / `scontrol` / `scancel`. Each test trains configs/maskdcpt.py:smoke on
2 processes x 1 CPU device through the launch script, interrupts it the way the cluster would
(a Spot preemption that kills every worker; SLURM's SIGTERM before the time limit), and checks
that the launch script brings it back without a person and that the finished run is bit-for-bit
the uninterrupted one (parameters of the final checkpoint and every logged loss).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import time

import jax
import numpy as np
import portpicker
import pytest

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import metrics as metrics_lib

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKES = os.path.join(REPO, "tests", "fakes")
TOTAL = 12
RUN_FLAGS = [
    f"--config.total_steps={TOTAL}",
    "--config.checkpoint_every_steps=3",
    "--config.eval_every_steps=1000",
    "--config.log_every_steps=1",
]
# The Ubuntu 22.04 TPU images' python3 is 3.10: a real one if this machine has it (pyenv),
# otherwise a stand-in that fails, so that nothing on the workers may rely on python3.
PY310 = next(
    (
        d
        for d in ("/root/.pyenv/versions/3.10.13/bin", "/usr/bin")
        if os.path.exists(f"{d}/python3.10")
    ),
    None,
)


def _old_python_dir(tmp_path):
  if PY310:
    return PY310
  folder = tmp_path / "image_python"
  folder.mkdir()
  (folder / "python3").write_text(
      "#!/bin/sh\necho 'Python 3.10 (simulated TPU image)' >&2; exit 1\n"
  )
  (folder / "python3").chmod(0o755)
  return str(folder)


def _base_env(cache):
  env = dict(os.environ)
  env.update(
      JAX_PLATFORMS="cpu",
      JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
      XLA_FLAGS="--xla_force_host_platform_device_count=1",
      TF_CPP_MIN_LOG_LEVEL="3",
      JAX_COMPILATION_CACHE_DIR=cache,
      PATH=f"{FAKES}:{os.path.dirname(sys.executable)}:{env.get('PATH', '/usr/bin:/bin')}",
  )
  return env


def checkpoints(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def train_losses(workdir):
  return [
      (r["step"], r["loss"])
      for r in metrics_lib.read_jsonl(workdir)
      if r["split"] == "train" and "loss" in r
  ]


def assert_same_run(reference, workdir):
  assert checkpoints(workdir)[-1] == TOTAL
  a, b = ckpt_lib.load_variables(reference), ckpt_lib.load_variables(workdir)
  leaves_a, leaves_b = jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  assert train_losses(reference) == train_losses(workdir)
  assert [s for s, _ in train_losses(workdir)] == list(range(1, TOTAL + 1))


def wait_for(predicate, what, timeout, proc=None):
  deadline = time.time() + timeout
  while not predicate():
    if proc is not None and proc.poll() is not None:
      raise AssertionError(f"{what}: the launcher exited with {proc.returncode} first")
    assert time.time() < deadline, f"timed out waiting for {what}"
    time.sleep(0.05)


@pytest.fixture(scope="module")
def cache():
  """The persistent compilation cache of tests/conftest.py, shared with the worker processes."""
  return jax.config.jax_compilation_cache_dir


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
  """The uninterrupted run: 2 processes x 1 CPU device, jax.distributed on 127.0.0.1."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  port = portpicker.pick_unused_port()
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              "-m",
              "jaxmilab.main",
              "--config=configs/maskdcpt.py:smoke",
              f"--workdir={workdir}",
              *RUN_FLAGS,
              f"--coordinator_address=127.0.0.1:{port}",
              "--num_processes=2",
              f"--process_id={i}",
          ],
          cwd=REPO,
          env=_base_env(cache),
          stdout=subprocess.DEVNULL,
          stderr=subprocess.PIPE,
      )
      for i in range(2)
  ]
  for p in procs:
    assert p.wait(timeout=1200) == 0, p.stderr.read().decode()[-3000:]
  assert checkpoints(workdir)[-1] == TOTAL
  return workdir


def _calls(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["argv"] for line in f]


def test_tpu_pod_preempted_recreated_and_resumed(tmp_path, reference, cache):
  state, workdir = tmp_path / "gcloud", str(tmp_path / "run")
  env = _base_env(cache)
  env.update(
      FAKE_GCLOUD_DIR=str(state),
      FAKE_GCS_DIR=str(tmp_path / "gcs"),
      FAKE_TPU_WORKERS="2",
      FAKE_TPU_DEVICES="1",
      FAKE_WORKER_ENV_PASS="JAX_COMPILATION_CACHE_DIR",
      FAKE_WORKER_PATH=f"{FAKES}/worker_bin:{_old_python_dir(tmp_path)}:/usr/bin:/bin",
      FAKE_UV_PYTHON=getattr(sys, "_base_executable", sys.executable),
      FAKE_UV_SITE_PACKAGES=next(p for p in sys.path if p.endswith("site-packages")),
      PROJECT="proj",
      ZONE="zone-a",
      BUCKET="bucket",
      TPU_NAME="sim",
      QR_NAME="sim-qr",
      CONFIG="configs/maskdcpt.py:smoke",
      WORKDIR=workdir,
      DATA="",
      EXTRA_FLAGS=" ".join(RUN_FLAGS),
      SUPERVISE_POLL="1",
  )
  log = open(tmp_path / "launcher.log", "wb")
  proc = subprocess.Popen(
      [os.path.join(REPO, "launch", "tpu_pod.sh"), "all"],
      cwd=tmp_path,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
  )
  try:
    wait_for(lambda: checkpoints(workdir), "the first checkpoint", 1200, proc)
    subprocess.run([f"{FAKES}/gcloud", "fake-preempt"], env=env, check=True)
    assert checkpoints(workdir)[-1] < TOTAL, "preempted after the end: raise TOTAL"
    assert proc.wait(timeout=1500) == 0, (tmp_path / "launcher.log").read_text()[-5000:]
  finally:
    if proc.poll() is None or proc.returncode != 0:
      proc.kill()
      subprocess.run(
          [f"{FAKES}/gcloud", "fake-preempt"], env=env, check=False, capture_output=True
      )  # no worker outlives a failed test
  launcher = (tmp_path / "launcher.log").read_text()
  assert "(preempted): re-creating the slice and resuming" in launcher
  assert "training finished" in launcher

  calls = _calls(state / "calls.jsonl")
  verbs = [" ".join(a for a in c if not a.startswith("--"))[:60] for c in calls]
  creates = [c for c in calls if c[:4] == ["compute", "tpus", "queued-resources", "create"]]
  assert len(creates) == 2  # the first slice and its re-creation
  for c in creates:
    assert {
        "--node-id=sim",
        "--accelerator-type=v5litepod-64",
        "--runtime-version=v2-alpha-tpuv5-lite",
        "--spot",
        "--project=proj",
        "--zone=zone-a",
    } <= set(c)
  deletes = [i for i, v in enumerate(verbs) if v.startswith("compute tpus queued-resources delete")]
  assert len(deletes) == 2 and deletes[-1] == len(calls) - 1  # the preempted one; at the end
  assert verbs.index("fake-preempt") < deletes[0]
  runs = [c for c in calls if any("jaxmilab.main --distributed" in a for a in c)]
  assert len(runs) == 2 and all("--worker=all" in c for c in runs)
  assert all(f"--workdir={workdir}" in " ".join(c) for c in runs)

  # What was shipped: exactly the git-tracked files (+ SOURCE_VERSION), so no .venv.
  with tarfile.open(state / "workers" / "1" / "home" / "jaxmilab_src.tar.gz") as tar:
    shipped = set(tar.getnames())
  tracked = (
      subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
      .stdout.decode()
      .split("\0")
  )
  assert shipped == {f for f in tracked if f and os.path.exists(os.path.join(REPO, f))} | {
      "SOURCE_VERSION"
  }
  assert not any(n.startswith((".venv", ".git/")) or "egg-info" in n for n in shipped)
  assert "constraints.txt" in shipped

  # The workers' python3 is 3.10; the launch script made a 3.11+ venv and ran from it.
  for i in range(2):
    home = state / "workers" / str(i) / "home"
    ssh_log = (state / f"ssh-worker{i}.log").read_text()
    versions = re.findall(r"jaxmilab worker: python (\d+)\.(\d+)", ssh_log)
    assert len(versions) == 2 and all((int(a), int(b)) >= (3, 11) for a, b in versions)
    run_log = (home / "jaxmilab_run.log").read_text()
    assert f"JAX process {i}/2" in run_log and "Resuming from" in run_log
  uv_calls = _calls(state / "uv_calls.jsonl")
  assert sum(c[:3] == ["venv", "--python", "3.11"] for c in uv_calls) == 4  # 2 workers x 2 slices
  assert all("-c" in c for c in uv_calls if c[:2] == ["pip", "install"])
  if PY310:
    assert subprocess.run(
        [f"{PY310}/python3.10", "--version"], capture_output=True, text=True
    ).stdout.startswith("Python 3.10")

  assert_same_run(reference, workdir)


def test_slurm_sigterm_requeued_and_resumed(tmp_path, reference, cache):
  workdir = str(tmp_path / "run")
  env = _base_env(cache)
  env.update(
      FAKE_SLURM_DIR=str(tmp_path / "slurm"),
      CONFIG="configs/maskdcpt.py:smoke",
      WORKDIR=workdir,
      DATA="",
      VENV=sys.prefix,
      EXTRA_FLAGS=" ".join(RUN_FLAGS),
  )
  env.pop("REPO_DIR", None)
  submitted = subprocess.run(
      [
          "sbatch",
          "--nodes=2",
          "--ntasks-per-node=1",
          f"--output={tmp_path}/%x-%j.out",
          "launch/gpu_multinode.sh",
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      check=True,
  )
  job_id = re.match(r"Submitted batch job (\d+)", submitted.stdout).group(1)
  job_json = tmp_path / "slurm" / "jobs" / job_id / "job.json"
  load = lambda: json.loads(job_json.read_text())  # noqa: E731
  try:
    wait_for(
        lambda: checkpoints(workdir) or load()["state"] != "RUNNING" and load()["exit_codes"],
        "the first checkpoint",
        1200,
    )
    assert checkpoints(workdir), (tmp_path / f"maskdcpt-{job_id}.out").read_text()[-5000:]
    # SLURM's --signal=TERM@300: SIGTERM to every task before the time limit.
    subprocess.run(["scancel", "--signal=TERM", job_id], env=env, check=True)
    wait_for(lambda: load()["state"] in ("COMPLETED", "FAILED"), "the job to end", 1500)
  finally:
    tasks = tmp_path / "slurm" / "jobs" / job_id / "tasks"
    if tasks.exists():
      subprocess.run(["scancel", "--signal=KILL", job_id], env=env, check=False)
  out = (tmp_path / f"maskdcpt-{job_id}.out").read_text()
  job = load()
  assert job["state"] == "COMPLETED" and job["restarts"] == 1 and job["exit_codes"] == [0, 0], out[
      -5000:
  ]
  assert "(SIGTERM): requeueing job" in out and "training finished" in out
  calls = _calls(tmp_path / "slurm" / "calls.jsonl")
  assert ["scontrol", "requeue", job_id] in calls
  # The batch script ran from the spool copy, found the repository through SLURM_SUBMIT_DIR.
  assert sum(c[0] == "srun" for c in calls) == 2
  assert_same_run(reference, workdir)


def _pod_env(tmp_path, cache, workdir, **extra):
  env = _base_env(cache)
  env.update(
      FAKE_GCLOUD_DIR=str(tmp_path / "gcloud"),
      FAKE_GCS_DIR=str(tmp_path / "gcs"),
      FAKE_TPU_WORKERS="2",
      FAKE_TPU_DEVICES="1",
      FAKE_WORKER_ENV_PASS="JAX_COMPILATION_CACHE_DIR",
      FAKE_WORKER_PATH=f"{FAKES}/worker_bin:{_old_python_dir(tmp_path)}:/usr/bin:/bin",
      FAKE_UV_PYTHON=getattr(sys, "_base_executable", sys.executable),
      FAKE_UV_SITE_PACKAGES=next(p for p in sys.path if p.endswith("site-packages")),
      PROJECT="proj",
      ZONE="zone-a",
      BUCKET="bucket",
      TPU_NAME="sim",
      QR_NAME="sim-qr",
      CONFIG="configs/maskdcpt.py:smoke",
      WORKDIR=workdir,
      DATA="",
      EXTRA_FLAGS=" ".join(RUN_FLAGS),
      SUPERVISE_POLL="1",
      # What `clean` frees, inside each simulated worker's home (expanded on the worker).
      TPU_DEVICES="$HOME/fake_vfio*",
      LIBTPU_LOCK="$HOME/libtpu_lockfile",
  )
  env.update(extra)
  return env


def test_tpu_pod_two_slices_crash_cleaned_and_resumed(tmp_path, cache):
  """NUM_SLICES=2 x 2 workers: one queued resource with two nodes, installed and started on all
  4 workers; a crash of one worker's training process (the others hang) makes the supervisor
  read every worker, kill what is left (including a stray process holding the TPU) and remove
  libtpu's lock file on every worker, and resume to the end."""
  state, workdir = tmp_path / "gcloud", str(tmp_path / "run")
  env = _pod_env(tmp_path, cache, workdir, NUM_SLICES="2", ACCELERATOR="v5litepod-8")
  homes = [state / "workers" / str(i) / "home" for i in range(4)]
  log = open(tmp_path / "launcher.log", "wb")
  proc = subprocess.Popen(
      [os.path.join(REPO, "launch", "tpu_pod.sh"), "all"],
      cwd=tmp_path,
      env=env,
      stdout=log,
      stderr=subprocess.STDOUT,
  )
  stray = None
  try:
    wait_for(lambda: checkpoints(workdir), "the first checkpoint", 1200, proc)
    assert checkpoints(workdir)[-1] < TOTAL, "crashed after the end: raise TOTAL"
    for home in homes:
      (home / "libtpu_lockfile").write_text("locked")
    (homes[3] / "fake_vfio0").write_text("")
    stray = subprocess.Popen(
        ["bash", "-c", 'exec 3<"$HOME/fake_vfio0"; exec sleep 900'],
        env=dict(os.environ, HOME=str(homes[3])),
    )
    subprocess.run([f"{FAKES}/gcloud", "fake-kill-worker", "2"], env=env, check=True)
    assert proc.wait(timeout=1500) == 0, (tmp_path / "launcher.log").read_text()[-5000:]
  finally:
    if proc.poll() is None or proc.returncode != 0:
      proc.kill()
      subprocess.run([f"{FAKES}/gcloud", "fake-preempt"], env=env, check=False, capture_output=True)
    if stray is not None and stray.poll() is None:
      stray.kill()
  launcher = (tmp_path / "launcher.log").read_text()
  # Worker 2 ends with 137 (SIGKILL); the others may abort first when the coordinator loses it.
  # (On a heavily loaded machine jax.distributed's heartbeats can also time out once by themselves:
  # one more restart, still within MAX_FAILURES.)
  assert re.search(r"training exited \d+ \([12]/3\)", launcher), launcher[-3000:]
  assert "training finished" in launcher, launcher[-3000:]
  assert stray.wait(timeout=5) == -9  # `clean` killed the process holding the "TPU"

  calls = _calls(state / "calls.jsonl")
  creates = [c for c in calls if c[:4] == ["compute", "tpus", "queued-resources", "create"]]
  assert len(creates) == 1 and {
      "--node-count=2",
      "--node-prefix=sim",
      "--accelerator-type=v5litepod-8",
  } <= set(creates[0])
  runs = [c for c in calls if any("jaxmilab.main --distributed" in a for a in c)]
  nodes = [c[4] for c in runs]  # started on both nodes, again after the crash
  assert nodes.count("sim-0") == nodes.count("sim-1") >= 2 and set(nodes) == {"sim-0", "sim-1"}
  for i, home in enumerate(homes):
    assert not (home / "libtpu_lockfile").exists()
    run_log = (home / "jaxmilab_run.log").read_text()
    assert f"JAX process {i}/4" in run_log and "Resuming from" in run_log
    # Every worker's status was read (not only worker 0's).
    assert "jaxmilab-status" in (state / f"ssh-worker{i}.log").read_text()
  assert "which holds the TPU" in (state / "ssh-worker3.log").read_text()
  assert checkpoints(workdir)[-1] == TOTAL
  assert [s for s, _ in train_losses(workdir)] == list(range(1, TOTAL + 1))


def test_tpu_pod_final_error_is_not_retried(tmp_path, cache):
  """Exit code 2 (jaxmilab.main's NaN / Inf loss stop, or a config mistake) would recur at the
  same step: the supervisor stops, keeps the slice and does not start the run again."""
  state, workdir = tmp_path / "gcloud", str(tmp_path / "run")
  env = _pod_env(tmp_path, cache, workdir, EXTRA_FLAGS="--config.total_steps=0")
  out = subprocess.run(
      [os.path.join(REPO, "launch", "tpu_pod.sh"), "all"],
      cwd=tmp_path,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  try:
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "is not retried" in out.stdout
    calls = _calls(state / "calls.jsonl")
    runs = [c for c in calls if any("jaxmilab.main --distributed" in a for a in c)]
    assert len(runs) == 1
    assert not any(c[:4] == ["compute", "tpus", "queued-resources", "delete"] for c in calls)
  finally:
    subprocess.run([f"{FAKES}/gcloud", "fake-preempt"], env=env, check=False, capture_output=True)


def test_exit_code_2_is_what_a_nan_stop_gives():
  """The supervisor's "final" exit code is jaxmilab.main's for NonFiniteLossError."""
  from jaxmilab import console, trainer  # pylint: disable=g-import-not-at-top

  assert issubclass(trainer.NonFiniteLossError, console.USER_ERRORS)
  assert console.EXIT_USER_ERROR == 2
  assert "EXIT_FINAL=2" in open(os.path.join(REPO, "launch", "tpu_pod.sh")).read()
