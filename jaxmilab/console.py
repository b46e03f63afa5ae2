"""Console set-up shared by every jaxmilab command line: quiet libraries, absl's --verbosity.

By default a CLI prints its own progress and metrics lines (jaxmilab's absl INFO logs, the
metrics clu's LoggingWriter logs for the trainer, and print()s) and, from the libraries (orbax,
grain, TensorFlow, jax, etils, ...), only warnings and errors: orbax alone logs dozens of INFO
lines per checkpoint save. `--verbosity=1` (absl's flag, accepted by every jaxmilab CLI) lets
every library's INFO through again. TensorFlow (imported by clu's summary writer and tfds; it
computes nothing of ours) printed "oneDNN custom operations are on" at its import regardless of
TF_CPP_MIN_LOG_LEVEL; `setup` turns TensorFlow's oneDNN rewrites off (TF_ENABLE_ONEDNN_OPTS=0,
unless the user set it), which removes the line at its cause.

  def main(argv):
    console.setup()   # first thing in each CLI's main (after absl parsed the flags)
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from absl import flags
from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Python loggers of libraries that log INFO through the standard logging module.
LIBRARY_LOGGERS = (
    "jax",
    "jax._src",
    "orbax",
    "grain",
    "tensorflow",
    "tensorflow_datasets",
    "etils",
    "absl.testing",
    "clu",
    "flax",
    "optax",
    "urllib3",
    "PIL",
    "matplotlib",
)


# Library files whose INFO lines are jaxmilab's own output: clu's LoggingWriter prints the metrics
# the trainer writes ("[step] train/loss=..."), the console's progress and metrics lines.
KEPT_LIBRARY_FILES = (os.path.join("clu", "metric_writers", "logging_writer.py"),)


class LibraryFilter(std_logging.Filter):
  """Passes warnings and errors from anywhere, and lower levels only from jaxmilab's own code
  (and the metrics lines of KEPT_LIBRARY_FILES)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    path = os.path.abspath(record.pathname or "")
    return path.startswith(_PACKAGE_DIR) or path.endswith(KEPT_LIBRARY_FILES)


_FILTER = LibraryFilter()


def verbosity() -> int:
  """absl's --verbosity (0 before the flags are parsed)."""
  try:
    return int(flags.FLAGS.verbosity) if flags.FLAGS.is_parsed() else 0
  except (AttributeError, flags.Error):
    return 0


def _accelerator_present() -> bool:
  """A TPU (/dev/accel*, /dev/vfio/N), NVIDIA (/dev/nvidia0, ...) or AMD (/dev/kfd) device node."""
  import glob  # pylint: disable=g-import-not-at-top

  patterns = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")
  return any(glob.glob(p) for p in patterns)


def skip_absent_tpu() -> bool:
  """On a host with no accelerator, runs JAX on CPU without initialising an installed libtpu.

  With the `[tpu]` extra on a CPU machine (for ahead-of-time compiles) every backend start loads
  libtpu's PJRT plugin, which prints six lines about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES
  before JAX falls back to CPU. An explicit JAX_PLATFORMS (or jax_platforms) is respected, and
  nothing changes once backends exist. Returns True when it pinned the platform to CPU.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top

  if os.environ.get("JAX_PLATFORMS") or _accelerator_present():
    return False
  if importlib.util.find_spec("libtpu") is None:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  if jax.config.jax_platforms or xla_bridge.backends_are_initialized():
    return False
  jax.config.update("jax_platforms", "cpu")
  return True


def setup(level: int | None = None) -> bool:
  """Quiets library INFO logging unless `level` (default: --verbosity) >= 1. Idempotent.

  Returns True when the libraries were quieted. TensorFlow's C++ log level is set through
  TF_CPP_MIN_LOG_LEVEL, which only counts before TensorFlow is imported (respected if already set
  by the user).
  """
  skip_absent_tpu()
  # TensorFlow's oneDNN rewrites change only TF's own CPU kernels (none run jaxmilab's
  # computations); with them on, TF prints a start-up line at import whatever the log level.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  level = verbosity() if level is None else level
  handler = logging.get_absl_handler()
  root = std_logging.getLogger()
  if level >= 1:
    handler.removeFilter(_FILTER)
    for h in root.handlers:
      h.removeFilter(_FILTER)
    return False
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
  # absl's handler receives everything logged with absl.logging (orbax, clu, jaxmilab) and, once
  # absl.app ran, the root logger's records: one filter on it and on the root's handlers.
  handler.addFilter(_FILTER)
  for h in root.handlers:
    h.addFilter(_FILTER)
  for name in LIBRARY_LOGGERS:
    std_logging.getLogger(name).setLevel(std_logging.WARNING)
  return True


def parse_flags(
    define: Callable[[flags.FlagValues], None], argv: Sequence[str], prog: str
) -> flags.FlagValues:
  """Parses `argv` (flags only, no program name) on a fresh FlagValues that `define` fills.

  The in-process form of a CLI (`restore.main([...])` in tests and notebooks): independent of
  absl's global FLAGS, so CLIs whose flags share names (--output, --model) can be called one
  after another in one process. Unknown flags raise ValueError naming them.
  """
  fv = flags.FlagValues()
  define(fv)
  try:
    fv([prog, *argv])
  except flags.Error as e:
    raise ValueError(f"{prog}: {e} (see {prog} --help).") from None
  return fv


def report_results(
    workdir: str,
    heading: str,
    table: str,
    start: float | None = None,
    cpu_start: os.times_result | None = None,
) -> None:
  """How every quickstart ends: prints `heading`, the Markdown `table` and the wall time since
  `start` (and CPU time since `cpu_start`, when given), and writes the table to
  `<workdir>/results.md`."""
  import time  # pylint: disable=g-import-not-at-top

  tail = ""
  if start is not None:
    tail = f"\n\nTotal wall time: {time.time() - start:.0f} s"
    if cpu_start is not None:
      now = os.times()
      cpu_minutes = (now.user + now.system - cpu_start.user - cpu_start.system) / 60
      tail += f"; CPU time: {cpu_minutes:.1f} min"
  print(f"\n{heading}\n\n{table}{tail}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")


# ------------------------------------------------------------------------------ one-line errors

# What a user can fix (bad flags, config, data, paths, workdir, a diverged run): one line, exit 2.
# ConfigError, DataError, WorkdirError and the CLIs' own checks are ValueErrors;
# NonFiniteLossError is a FloatingPointError.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FileExistsError,
    FloatingPointError,
)
EXIT_USER_ERROR = 2


class RunInterrupted(RuntimeError):
  """A run stopped early by Ctrl-C / SIGTERM (its checkpoint kept); CLIs exit 130 with its
  one-line message (trainer.Interrupted is one)."""


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells expect of a Ctrl-C'd program
MAX_ERROR_CHARS = 600
_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "--helpfull", "--helpxml", "-h")


def one_line(error: BaseException | str, limit: int = MAX_ERROR_CHARS) -> str:
  """`error`'s message on one line (line breaks joined with "; "), cut at `limit` characters
  with a pointer to --verbosity=1, which shows it whole."""
  text = str(error) if not isinstance(error, BaseException) or str(error) else type(error).__name__
  if (
      isinstance(
          error,
          (
              FileNotFoundError,
              PermissionError,
              NotADirectoryError,
              IsADirectoryError,
              FileExistsError,
          ),
      )
      and getattr(error, "filename", None)
      and error.strerror
  ):
    text = f"{error.strerror}: {error.filename}"
  parts = [p.strip() for p in text.splitlines() if p.strip()]
  text = "; ".join(parts)
  if len(text) > limit:
    text = (
        text[:limit].rstrip()
        + f"... ({len(text) - limit} more characters; --verbosity=1 shows all)"
    )
  return text


def user_error(error: BaseException, prog: str | None = None) -> None:
  """Prints `error` as one line on stderr and exits 2; with --verbosity >= 1 re-raises it (the
  full traceback)."""
  if verbosity() >= 1:
    raise error
  print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _asks_help(argv: Sequence[str]) -> bool:
  return any(a.split("=", 1)[0] in _HELP_FLAGS for a in argv[1:])


def run_app(
    main: Callable[[list[str]], Any],
    *,
    flags_parser: Callable[[list[str]], Any] | None = None,
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> None:
  """`absl.app.run(main)` for a jaxmilab CLI: flag mistakes, `app.UsageError`s and `user_errors`
  raised by `main` are one line on stderr with exit code 2 (the traceback with --verbosity=1);
  --help exits 0; Ctrl-C outside a training loop is one line with exit code 130."""
  from absl import app  # pylint: disable=g-import-not-at-top

  parse = flags_parser or (lambda argv: flags.FLAGS(argv))

  def parser(argv):
    try:
      return parse(argv)
    except flags.Error as e:
      prog = os.path.basename(argv[0]) if argv else "jaxmilab"
      print(f"error: {one_line(e)} (see {prog} --help)", file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)
    except app.UsageError as e:
      print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)
    except SystemExit as e:
      if e.code == 1 and _asks_help(argv):  # absl's --help exits 1
        sys.exit(0)
      raise

  def wrapped(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      if verbosity() >= 1:
        raise
      print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)
    except RunInterrupted as e:
      if verbosity() >= 1:
        raise
      print(f"stopped: {one_line(e)}", file=sys.stderr, flush=True)
      sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
      if verbosity() >= 1:
        raise
      print(
          "interrupted (Ctrl-C); checkpoints already written are kept.", file=sys.stderr, flush=True
      )
      sys.exit(EXIT_INTERRUPTED)
    except user_errors as e:  # pylint: disable=catching-non-exception
      user_error(e)

  app.run(wrapped, flags_parser=parser)


# ----------------------------------------------------------------------- training progress lines

# The eval metrics a console line shows (the first four present, in this order); every metric is
# in metrics.jsonl and TensorBoard.
HEADLINE_METRICS = (
    "psnr",
    "ssim",
    "accuracy",
    "mIoU",
    "dice",
    "hd95",
    "top1_loc",
    "gt_known_loc",
    "MaxBoxAccV2",
    "PxAP",
    "loss",
)


def headline(scalars: Mapping[str, Any], limit: int = 4) -> dict[str, float]:
  """The few headline metrics of an eval row: HEADLINE_METRICS present, else the first plain
  (no "/") keys."""
  skip = ("step", "split", "eval_seconds", "steps_per_sec", "uptime")
  picked = {k: scalars[k] for k in HEADLINE_METRICS if k in scalars}
  if not picked:
    picked = {k: scalars[k] for k in sorted(scalars) if "/" not in k and k not in skip}
  return dict(list(picked.items())[:limit])


def format_value(value: Any) -> str:
  try:
    v = float(value)
  except (TypeError, ValueError):
    return str(value)
  if v != v or v in (float("inf"), float("-inf")):
    return str(v)
  if v == 0 or 1e-3 <= abs(v) < 1e5:
    return f"{v:.4g}"
  return f"{v:.3e}"


def format_metrics(scalars: Mapping[str, Any]) -> str:
  return ", ".join(f"{k} {format_value(v)}" for k, v in scalars.items())


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _interactive() -> bool:
  """A terminal or a notebook: where a progress bar redraws in place."""
  if "ipykernel" in sys.modules:
    return True
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


def _tqdm():
  """tqdm's notebook widget where ipywidgets is installed (Colab), else its text bar (tqdm.auto
  would fall back to the text bar too, with an "IProgress not found" warning in the output)."""
  # pylint: disable=g-import-not-at-top
  if "ipykernel" in sys.modules:
    try:
      import ipywidgets  # noqa: F401  pylint: disable=unused-import
      from tqdm.notebook import tqdm

      return tqdm
    except ImportError:
      pass
  from tqdm import tqdm

  return tqdm


class ProgressWriter:
  """A clu MetricWriter in front of the run's writer (TensorBoard + metrics.jsonl): everything is
  passed on, and the console gets one line per log interval (step/total, loss, steps/s, ETA; a
  progress bar instead in a terminal or notebook), a compact line per evaluation (the headline
  metrics; the rest stay in metrics.jsonl) and one line for the compile. Lead process only
  (`enabled`); the trainer prints the closing line (`closing_line`).
  """

  def __init__(
      self,
      writer,
      *,
      total_steps: int,
      start_step: int,
      enabled: bool = True,
      bar: bool | None = None,
      stream=None,
  ):
    self._writer = writer
    self.total, self.enabled = int(total_steps), enabled
    self._stream = stream
    self._last = (int(start_step), time.perf_counter())
    self._rate: float | None = None
    self.last_train: dict[str, Any] = {}
    self.last_eval: dict[str, Any] = {}
    self._bar = None
    if enabled and (bar if bar is not None else _interactive()) and start_step < total_steps:
      self._bar = _tqdm()(
          total=self.total, initial=int(start_step), unit="step", dynamic_ncols=True, desc="train"
      )

  def _print(self, line: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, file=self._stream or sys.stdout, flush=True)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    self._writer.write_scalars(step, scalars)
    by_split: dict[str, dict[str, Any]] = {}
    for name, value in scalars.items():
      split, _, key = name.partition("/")
      by_split.setdefault(split if key else "train", {})[key or name] = value
    train, evals, compiled = (
        by_split.get("train", {}),
        by_split.get("eval"),
        by_split.get("compile"),
    )
    if "loss" in train:
      self._train_line(int(step), train)
    if evals:
      self.last_eval = {"step": int(step), **evals}
      self._print(
          f"eval  step {step}/{self.total}: {format_metrics(headline(evals))}"
          f" (all {len(evals)} metrics in metrics.jsonl)"
      )
    if compiled and "train_step_seconds" in compiled:
      self._last = (self._last[0], time.perf_counter())  # steps/s counts from here
      self._print(f"compiled the train step in {float(compiled['train_step_seconds']):.1f} s")

  def _train_line(self, step: int, train: Mapping[str, Any]) -> None:
    self.last_train = {"step": step, **train}
    now = time.perf_counter()
    last_step, last_time = self._last
    if step > last_step and now > last_time:
      rate = (step - last_step) / (now - last_time)
      self._rate = rate if self._rate is None else 0.5 * self._rate + 0.5 * rate
    self._last = (step, now)
    loss = format_value(train["loss"])
    if self._bar is not None:
      self._bar.update(max(0, step - self._bar.n))
      self._bar.set_postfix_str(f"loss {loss}", refresh=True)
      return
    pct = 100.0 * step / max(self.total, 1)
    text = f"step {step}/{self.total} ({pct:.0f}%)  loss {loss}"
    if self._rate:
      eta = (self.total - step) / self._rate
      text += f"  {self._rate:.3g} steps/s  ETA {format_duration(eta)}"
    self._print(text)

  def load_last(self, records: Sequence[Mapping[str, Any]]) -> None:
    """The newest train row with a loss and the newest eval row of metrics.jsonl (a run that
    had nothing left to train wrote none this time)."""
    for r in records:
      if r.get("split") == "train" and "loss" in r:
        self.last_train = dict(r)
      elif r.get("split") == "eval":
        self.last_eval = {k: v for k, v in r.items() if k not in ("split",)}

  def closing_line(
      self,
      workdir: str,
      step: int,
      checkpoint: str | None,
      *,
      already_complete: bool = False,
      stopped: str | None = None,
  ) -> str:
    """The run's last line: final (or latest) metrics and where its checkpoint is."""
    self.close_bar()
    metrics = {}
    if self.last_train.get("loss") is not None:
      metrics["loss"] = self.last_train["loss"]
    metrics.update(headline({k: v for k, v in self.last_eval.items() if k != "step"}))
    shown = format_metrics(metrics) or "no metrics logged"
    where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
    if already_complete:
      return (
          f"already complete at step {step} of {self.total}: {shown}; {where} (raise "
          f"--config.total_steps to train on)"
      )
    if stopped:
      return (
          f"stopped at step {step} of {self.total} ({stopped}): {shown}; {where}; re-run the "
          f"same command to resume"
      )
    return f"done: step {step}/{self.total}: {shown}; {where}; metrics in {workdir}/metrics.jsonl"

  def close_bar(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __getattr__(self, name):  # write_images, flush, close, ...: the wrapped writer's
    return getattr(self._writer, name)
