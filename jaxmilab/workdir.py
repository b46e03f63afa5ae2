"""What protects a workdir: one writer at a time (a lock) and one experiment per folder (a guard).

**Lock** (`hold(workdir)`, taken by `Trainer.run` and `Trainer.evaluate_checkpoint` for their
whole life, on the lead process). `DIR/.jaxmilab.lock` names the holder as JSON (host, pid, start
time, command). A second run on the same workdir is refused with one line naming the holder.

* Local (and NFS) folders: the lock file is held with `fcntl.flock` while the run lives, so the
  operating system releases it when the process dies, `kill -9` included: a lock file whose
  flock is free is stale and taken over (the message says whose it was). Where flock is not
  available (some FUSE mounts), the file is created exclusively (`O_EXCL`) and a lock of a pid
  that no longer runs on this host is taken over; a lock from another host is then only
  released by its run or by deleting the file.
* `gs://`: the lock object is created with the precondition `if_generation_match=0` (the
  create fails when the object exists), through google-cloud-storage, so two runs starting at
  once cannot both get it. A lock left by a killed run on the same host (its pid no longer
  runs) is taken over (deleted with `if_generation_match=<its generation>`); one from another
  host is refused, and the message says to delete the object if that run is dead: nothing
  on GCS can tell whether a process on another machine is alive.

Multi-process runs: only process 0 takes the lock (the run's other processes write no workdir
file of their own). A second multi-process job on the same workdir is refused on its process 0.

**Config guard** (`check_config`, before anything is written). A workdir belongs to the
experiment in its `config.json`. A run whose config differs from it in the model, method,
data or optimizer (anything but the keys of SAFE_CHANGES) is refused with one line listing the
differing keys and the two ways on: a new --workdir, or `--config_change=allow`. Safe changes
(more steps, the log / eval / checkpoint cadence, the mesh, data-loading threads, data folder
locations) pass. Every accepted change, safe or allowed, is appended to `DIR/config_history.jsonl`
({"time", "step", "changes": {key: [old, new]}, "allowed_by": "safe" | "--config_change=allow"})
when the run writes its new `config.json`, which the trainer does only once the restore (or
initialisation, `init_from` included) succeeded.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import socket
import sys
import time
from typing import Any, Iterator, Mapping

from etils import epath

LOCK_NAME = ".jaxmilab.lock"
CONFIG_NAME = "config.json"
HISTORY_NAME = "config_history.jsonl"
# The name of the flag (jaxmilab.main) that accepts any config change; quoted by the messages.
ALLOW_FLAG = "--config_change=allow"
# Keys that may differ from the workdir's config.json without changing the experiment
# (fnmatch patterns over dotted keys).
SAFE_CHANGES = (
    "total_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "profile_steps",
    "mesh.*",
    "data.worker_count",
    "data.worker_buffer_size",
    "data.read_threads",
    "data.read_buffer",
    "data.cache_size",
    "data.prefetch*",
    "data.eval_batch_size",
    "data.root",
    "data.eval_root",
    "data.*_root",
    "data.*_dir",
)


class WorkdirError(ValueError):
  """A workdir that cannot be used as asked (held by another run, another experiment's,
  not a folder, not writable); the message is one line that says what to do."""


def _is_remote(path: epath.Path | str) -> bool:
  return "://" in str(path)


def as_path(workdir: str | os.PathLike) -> epath.Path:
  """The workdir as an epath; local paths absolute (orbax refuses relative checkpoint paths)."""
  text = os.fspath(workdir)
  if _is_remote(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def ensure_writable(workdir: str | os.PathLike) -> epath.Path:
  """Creates the workdir if needed; WorkdirError (one line) when it is a file or not writable."""
  path = as_path(workdir)
  if _is_remote(path):
    path.mkdir(parents=True, exist_ok=True)
    return path
  text = str(path)
  if os.path.exists(text) and not os.path.isdir(text):
    raise WorkdirError(
        f"--workdir={text} is a file, not a folder; pass a folder (it is created if missing)."
    )
  try:
    os.makedirs(text, exist_ok=True)
  except (PermissionError, NotADirectoryError, FileExistsError, OSError) as e:
    raise WorkdirError(
        f"--workdir={text} cannot be created ({e.strerror or e}); pass a folder "
        f"you can write to."
    ) from None
  if not os.access(text, os.W_OK | os.X_OK):
    raise WorkdirError(
        f"--workdir={text} is not writable; pass a folder you can write to (or "
        f"fix its permissions)."
    )
  return path


# ------------------------------------------------------------------------------------------ lock


def _holder_record() -> dict[str, Any]:
  return {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
      "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])[:500],
  }


def _describe(holder: Mapping[str, Any] | None) -> str:
  if not holder:
    return "another process (the lock file names no holder)"
  return (
      f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')}: "
      f"{holder.get('command', '')})"
  )


def _pid_alive(pid: Any) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, TypeError, OverflowError):
    return True  # exists but not ours, or unreadable: assume it runs
  return True


def _read_holder(text: str) -> dict[str, Any] | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


class Lock:
  """A held workdir lock; `release()` (idempotent) gives it back. See the module docstring."""

  def __init__(self, workdir: epath.Path):
    self.workdir = workdir
    self.path = workdir / LOCK_NAME
    self.took_over: dict[str, Any] | None = None  # the stale holder replaced, if any
    self._fd: int | None = None
    self._generation: int | None = None
    self._held = False

  # -- local --------------------------------------------------------------------------------
  def _acquire_local(self) -> None:
    import fcntl  # pylint: disable=g-import-not-at-top

    path = str(self.path)
    record = _holder_record()
    for _ in range(20):
      try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise WorkdirError(
            f"--workdir={self.workdir}: cannot create its lock file {path} "
            f"({e.strerror}); pass a folder you can write to."
        ) from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(os.read(fd, 65536).decode("utf-8", "replace"))
        os.close(fd)
        raise WorkdirError(
            f"--workdir={self.workdir} is in use by {_describe(holder)}; wait for that run to end "
            f"(or stop it), or pass another --workdir."
        ) from None
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          self._acquire_exclusive(record)
          return
        raise
      # The file may have been removed (released) between our open and flock: retry on the
      # file that is there now.
      try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
      except FileNotFoundError:
        same = False
      if not same:
        os.close(fd)
        continue
      previous = _read_holder(os.read(fd, 65536).decode("utf-8", "replace"))
      if previous:
        self.took_over = previous  # a lock file whose flock is free: its run died
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, json.dumps(record).encode())
      os.fsync(fd)
      self._fd, self._held = fd, True
      return
    raise WorkdirError(f"--workdir={self.workdir}: could not take its lock {path}; retry.")

  def _acquire_exclusive(self, record: dict[str, Any]) -> None:
    """Without flock: O_EXCL creation; a same-host lock of a dead pid is taken over."""
    path = str(self.path)
    for _ in range(3):
      try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      except FileExistsError:
        with open(path, encoding="utf-8", errors="replace") as f:
          holder = _read_holder(f.read())
        if holder and holder.get("host") == record["host"] and not _pid_alive(holder.get("pid")):
          self.took_over = holder
          with contextlib.suppress(FileNotFoundError):
            os.remove(path)
          continue
        raise WorkdirError(
            f"--workdir={self.workdir} is in use by {_describe(holder)}; wait for that run to end, "
            f"pass another --workdir, or delete {path} if that run is dead."
        ) from None
      os.write(fd, json.dumps(record).encode())
      os.close(fd)
      self._held = True
      return
    raise WorkdirError(f"--workdir={self.workdir}: could not take its lock {path}; retry.")

  # -- gs:// ----------------------------------------------------------------------------------
  def _blob(self):
    from google.cloud import storage  # pylint: disable=g-import-not-at-top

    bucket, _, name = str(self.path)[len("gs://") :].partition("/")
    return storage.Client().bucket(bucket).blob(name)

  def _acquire_gcs(self) -> None:
    from google.api_core import exceptions  # pylint: disable=g-import-not-at-top

    record = _holder_record()
    blob = self._blob()
    for _ in range(3):
      try:
        blob.upload_from_string(json.dumps(record), if_generation_match=0)
        self._generation = blob.generation
        self._held = True
        return
      except exceptions.PreconditionFailed:
        blob.reload()
        holder = _read_holder(blob.download_as_text())
        if holder and holder.get("host") == record["host"] and not _pid_alive(holder.get("pid")):
          self.took_over = holder
          with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
            blob.delete(if_generation_match=blob.generation)
          continue
        raise WorkdirError(
            f"--workdir={self.workdir} is in use by {_describe(holder)}; wait for that run to end, "
            f"pass another --workdir, or delete {self.path} if that run is dead."
        ) from None
    raise WorkdirError(f"--workdir={self.workdir}: could not take its lock {self.path}; retry.")

  # -- both -----------------------------------------------------------------------------------
  def acquire(self) -> "Lock":
    if _is_remote(self.workdir):
      if str(self.workdir).startswith("gs://"):
        self._acquire_gcs()
      else:  # Other object stores: no atomic create-if-absent through epath (best effort).
        if self.path.exists():
          holder = _read_holder(self.path.read_text())
          raise WorkdirError(
              f"--workdir={self.workdir} is in use by {_describe(holder)}; delete "
              f"{self.path} if that run is dead, or pass another --workdir."
          )
        self.path.write_text(json.dumps(_holder_record()))
        self._held = True
    else:
      self._acquire_local()
    return self

  def release(self) -> None:
    if not self._held:
      return
    self._held = False
    if self._fd is not None:
      with contextlib.suppress(OSError):
        os.remove(str(self.path))  # under the flock: a waiting open sees another inode
      os.close(self._fd)
      self._fd = None
    elif str(self.workdir).startswith("gs://"):
      from google.api_core import exceptions  # pylint: disable=g-import-not-at-top

      with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
        self._blob().delete(if_generation_match=self._generation)
    else:
      with contextlib.suppress(OSError):
        self.path.unlink()


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, *, lead: bool = True) -> Iterator[Lock | None]:
  """Holds the workdir's lock for the body (on the lead process; others get None)."""
  if not lead:
    yield None
    return
  lock = Lock(ensure_writable(workdir)).acquire()
  if lock.took_over:
    from absl import logging  # pylint: disable=g-import-not-at-top

    logging.warning(
        "Took over the stale lock of %s in %s (that process no longer runs).",
        _describe(lock.took_over),
        workdir,
    )
  try:
    yield lock
  finally:
    lock.release()


# ---------------------------------------------------------------------------------- config guard


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    if not tree and prefix:
      out[prefix[:-1]] = {}
    return out
  return {prefix[:-1]: tree}


def config_as_json(config: Any) -> dict[str, Any]:
  """A ConfigDict (or a dict) as the JSON `config.json` holds (tuples become lists)."""
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


def read_config(workdir: str | os.PathLike) -> dict[str, Any] | None:
  path = as_path(workdir) / CONFIG_NAME
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text())
  except ValueError:
    return None


def is_safe_change(key: str) -> bool:
  return any(fnmatch.fnmatchcase(key, pattern) for pattern in SAFE_CHANGES)


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
  """{dotted key: [old value, new value]} of every key that differs (absent = "<absent>")."""
  a, b = _flatten(old), _flatten(new)
  missing = "<absent>"
  return {
      k: [a.get(k, missing), b.get(k, missing)]
      for k in sorted(set(a) | set(b))
      if a.get(k, missing) != b.get(k, missing)
  }


def _short(value: Any) -> str:
  text = json.dumps(value) if not isinstance(value, str) else repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


class ConfigChange:
  """The outcome of `check_config`: the changes the run accepted (to record), if any."""

  def __init__(self, changes: dict[str, list[Any]], allowed_by: str | None):
    self.changes, self.allowed_by = changes, allowed_by

  def record(self, workdir: str | os.PathLike, step: int | None) -> None:
    """Appends the change to DIR/config_history.jsonl (called when config.json is rewritten)."""
    if not self.changes:
      return
    path = as_path(workdir) / HISTORY_NAME
    line = (
        json.dumps(
            {
                "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "step": step,
                "changes": self.changes,
                "allowed_by": self.allowed_by,
            },
            default=str,
        )
        + "\n"
    )
    if _is_remote(path):
      old = path.read_text() if path.exists() else ""
      path.write_text(old + line)
    else:
      with open(str(path), "a", encoding="utf-8") as f:
        f.write(line)


def check_config(
    workdir: str | os.PathLike, config: Any, *, config_change: str = "refuse"
) -> ConfigChange:
  """Compares `config` with the workdir's config.json before anything is written.

  Returns the accepted changes; raises WorkdirError (one line: the differing keys, the two ways
  on) when a change outside SAFE_CHANGES is not allowed by `config_change="allow"`.
  """
  if config_change not in ("refuse", "allow"):
    raise WorkdirError(f"--config_change={config_change!r}: use refuse (default) or allow.")
  old = read_config(workdir)
  if old is None:
    return ConfigChange({}, None)
  changes = config_changes(old, config_as_json(config))
  unsafe = {k: v for k, v in changes.items() if not is_safe_change(k)}
  # The component names, then the model's keys, first: they say what the other experiment is.
  unsafe = dict(
      sorted(
          unsafe.items(),
          key=lambda kv: (not kv[0].endswith(".name"), not kv[0].startswith("model."), kv[0]),
      )
  )
  if unsafe and config_change != "allow":
    shown = "; ".join(f"{k}: {_short(o)} -> {_short(n)}" for k, (o, n) in list(unsafe.items())[:6])
    more = f" (and {len(unsafe) - 6} more)" if len(unsafe) > 6 else ""
    raise WorkdirError(
        f"--workdir={workdir} holds another experiment: its config.json differs in "
        f"{len(unsafe)} key(s): {shown}{more}. Nothing was written. Pass a new --workdir, or "
        f"{ALLOW_FLAG} to continue this run's checkpoints under the new config."
    )
  return ConfigChange(changes, ("--config_change=allow" if unsafe else "safe") if changes else None)


def latest_step(workdir: str | os.PathLike) -> int | None:
  """The newest step folder under DIR/checkpoints (a cheap listing; no orbax)."""
  d = as_path(workdir) / "checkpoints"
  try:
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()]
  except (FileNotFoundError, NotADirectoryError):
    return None
  return max(steps) if steps else None
