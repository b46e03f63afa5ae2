#!/usr/bin/env python3
"""Fake SLURM (sbatch, srun, scontrol, scancel) for tests/test_launch.py: a cluster on this machine.

State in $FAKE_SLURM_DIR: calls.jsonl (every call), jobs/<id>/{job.json, slurm_script, tasks}.

sbatch [options] SCRIPT   reads `#SBATCH` lines and command-line options (the latter win),
    copies the script into the job's spool folder (as slurmd does: the script does not run
    from where it was submitted) and starts it in the background with cwd = the submit folder,
    the submitter's environment and SLURM_JOB_ID, SLURM_SUBMIT_DIR, SLURM_JOB_NAME,
    SLURM_NNODES / SLURM_JOB_NUM_NODES, SLURM_NTASKS_PER_NODE, SLURM_NTASKS,
    SLURM_JOB_NODELIST=localhost and SLURM_RESTART_COUNT; output goes to --output (%x, %j).
    A job that `scontrol requeue`d itself runs again with SLURM_RESTART_COUNT + 1. The job id
    is chosen so that the coordinator port JAX derives from it is free.
srun [options] CMD...     inside a job: SLURM_NTASKS tasks of CMD with SLURM_PROCID,
    SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_NODELIST, SLURM_STEP_NUM_NODES,
    SLURM_STEP_NUM_TASKS; SIGTERM to srun is forwarded to the tasks; --kill-on-bad-exit=1 kills
    the others when one fails. Exit code: the largest of the tasks'.
scontrol requeue ID       marks the job to run again when its script ends.
scancel --signal=SIG ID   sends SIG to the job's tasks: what SLURM does `--signal=TERM@300`
    seconds before the time limit (the test uses it to say "that time has come").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

STATE = os.environ.get("FAKE_SLURM_DIR", "")


def _job_dir(job_id):
  return os.path.join(STATE, "jobs", str(job_id))


def _load(job_id):
  with open(os.path.join(_job_dir(job_id), "job.json"), encoding="utf-8") as f:
    return json.load(f)


def _save(job_id, job):
  path = os.path.join(_job_dir(job_id), "job.json")
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(job, f)
  os.replace(path + ".tmp", path)


def _options(args):
  """['--nodes=2', '--requeue', ...] -> {'nodes': '2', 'requeue': True}; stops at the script."""
  opts, rest = {}, list(args)
  while rest and rest[0].startswith("-"):
    key, sep, value = rest.pop(0).lstrip("-").partition("=")
    opts[key] = value if sep else True
  return opts, rest


def _port_free(port):
  with socket.socket() as s:
    try:
      s.bind(("127.0.0.1", port))
      return True
    except OSError:
      return False


def sbatch(args):
  cli, rest = _options(args)
  if not rest:
    sys.exit("sbatch: error: no batch script")
  script = rest[0]
  with open(script, encoding="utf-8") as f:
    text = f.read()
  opts = {}
  for line in text.splitlines():
    if line.startswith("#SBATCH"):
      o, _ = _options(line.split()[1:])
      opts.update(o)
  opts.update(cli)
  os.makedirs(os.path.join(STATE, "jobs"), exist_ok=True)
  job_id = 1000 + len(os.listdir(os.path.join(STATE, "jobs")))
  while not _port_free(job_id % 2**12 + (65535 - 2**12 + 1)):  # JAX's SLURM coordinator port
    job_id += 1
  os.makedirs(_job_dir(job_id))
  spool = os.path.join(_job_dir(job_id), "slurm_script")
  shutil.copy(script, spool)
  nodes = int(opts.get("nodes", 1))
  per_node = int(opts.get("ntasks-per-node", 1))
  name = opts.get("job-name", os.path.basename(script))
  output = opts.get("output", "slurm-%j.out").replace("%x", name).replace("%j", str(job_id))
  job = {
      "id": job_id,
      "state": "PENDING",
      "restarts": 0,
      "requeue": False,
      "opts": opts,
      "submit_dir": os.getcwd(),
      "output": os.path.join(os.getcwd(), output),
      "exit_codes": [],
  }
  env = dict(os.environ)
  env.update(
      SLURM_JOB_ID=str(job_id),
      SLURM_JOBID=str(job_id),
      SLURM_SUBMIT_DIR=os.getcwd(),
      SLURM_JOB_NAME=name,
      SLURM_NNODES=str(nodes),
      SLURM_JOB_NUM_NODES=str(nodes),
      SLURM_NTASKS_PER_NODE=str(per_node),
      SLURM_NTASKS=str(nodes * per_node),
      SLURM_JOB_NODELIST="localhost",
  )
  job["env"] = env
  _save(job_id, job)
  subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "_run_job", str(job_id)],
      start_new_session=True,
      stdin=subprocess.DEVNULL,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
      env=os.environ,
  )
  print(f"Submitted batch job {job_id}")


def _run_job(job_id):
  """The batch script, again after each `scontrol requeue` (slurmctld + slurmd in one loop)."""
  while True:
    job = _load(job_id)
    job.update(state="RUNNING", requeue=False)
    _save(job_id, job)
    env = dict(job["env"], SLURM_RESTART_COUNT=str(job["restarts"]))
    with open(job["output"], "ab") as out:
      code = subprocess.call(
          ["bash", os.path.join(_job_dir(job_id), "slurm_script")],
          cwd=job["submit_dir"],
          env=env,
          stdin=subprocess.DEVNULL,
          stdout=out,
          stderr=subprocess.STDOUT,
      )
    job = _load(job_id)
    job["exit_codes"].append(code)
    if job["requeue"]:
      job.update(state="PENDING", restarts=job["restarts"] + 1)
      _save(job_id, job)
      continue
    job["state"] = "COMPLETED" if code == 0 else "FAILED"
    _save(job_id, job)
    return


def srun(args):
  opts, cmd = _options(args)
  job_id = os.environ.get("SLURM_JOB_ID")
  if not job_id:
    sys.exit("srun: error: not inside a job (the fake runs steps of sbatch jobs only)")
  ntasks = int(opts.get("ntasks", os.environ["SLURM_NTASKS"]))
  nodes = int(os.environ["SLURM_NNODES"])
  per_node = max(1, ntasks // nodes)
  procs = []
  for rank in range(ntasks):
    env = dict(
        os.environ,
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank % per_node),
        SLURM_NODEID=str(rank // per_node),
        SLURM_STEP_NODELIST="localhost",
        SLURM_STEP_NUM_NODES=str(nodes),
        SLURM_STEP_NUM_TASKS=str(ntasks),
        SLURM_STEPID="0",
    )
    procs.append(subprocess.Popen(cmd, env=env))
  with open(os.path.join(_job_dir(job_id), "tasks"), "w", encoding="utf-8") as f:
    f.write(" ".join(str(p.pid) for p in procs))

  def forward(signum, frame):
    del frame
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  signal.signal(signal.SIGTERM, forward)
  codes = {}
  while len(codes) < len(procs):
    for i, p in enumerate(procs):
      if i not in codes and p.poll() is not None:
        codes[i] = p.returncode
        if p.returncode != 0 and opts.get("kill-on-bad-exit") in ("1", True):
          for q in procs:
            if q.poll() is None:
              q.kill()
    time.sleep(0.1)
  os.remove(os.path.join(_job_dir(job_id), "tasks"))
  sys.exit(max(abs(c) for c in codes.values()))


def scontrol(args):
  if args[:1] != ["requeue"]:
    sys.exit(f"scontrol: the fake implements only `requeue`, not {args}")
  job = _load(args[1])
  job["requeue"] = True
  _save(args[1], job)


def scancel(args):
  opts, rest = _options(args)
  sig = getattr(signal, "SIG" + str(opts.get("signal", "KILL")).upper().removeprefix("SIG"))
  tasks = os.path.join(_job_dir(rest[0]), "tasks")
  if not os.path.exists(tasks):
    sys.exit(f"scancel: job {rest[0]} has no running step")
  with open(tasks, encoding="utf-8") as f:
    for pid in f.read().split():
      try:
        os.kill(int(pid), sig)
      except ProcessLookupError:
        pass


def main():
  if not STATE:
    sys.exit("fake slurm: set FAKE_SLURM_DIR")
  os.makedirs(STATE, exist_ok=True)
  command, args = sys.argv[1], sys.argv[2:]
  with open(os.path.join(STATE, "calls.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({"time": time.time(), "argv": [command, *args], "cwd": os.getcwd()}) + "\n")
  {
      "sbatch": sbatch,
      "srun": srun,
      "scontrol": scontrol,
      "scancel": scancel,
      "_run_job": lambda a: _run_job(int(a[0])),
  }[command](args)


if __name__ == "__main__":
  main()
