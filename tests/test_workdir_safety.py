"""Nothing a user owns is lost by mistake (issue 32): the workdir lock, the config guard,
config.json written only after a successful restore, Ctrl-C = a checkpoint, "already complete",
the console's progress / closing lines, init_from of another architecture, and one-line errors
with exit code 2 from every CLI (subprocesses; the slow ones under @pytest.mark.slow)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from jaxmilab import checkpoint as ckpt_lib
from jaxmilab import config_lib
from jaxmilab import console
from jaxmilab import metrics as metrics_lib
from jaxmilab import trainer
from jaxmilab import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two steps, one log / eval / checkpoint at the end: step 1 is an ordinary step.
RUN = {
    "mesh.num_devices": 1,
    "total_steps": 2,
    "log_every_steps": 2,
    "eval_every_steps": 2,
    "checkpoint_every_steps": 2,
}


def smoke(**overrides):
  return config_lib.load("configs/dcpt.py:smoke", {**RUN, **overrides})


def steps(workdir) -> list[int]:
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()) if os.path.isdir(d) else []


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 2-step DCPT smoke run (its params, its workdir)."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  state = trainer.train_and_evaluate(smoke(), workdir)
  return workdir, jax.device_get(state.params)


def copy_of(finished, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(finished[0], workdir)
  return workdir


# ------------------------------------------------------------------------------------ the lock


def test_lock_names_its_holder_and_refuses_a_second_writer(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lib.hold(workdir):
    holder = json.loads((tmp_path / "run" / workdir_lib.LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"]
    with pytest.raises(
        workdir_lib.WorkdirError, match=rf"in use by pid {os.getpid()} on {holder['host']}"
    ) as e:
      workdir_lib.Lock(workdir_lib.as_path(workdir)).acquire()
    assert "\n" not in str(e.value)
  assert not (tmp_path / "run" / workdir_lib.LOCK_NAME).exists()  # released
  with workdir_lib.hold(workdir):  # and can be taken again
    pass


def test_stale_lock_after_kill_9_is_taken_over(tmp_path):
  """A lock file left by a dead process (its flock gone with it) is taken over, by flock and,
  where flock is missing, by the dead pid on this host; a live pid's lock is refused."""
  import fcntl  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top

  workdir = tmp_path / "run"
  workdir.mkdir()
  stale = {"host": socket.gethostname(), "pid": dead_pid(), "started": "x", "command": "old"}
  (workdir / workdir_lib.LOCK_NAME).write_text(json.dumps(stale))
  lock = workdir_lib.Lock(workdir_lib.as_path(workdir)).acquire()
  assert lock.took_over["pid"] == stale["pid"]
  lock.release()

  def no_flock(fd, op):
    raise OSError(38, "Function not implemented")  # ENOSYS: some FUSE mounts

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(fcntl, "flock", no_flock)
    (workdir / workdir_lib.LOCK_NAME).write_text(json.dumps(stale))
    lock = workdir_lib.Lock(workdir_lib.as_path(workdir)).acquire()
    assert lock.took_over["pid"] == stale["pid"]
    with pytest.raises(workdir_lib.WorkdirError, match="in use by pid"):  # ours: alive
      workdir_lib.Lock(workdir_lib.as_path(workdir)).acquire()
    lock.release()


def test_a_second_run_is_refused_while_the_first_holds_the_workdir(finished, tmp_path):
  """While another process holds the workdir, a run is refused with one line and writes no
  metrics row (the first run's rows stay the only ones)."""
  workdir = copy_of(finished, tmp_path)
  rows = metrics_lib.read_jsonl(workdir)
  holder = subprocess.Popen(
      [
          sys.executable,
          "-c",
          "import sys, time; from jaxmilab import workdir as w\n"
          "with w.hold(sys.argv[1]):\n  print('held', flush=True); time.sleep(120)",
          workdir,
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(workdir_lib.WorkdirError, match=rf"in use by pid {holder.pid} on"):
      trainer.train_and_evaluate(smoke(total_steps=4), workdir)
  finally:
    holder.kill()
    holder.wait()
  assert metrics_lib.read_jsonl(workdir) == rows and steps(workdir) == [2]


# ----------------------------------------------------------------------------- the config guard


def test_config_changes_safe_unsafe_and_allowed(tmp_path):
  old = smoke()
  (tmp_path / "config.json").write_text(old.to_json_best_effort(indent=2))
  safe = workdir_lib.check_config(str(tmp_path), smoke(total_steps=10, log_every_steps=5))
  assert safe.changes == {"log_every_steps": [2, 5], "total_steps": [2, 10]}
  assert safe.allowed_by == "safe"
  with pytest.raises(workdir_lib.WorkdirError) as e:
    workdir_lib.check_config(str(tmp_path), config_lib.load("configs/restoration.py:smoke", RUN))
  message = str(e.value)
  assert "\n" not in message and message.index("method.name") < message.index("method.cls_weight")
  assert "--config_change=allow" in message and "new --workdir" in message
  lr = smoke(**{"optimizer.learning_rate": 0.5})
  with pytest.raises(workdir_lib.WorkdirError, match=r"optimizer.learning_rate: 0.001 -> 0.5"):
    workdir_lib.check_config(str(tmp_path), lr)
  allowed = workdir_lib.check_config(str(tmp_path), lr, config_change="allow")
  assert allowed.allowed_by == "--config_change=allow"
  allowed.record(str(tmp_path), 2)
  row = json.loads((tmp_path / workdir_lib.HISTORY_NAME).read_text())
  assert row["step"] == 2 and row["changes"] == {"optimizer.learning_rate": [0.001, 0.5]}


def test_foreign_config_is_refused_and_config_json_is_unchanged(finished, tmp_path):
  workdir = copy_of(finished, tmp_path)
  before = {n: (tmp_path / "run" / n).read_bytes() for n in ("config.json", "metrics.jsonl")}
  foreign = config_lib.load("configs/restoration.py:smoke", {**RUN, "model.preset": "nafnet_small"})
  with pytest.raises(
      workdir_lib.WorkdirError,
      match=r"model.preset: 'nafnet_tiny' -> " r"'nafnet_small'.*Nothing was written",
  ):
    trainer.train_and_evaluate(foreign, workdir)
  # The trainer itself (a driver that builds Trainer directly) refuses under the lock too.
  with pytest.raises(workdir_lib.WorkdirError, match="optimizer.learning_rate"):
    trainer.Trainer(smoke(**{"optimizer.learning_rate": 0.5}), workdir).run()
  with pytest.raises(workdir_lib.WorkdirError, match="holds another experiment"):
    trainer.Trainer(smoke(**{"optimizer.learning_rate": 0.5}), workdir).evaluate_checkpoint()
  for name, data in before.items():
    assert (tmp_path / "run" / name).read_bytes() == data, name
  assert not (tmp_path / "run" / workdir_lib.HISTORY_NAME).exists()
  assert steps(workdir) == [2]


def test_config_json_is_written_only_after_the_restore_succeeded(finished, tmp_path, monkeypatch):
  workdir = copy_of(finished, tmp_path)
  before = (tmp_path / "run" / "config.json").read_bytes()

  def broken_restore(*args, **kwargs):
    raise ValueError("restore failed (test)")

  monkeypatch.setattr(ckpt_lib, "restore_state", broken_restore)
  with pytest.raises(ValueError, match="restore failed"):
    trainer.train_and_evaluate(
        smoke(**{"optimizer.learning_rate": 0.5}), workdir, config_change="allow"
    )
  assert (tmp_path / "run" / "config.json").read_bytes() == before
  assert not (tmp_path / "run" / workdir_lib.HISTORY_NAME).exists()


def test_more_steps_resume_and_are_recorded_then_already_complete(finished, tmp_path, capsys):
  workdir = copy_of(finished, tmp_path)
  trainer.train_and_evaluate(smoke(total_steps=3, eval_every_steps=3, log_every_steps=1), workdir)
  assert steps(workdir) == [2, 3]
  assert json.loads((tmp_path / "run" / "config.json").read_text())["total_steps"] == 3
  history = [
      json.loads(l) for l in (tmp_path / "run" / workdir_lib.HISTORY_NAME).read_text().splitlines()
  ]
  assert history[0]["step"] == 2 and history[0]["allowed_by"] == "safe"
  assert history[0]["changes"]["total_steps"] == [2, 3]
  out = capsys.readouterr().out.strip().splitlines()
  assert any(l.startswith("step 3/3 (100%)  loss ") for l in out), out
  assert any(l.startswith("eval  step 3/3: psnr ") and "metrics.jsonl" in l for l in out), out
  assert out[-1].startswith("done: step 3/3: loss ") and "checkpoints/3" in out[-1]
  # Re-running the finished run trains nothing and says so, with its final metrics.
  rows = metrics_lib.read_jsonl(workdir)
  events = sorted(p.name for p in (tmp_path / "run").iterdir() if "tfevents" in p.name)
  trainer.train_and_evaluate(smoke(total_steps=3, eval_every_steps=3, log_every_steps=1), workdir)
  # ... and writes no new (empty) TensorBoard event file.
  assert sorted(p.name for p in (tmp_path / "run").iterdir() if "tfevents" in p.name) == events
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("already complete at step 3 of 3: loss ") and "psnr" in last, last
  assert "checkpoints/3" in last
  kept = lambda records: [r for r in records if r["split"] in ("train", "eval")]  # noqa: E731
  assert kept(metrics_lib.read_jsonl(workdir)) == kept(rows)


# ------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_checkpoints_at_the_next_step_and_resumes_to_the_same_run(
    finished, tmp_path, monkeypatch, capsys
):
  """SIGINT during step 1 (an ordinary step: no log, eval or checkpoint) stops after step 1
  with a checkpoint there; re-running ends with the parameters of the uninterrupted run."""
  original_guard = trainer._ordinary_step_guard  # pylint: disable=protected-access
  sent = []

  def guard(level):
    if not sent:
      sent.append(True)
      os.kill(os.getpid(), signal.SIGINT)
    return original_guard(level)

  monkeypatch.setattr(trainer, "_ordinary_step_guard", guard)
  workdir = str(tmp_path / "run")
  before = signal.getsignal(signal.SIGINT)
  state = trainer.train_and_evaluate(smoke(), workdir)
  assert int(state.step) == 1 and steps(workdir) == [1]
  assert trainer.stopped_by() == "SIGINT"
  assert signal.getsignal(signal.SIGINT) is before
  captured = capsys.readouterr()
  assert "Ctrl-C: saving a checkpoint at the next step" in captured.err
  last = captured.out.strip().splitlines()[-1]
  assert last.startswith("stopped at step 1 of 2 (Ctrl-C)") and "checkpoints/1" in last, last
  assert "re-run the same command to resume" in last
  with pytest.raises(trainer.Interrupted, match="step 1 of 2"):
    trainer.check_finished(state, smoke(), workdir)
  monkeypatch.setattr(trainer, "_ordinary_step_guard", original_guard)
  resumed = jax.device_get(trainer.train_and_evaluate(smoke(), workdir).params)
  for a, b in zip(jax.tree.leaves(finished[1]), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_a_second_ctrl_c_aborts_at_once():
  before = signal.getsignal(signal.SIGINT)
  with trainer._Preemption() as p:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGINT)
    assert p.interrupted and p.should_stop(5, log_step=False)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
  assert signal.getsignal(signal.SIGINT) is before


# ------------------------------------------------------------------------------------ console


def test_progress_lines_and_eval_summary(capsys):
  class Sink:
    rows = []

    def write_scalars(self, step, scalars):
      self.rows.append((step, dict(scalars)))

  sink = Sink()
  w = console.ProgressWriter(sink, total_steps=100, start_step=0, bar=False)
  metrics_lib.write_split(w, 0, "compile", {"train_step_seconds": 3.0})
  metrics_lib.write_split(w, 10, "train", {"loss": 0.5, "grad_norm": 1.0})
  metrics_lib.write_split(w, 10, "train", {"steps_per_sec": 9.0})  # ReportProgress
  evals = {
      "psnr": 25.0,
      "ssim": 0.8,
      "accuracy": 0.5,
      "psnr_input": 20.0,
      **{f"psnr/t{i}": 1.0 for i in range(20)},
  }
  metrics_lib.write_split(w, 20, "eval", evals)
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == "compiled the train step in 3.0 s"
  assert lines[1].startswith("step 10/100 (10%)  loss 0.5  ") and "steps/s  ETA " in lines[1]
  assert (
      lines[2]
      == "eval  step 20/100: psnr 25, ssim 0.8, accuracy 0.5 (all 24 metrics in metrics.jsonl)"
  )
  assert len(lines) == 3 and len(sink.rows) == 4  # every row reaches metrics.jsonl / TensorBoard
  assert w.closing_line("/w", 100, "/w/checkpoints/100") == (
      "done: step 100/100: loss 0.5, psnr 25, ssim 0.8, accuracy 0.5; checkpoint "
      "/w/checkpoints/100; metrics in /w/metrics.jsonl"
  )


def test_progress_bar_in_a_terminal_or_notebook(capsys):
  """bar=True (a terminal or a notebook): the train lines become one tqdm bar that advances to
  the logged step with the loss beside it; eval lines still print (above the bar); the closing
  line closes the bar; a finished run (start_step == total) opens none."""

  class Sink:

    def write_scalars(self, step, scalars):
      pass

  w = console.ProgressWriter(Sink(), total_steps=100, start_step=0, bar=True)
  metrics_lib.write_split(w, 10, "train", {"loss": 0.5})
  metrics_lib.write_split(w, 50, "train", {"loss": 0.25})
  assert w._bar.n == 50 and "loss 0.25" in str(w._bar)  # pylint: disable=protected-access
  metrics_lib.write_split(w, 50, "eval", {"psnr": 25.0})
  captured = capsys.readouterr()
  assert not [l for l in captured.out.splitlines() if l.startswith("step ")]  # no train lines
  assert "eval  step 50/100: psnr 25" in captured.out
  assert "train" in captured.err and "50/100" in captured.err  # tqdm draws on stderr
  assert w.closing_line("/w", 50, None).startswith("done: step 50/100: loss 0.25, psnr 25")
  assert w._bar is None  # pylint: disable=protected-access
  done = console.ProgressWriter(Sink(), total_steps=100, start_step=100, bar=True)
  assert done._bar is None  # pylint: disable=protected-access


def test_notebook_bar_needs_ipywidgets_else_the_text_bar(monkeypatch):
  """In a notebook without ipywidgets the text bar, not tqdm.auto's fallback (which printed an
  "IProgress not found" warning into committed notebook outputs); the widget where it exists."""
  import sys  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top

  import tqdm  # pylint: disable=g-import-not-at-top

  monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
  assert console._tqdm() is tqdm.tqdm  # pylint: disable=protected-access
  monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
  monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
  assert console._tqdm() is tqdm.tqdm  # pylint: disable=protected-access
  monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets"))
  from tqdm import notebook  # pylint: disable=g-import-not-at-top

  assert console._tqdm() is notebook.tqdm  # pylint: disable=protected-access


def test_read_only_or_uncreatable_workdir_is_one_line(tmp_path, monkeypatch):
  """A workdir that cannot be created or written to is one WorkdirError line saying what to do
  (simulated: this machine's tests may run as root, for whom permissions do not apply)."""
  existing = tmp_path / "ro"
  existing.mkdir()
  monkeypatch.setattr(workdir_lib.os, "access", lambda path, mode: False)
  with pytest.raises(workdir_lib.WorkdirError, match=r"ro is not writable; pass a folder") as e:
    workdir_lib.ensure_writable(str(existing))
  assert "\n" not in str(e.value)

  def refuse(path, exist_ok=False):
    raise PermissionError(13, "Permission denied", path)

  monkeypatch.setattr(workdir_lib.os, "makedirs", refuse)
  with pytest.raises(
      workdir_lib.WorkdirError, match=r"new cannot be created \(Permission denied\); pass a folder"
  ):
    workdir_lib.ensure_writable(str(tmp_path / "new"))


def test_verbosity_1_shows_the_traceback_instead_of_one_line(monkeypatch, capsys):
  """A user error is one line and exit 2; with --verbosity=1 it is raised whole (traceback)."""
  error = ValueError("config.x=1: bad\nsecond line")
  monkeypatch.setattr(console, "verbosity", lambda: 0)
  with pytest.raises(SystemExit) as e:
    console.user_error(error)
  assert e.value.code == 2
  assert capsys.readouterr().err == "error: config.x=1: bad; second line\n"
  monkeypatch.setattr(console, "verbosity", lambda: 1)
  with pytest.raises(ValueError, match="second line"):
    console.user_error(error)


def test_one_line_joins_lines_and_caps_the_length():
  assert console.one_line(ValueError("a\n  b\n")) == "a; b"
  long = console.one_line(ValueError("x" * 5000))
  assert len(long) < 700 and "--verbosity=1 shows all" in long
  assert console.one_line(FileNotFoundError(2, "No such file or directory", "/x")) == (
      "No such file or directory: /x"
  )


def test_init_from_another_architecture_is_refused(finished, tmp_path):
  """OPD's U-Net initialised from a DCPT NAFNet run: no parameter in common (the merge would
  silently keep every fresh weight)."""
  config = config_lib.load(
      "configs/opd.py:smoke", {"mesh.num_devices": 1, "method.init_from": finished[0]}
  )
  with pytest.raises(
      ValueError, match=r"init_from=.*none of its \d+ parameters .*another " r"architecture"
  ) as e:
    trainer.train_and_evaluate(config, str(tmp_path / "opd"))
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "opd" / "config.json")
  assert not os.path.exists(tmp_path / "opd" / "checkpoints")  # no empty folder left behind


def test_mode_eval_without_a_checkpoint_leaves_no_empty_checkpoints_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match="has no checkpoint"):
    trainer.evaluate_checkpoint(smoke(), str(tmp_path / "empty"))
  assert not os.path.exists(tmp_path / "empty" / "checkpoints")


# ------------------------------------------------------------------------- CLIs: one line, exit 2


def cli(args, cwd, timeout=600, env=None, **popen):
  env = dict(env if env is not None else os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run(
      [sys.executable, "-m", *args],
      capture_output=True,
      text=True,
      env=env,
      cwd=cwd,
      timeout=timeout,
      check=False,
      **popen,
  )


def assert_one_line(proc, expected: str, code: int = 2):
  err = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert err and err[-1].startswith("error: ") and expected in err[-1], err[-3:]


SMOKE = "--config=configs/dcpt.py:smoke"


@pytest.mark.parametrize(
    "args,expected",
    [
        (["jaxmilab.main", SMOKE], "--workdir must have a value"),
        (
            ["jaxmilab.main", SMOKE, "--workdir=W", "--worksdir=x"],
            "Unknown command line flag 'worksdir'",
        ),
        (
            ["jaxmilab.main", SMOKE, "--workdir=W", "--mode=evaluate"],
            "value should be one of <train|eval>",
        ),
        (["jaxmilab.main", SMOKE, "--workdir=afile"], "is a file, not a folder"),
        (
            ["jaxmilab.restore", "--weights=w", "--input=victim.png", "--output=victim.png"],
            "would overwrite the --input image",
        ),
        (
            ["jaxmilab.restore", "--weights=w", "--input=photos", "--output=photos"],
            "is the --input folder",
        ),
        (["jaxmilab.evaluate", "--weights=w"], "--data_root is required"),
        (["jaxmilab.compile", SMOKE, "--topology=v5e-65"], "--topology='v5e-65': use one of"),
        (
            ["jaxmilab.compile", "--config=configs/dcpt.py:smoke", "--config.optimizer.lr=1"],
            "did you mean config.optimizer.learning_rate",
        ),
        (["jaxmilab.data.build_uir", "--clean_dir=none"], "--output is not set"),
    ],
    ids=[
        "missing_flag",
        "misspelled_flag",
        "mode_evaluate",
        "workdir_is_a_file",
        "restore_in_place",
        "restore_into_input_folder",
        "evaluate_missing_flag",
        "compile_topology",
        "compile_config_key",
        "build_uir",
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, args, expected):
  (tmp_path / "afile").write_text("x")
  (tmp_path / "photos").mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "victim.png")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "a.png")
  args = [a.replace("configs/", os.path.join(REPO, "configs") + "/") for a in args]
  proc = cli(args, str(tmp_path))
  err = proc.stderr
  if args[0] == "jaxmilab.data.build_uir":  # its own "build_uir: error:" prefix
    assert proc.returncode == 2 and "Traceback" not in err and expected in err.splitlines()[-1]
    return
  assert_one_line(proc, expected)
  assert np.asarray(Image.open(tmp_path / "victim.png")).max() == 0  # the photo is untouched
  assert os.listdir(tmp_path / "photos") == ["a.png"]


@pytest.mark.parametrize(
    "module",
    [
        "jaxmilab.main",
        "jaxmilab.restore",
        "jaxmilab.evaluate",
        "jaxmilab.compile",
        "jaxmilab.quickstart",
    ],
)
def test_help_exits_0(module, tmp_path):
  proc = cli([module, "--help"], str(tmp_path))
  assert proc.returncode == 0 and "flags" in proc.stdout.lower(), proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra,expected",
    [
        (
            ["--config.method.init_from=/nonexistent"],
            "init_from='/nonexistent': no orbax checkpoint",
        ),
        (["--config.method.init_from=emptydir"], "no orbax checkpoint found"),
        (["--config.mesh.num_devices=16"], "config.mesh.num_devices=16: only 1 devices"),
        (["--mode=eval"], "has no checkpoint and config.method.init_from is empty"),
        (["--config.optimizer.learning_rate=1e30", "--config.total_steps=6"], "Training stopped"),
    ],
)
def test_main_run_errors_are_one_line_with_exit_code_2(tmp_path, extra, expected):
  (tmp_path / "emptydir").mkdir()
  proc = cli(
      [
          "jaxmilab.main",
          SMOKE.replace("configs/", REPO + "/configs/"),
          f"--workdir={tmp_path / 'run'}",
          *extra,
      ],
      str(tmp_path),
      **{"env": dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")},
  )
  assert_one_line(proc, expected)
  if "--mode=eval" in extra:
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.slow
def test_two_concurrent_mains_leave_one_set_of_metrics_rows(tmp_path):
  """Two identical trainings started 3 s apart into one workdir: the second is refused with
  one line naming the first; metrics.jsonl has each step's row once and one events file."""
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [
      sys.executable,
      "-m",
      "jaxmilab.main",
      SMOKE,
      f"--workdir={workdir}",
      "--config.total_steps=12",
  ]
  first = subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  time.sleep(3)
  second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  out, err = first.communicate(timeout=900)
  assert first.returncode == 0, err[-3000:]
  assert_one_line(second, f"is in use by pid {first.pid} on")
  train = [
      r["step"] for r in metrics_lib.read_jsonl(workdir) if r["split"] == "train" and "loss" in r
  ]
  assert train == list(range(1, 13))
  assert len([f for f in os.listdir(workdir) if f.startswith("events.out")]) == 1
  assert out.strip().splitlines()[-1].startswith("done: step 12/12")


@pytest.mark.slow
def test_ctrl_c_on_the_cli_saves_exits_130_and_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [
      sys.executable,
      "-m",
      "jaxmilab.main",
      SMOKE,
      f"--workdir={workdir}",
      "--config.total_steps=400",
      "--config.checkpoint_every_steps=400",
      "--config.eval_every_steps=400",
  ]
  proc = subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  deadline = time.time() + 600
  while not (
      os.path.exists(os.path.join(workdir, "metrics.jsonl"))
      and '"train"' in open(os.path.join(workdir, "metrics.jsonl")).read()
  ):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  stopped = steps(workdir)
  assert len(stopped) == 1 and 0 < stopped[0] < 400
  assert out.strip().splitlines()[-1].startswith(f"stopped at step {stopped[0]} of 400 (Ctrl-C)")
