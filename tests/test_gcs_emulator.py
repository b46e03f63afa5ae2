"""gs:// workdirs against a local GCS emulator: kill -9 and resume on gs://bucket/run equals an
uninterrupted gs:// run, bit for bit.

The emulator is `gcp-storage-emulator` (in memory, on 127.0.0.1, in this process); the trainer
runs in subprocesses whose environment (`emulator_env`) points every library that touches the
workdir at it:

* etils.epath (config.json, metrics.jsonl, eval PNGs, grain's iterator state, orbax's
  directories and commit files): `EPATH_USE_TF=false` selects epath's fsspec backend, i.e.
  gcsfs, which honours `STORAGE_EMULATOR_HOST`; `FSSPEC_GCS_TOKEN=anon` (fsspec's per-protocol
  default kwargs) skips credentials; `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` keeps gcsfs on its
  HTTP JSON API client (the extended one asks the Storage Control gRPC API for the bucket
  layout, which the emulator does not serve).
* google-cloud-storage (orbax's hierarchical-namespace check when listing and deleting steps):
  `STORAGE_EMULATOR_HOST`, which also makes it use anonymous credentials.
* tensorstore (orbax's array data, OCDBT): `TENSORSTORE_GCS_HTTP_URL`, and
  `GOOGLE_AUTH_TOKEN_FOR_TESTING`, the first source of its credential chain, so it reads no
  credentials file and never probes the GCE metadata server.
* TensorFlow's GCS filesystem (tf.summary -> TensorBoard) has no endpoint setting: it is not used
  (jaxmilab.metrics.tensorboard_dir: no events for a gs:// workdir with EPATH_USE_TF=false).

Nothing may leave 127.0.0.1: Python sockets are audited in the subprocesses (a connect to, or a
name lookup of, another host fails the run), libcurl (tensorstore) is sent through a dead
loopback proxy for every other host, and the metadata-server addresses point at a closed
loopback port.

The emulator lacks two things of the GCS JSON API that tensorstore relies on, added here around
its handlers (`_emulate_generations`): the `x-goog-generation` / `x-goog-metageneration` headers
of a media download (GCS sends them; tensorstore reads the object's generation from them) and the
`ifGenerationMatch` / `ifGenerationNotMatch` preconditions (412 / 304), which OCDBT's manifest
writes and the workdir lock's create-if-absent upload (a multipart upload whose metadata names
the object) use.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from http import HTTPStatus

import jax
import portpicker
import pytest

import test_trainer_slow as local
from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import metrics as metrics_lib

BUCKET = "bucket"
TOTAL = 24
FLAGS = [
    f"--config={local.REPO}/configs/dcpt.py:smoke",
    f"--config.total_steps={TOTAL}",
    "--config.log_every_steps=4",
    "--config.checkpoint_every_steps=8",
    f"--config.eval_every_steps={TOTAL}",
]
# Scalars that measure time, not the computation: they differ between any two runs.
TIMING_KEYS = {"images_per_sec", "mfu", "steps_per_sec", "uptime", "eval_seconds"}

# Runs jaxmilab.main with an audit hook that refuses Python sockets to any host but loopback.
_GUARDED_MAIN = r"""
import runpy, socket, sys
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
def guard(event, args):
  host = None
  if event == "socket.getaddrinfo":
    host = args[0]
  elif event == "socket.connect" and isinstance(args[1], tuple):
    host = args[1][0]
  if host is not None and (host.decode() if isinstance(host, bytes) else str(host)) not in LOOPBACK:
    raise ConnectionRefusedError(f"test_gcs_emulator: {event} to {host!r} (only 127.0.0.1)")
sys.addaudithook(guard)
sys.argv[0] = "jaxmilab.main"
runpy.run_module("jaxmilab.main", run_name="__main__", alter_sys=True)
"""


def _generation(storage, bucket: str, name: str) -> int:
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top

  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return 0


def _precondition_status(request, storage, name: str, read: bool) -> HTTPStatus | None:
  """412 / 304 when the request's generation preconditions do not hold (GCS JSON API)."""
  current = _generation(storage, request.params["bucket_name"], name)
  match = request.query.get("ifGenerationMatch")
  if match and int(match[0]) != current:
    return HTTPStatus.PRECONDITION_FAILED
  not_match = request.query.get("ifGenerationNotMatch")
  if read and not_match and current and int(not_match[0]) == current:
    return HTTPStatus.NOT_MODIFIED
  return None


@contextlib.contextmanager
def _emulate_generations():
  """Generation headers on media downloads and generation preconditions, around the handlers."""
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top

  def download(request, response, storage, *args, **kwargs):
    name = request.params["object_id"]
    status = _precondition_status(request, storage, name, read=True)
    if status is not None:
      response.status = status
      return None
    result = original_download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params["bucket_name"], name)
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])
    return result

  def object_name(request) -> str:
    name = request.params.get("object_id") or (request.query.get("name") or [""])[0]
    if not name and (request.query.get("uploadType") or [""])[0] in ("multipart", "resumable"):
      data = request.data or {}  # the upload's metadata names the object (the workdir lock's)
      name = (data.get("meta") or {}).get("name") or data.get("name") or ""
    return name

  def conditional(handler, read):
    def wrapped(request, response, storage, *args, **kwargs):
      name = object_name(request)
      status = _precondition_status(request, storage, name, read) if name else None
      if status is not None:
        response.status = status
        return None
      return handler(request, response, storage, *args, **kwargs)

    return wrapped

  original_download = objects.download
  replace = {
      objects.get: conditional(objects.get, read=True),
      objects.insert: conditional(objects.insert, read=False),
      objects.delete: conditional(objects.delete, read=False),
      objects.download: download,
  }
  handlers = tuple(
      (regex, {m: replace.get(f, f) for m, f in methods.items()})
      for regex, methods in server.HANDLERS
  )
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(objects, "download", download)  # objects.get's alt=media path calls it.
    mp.setattr(server, "HANDLERS", handlers)
    yield


class Emulator:
  """gcp-storage-emulator in memory on 127.0.0.1:<free port>, with bucket `BUCKET`."""

  def __init__(self):
    from gcp_storage_emulator.server import create_server  # pylint: disable=g-import-not-at-top

    self.port = portpicker.pick_unused_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self.server = create_server("127.0.0.1", self.port, in_memory=True, default_bucket=BUCKET)
    self.storage = self.server._storage  # pylint: disable=protected-access

  def names(self, prefix: str) -> list[str]:
    return sorted(n for n in list(self.storage.objects.get(BUCKET, {})) if n.startswith(prefix))

  def read(self, name: str) -> bytes:
    return self.storage.get_file(BUCKET, name)

  def checkpoints(self, run: str) -> list[int]:
    """Committed steps: orbax's commit file on object stores marks a finished step."""
    steps = set()
    for name in self.names(f"{run}/checkpoints/"):
      step, _, rest = name[len(f"{run}/checkpoints/") :].partition("/")
      if step.isdigit() and rest == "commit_success.txt":
        steps.add(int(step))
    return sorted(steps)

  def download(self, run: str, dest: str) -> str:
    """Copies gs://BUCKET/<run>/ to `dest` (a local folder) for reading with local tools."""
    for name in self.names(f"{run}/"):
      path = os.path.join(dest, name[len(run) + 1 :])
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(self.read(name))
    return dest


@pytest.fixture(scope="module")
def emulator():
  with _emulate_generations():
    emu = Emulator()
    emu.server.start()
    try:
      yield emu
    finally:
      emu.server.stop()


def emulator_env(emu: Emulator, scratch: str) -> dict[str, str]:
  """The environment that points epath, google-cloud-storage and tensorstore at `emu`."""
  dead = f"127.0.0.1:{portpicker.pick_unused_port()}"  # Nothing listens there.
  os.makedirs(os.path.join(scratch, "gcloud"), exist_ok=True)
  e = {
      k: v
      for k, v in local.env(1).items()
      if k not in ("GOOGLE_APPLICATION_CREDENTIALS", metrics_lib.TENSORBOARD_DIR_ENV)
      and not k.lower().endswith("_proxy")
  }
  e.update(
      EPATH_USE_TF="false",
      STORAGE_EMULATOR_HOST=emu.url,
      TENSORSTORE_GCS_HTTP_URL=emu.url,
      GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
      FSSPEC_GCS_TOKEN="anon",
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
      NO_GCE_CHECK="true",
      GCE_METADATA_ROOT=dead,
      GCE_METADATA_HOST=dead,
      GCE_METADATA_IP=dead,
      CLOUDSDK_CONFIG=os.path.join(scratch, "gcloud"),
      http_proxy=f"http://{dead}",
      https_proxy=f"http://{dead}",
      all_proxy=f"http://{dead}",
      no_proxy="127.0.0.1,localhost",
  )
  if jax.config.jax_compilation_cache_dir:  # The runs compile the same programs: share conftest's.
    e.update(
        JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
  return e


def main_cmd(run: str) -> list[str]:
  return [sys.executable, "-c", _GUARDED_MAIN, f"--workdir=gs://{BUCKET}/{run}", *FLAGS]


def run_to_end(emu: Emulator, run: str, cwd: str) -> str:
  """Runs the trainer to the end; returns its stderr."""
  proc = subprocess.run(
      main_cmd(run),
      cwd=cwd,
      env=emulator_env(emu, cwd + "_scratch"),
      capture_output=True,
      timeout=900,
      check=False,
  )
  stderr = proc.stderr.decode()
  assert proc.returncode == 0, stderr[-4000:]
  return stderr


def comparable_rows(workdir: str) -> list[dict]:
  """metrics.jsonl train and eval rows without the timing scalars (rows of only those go)."""
  rows = [
      {k: v for k, v in r.items() if k not in TIMING_KEYS}
      for r in metrics_lib.read_jsonl(workdir)
      if r["split"] in ("train", "eval")
  ]
  return [r for r in rows if set(r) - {"step", "split"}]


def test_tensorboard_dir_rule(monkeypatch):
  """TensorBoard events: $JAXMILAB_TENSORBOARD_DIR, else the workdir unless it is remote and
  written without TensorFlow (EPATH_USE_TF=false), where there are none."""
  monkeypatch.delenv(metrics_lib.TENSORBOARD_DIR_ENV, raising=False)
  monkeypatch.delenv("EPATH_USE_TF", raising=False)
  assert metrics_lib.tensorboard_dir("/tmp/run") == "/tmp/run"
  assert metrics_lib.tensorboard_dir("gs://bucket/run") == "gs://bucket/run"
  for value in ("false", "0", "No"):
    monkeypatch.setenv("EPATH_USE_TF", value)
    assert metrics_lib.tensorboard_dir("gs://bucket/run") is None
    assert metrics_lib.tensorboard_dir("/tmp/run") == "/tmp/run"
  monkeypatch.setenv(metrics_lib.TENSORBOARD_DIR_ENV, "/tmp/tb")
  assert metrics_lib.tensorboard_dir("gs://bucket/run") == "/tmp/tb"


@pytest.mark.slow
def test_kill_9_then_resume_on_gs_equals_uninterrupted(emulator, tmp_path):
  cwd = str(tmp_path / "cwd")  # The subprocesses' working folder: must stay empty.
  os.makedirs(cwd)
  t0 = time.perf_counter()
  stderr = run_to_end(emulator, "reference", cwd)
  assert emulator.checkpoints("reference")[-1] == TOTAL
  # TensorBoard is skipped for gs:// without TensorFlow's filesystem, with one warning line.
  assert stderr.count("No TensorBoard events: workdir gs://bucket/reference") == 1, stderr[-4000:]

  log = str(tmp_path / "killed.log")
  with open(log, "wb") as err:
    proc = subprocess.Popen(
        main_cmd("run"),
        cwd=cwd,
        env=emulator_env(emulator, cwd + "_scratch"),
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    deadline = time.time() + 600
    while not emulator.checkpoints("run"):
      assert proc.poll() is None, open(log, encoding="utf-8").read()[-4000:]
      assert time.time() < deadline
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed_at = emulator.checkpoints("run")
  started = {
      int(n.split("/")[2]) for n in emulator.names("run/checkpoints/") if n.split("/")[2].isdigit()
  }
  assert killed_at[-1] < TOTAL, f"killed too late to test resume: {killed_at}"
  assert f"run/eval_images/step_{TOTAL:08d}.png" not in emulator.names("run/")
  run_to_end(emulator, "run", cwd)
  assert emulator.checkpoints("run")[-1] == TOTAL
  print(
      f"gs:// reference + killed + resumed runs: {time.perf_counter() - t0:.0f} s; killed with "
      f"committed checkpoints {killed_at}, uncommitted {sorted(started - set(killed_at))}"
  )

  # Everything went to the emulator, nothing to the local disk.
  assert os.listdir(cwd) == [], os.listdir(cwd)
  names = emulator.names("run/")
  for name in ("run/config.json", "run/metrics.jsonl", f"run/eval_images/step_{TOTAL:08d}.png"):
    assert name in names, names
  assert not [n for n in names if "tfevents" in n]
  assert json.loads(emulator.read("run/config.json"))["total_steps"] == TOTAL
  assert emulator.read(f"run/eval_images/step_{TOTAL:08d}.png")[:8] == b"\x89PNG\r\n\x1a\n"

  reference = emulator.download("reference", str(tmp_path / "reference"))
  resumed = emulator.download("run", str(tmp_path / "run"))
  # The second start resumed from the newest committed step (its compile row is at that step).
  compiles = [r["step"] for r in metrics_lib.read_jsonl(resumed) if r["split"] == "compile"]
  assert compiles == [0, killed_at[-1]], compiles
  local.assert_same_run(reference, resumed)
  assert comparable_rows(reference) == comparable_rows(resumed)
  steps = [r["step"] for r in comparable_rows(resumed) if r["split"] == "train" and "loss" in r]
  assert steps == list(range(4, TOTAL + 1, 4)), steps


def test_gs_checkpoints_without_google_cloud_storage_name_the_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # As if not installed.
  with pytest.raises(ImportError, match="google-cloud-storage"):
    ckpt_lib.create_manager("gs://bucket/run", keep=1)


@pytest.mark.slow  # the emulator and google-cloud-storage start (~10-20 s on 2 cores)
def test_gs_workdir_lock_refuses_a_second_holder_and_takes_over_a_dead_one(emulator, monkeypatch):
  """The gs:// lock is one object created with if_generation_match=0: while it is held a second
  acquire is refused with one line naming the holder; after release the object is gone; a lock
  left by a dead process of this host is taken over. (In this process, against the emulator.)"""
  from etils import epath  # pylint: disable=g-import-not-at-top

  from jaxmilab import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
  monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
  run = epath.Path(f"gs://{BUCKET}/lock_run")
  name = f"lock_run/{workdir_lib.LOCK_NAME}"
  first = workdir_lib.Lock(run).acquire()
  assert json.loads(emulator.read(name))["pid"] == os.getpid()
  with pytest.raises(workdir_lib.WorkdirError, match=rf"is in use by pid {os.getpid()} on ") as e:
    workdir_lib.Lock(run).acquire()
  assert "\n" not in str(e.value)
  first.release()
  assert emulator.names(name) == []
  # A lock object left by a process of this host that no longer runs (kill -9): taken over.
  dead = subprocess.run(
      [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
  )
  record = dict(workdir_lib._holder_record(), pid=int(dead.stdout))  # pylint: disable=protected-access
  first = workdir_lib.Lock(run)
  first._blob().upload_from_string(json.dumps(record))  # pylint: disable=protected-access
  second = workdir_lib.Lock(run).acquire()
  assert second.took_over["pid"] == record["pid"]
  assert json.loads(emulator.read(name))["pid"] == os.getpid()
  second.release()
