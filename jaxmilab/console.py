"""Console set-up shared by every jaxmilab command line: quiet libraries, absl's --verbosity.

By default a CLI prints its own progress and metrics lines (jaxmilab's absl INFO logs, the
metrics clu's LoggingWriter logs for the trainer, and print()s) and, from the libraries (orbax,
grain, TensorFlow, jax, etils, ...), only warnings and errors: orbax alone logs dozens of INFO
lines per checkpoint save. `--verbosity=1` (absl's flag, accepted by every jaxmilab CLI) lets
every library's INFO through again. TensorFlow's C++ start-up line ("oneDNN custom operations
are on") is printed at its import regardless of TF_CPP_MIN_LOG_LEVEL in this TF version.

  def main(argv):
    console.setup()   # first thing in each CLI's main (after absl parsed the flags)
"""

from __future__ import annotations

import logging as std_logging
import os
from typing import Callable, Sequence

from absl import flags
from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Python loggers of libraries that log INFO through the standard logging module.
LIBRARY_LOGGERS = ("jax", "jax._src", "orbax", "grain", "tensorflow", "tensorflow_datasets",
                   "etils", "absl.testing", "clu", "flax", "optax", "urllib3", "PIL", "matplotlib")


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


def setup(level: int | None = None) -> bool:
  """Quiets library INFO logging unless `level` (default: --verbosity) >= 1. Idempotent.

  Returns True when the libraries were quieted. TensorFlow's C++ log level is set through
  TF_CPP_MIN_LOG_LEVEL, which only counts before TensorFlow is imported (respected if already set
  by the user).
  """
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


def parse_flags(define: Callable[[flags.FlagValues], None], argv: Sequence[str],
                prog: str) -> flags.FlagValues:
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


def report_results(workdir: str, heading: str, table: str, start: float | None = None,
                   cpu_start: os.times_result | None = None) -> None:
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

