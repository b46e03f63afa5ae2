r"""Command line entry point.

  python -m jaxmilab.main --config=configs/dcpt.py:smoke --workdir=/tmp/run \
      [--config.total_steps=100 ...]

Re-running on the same workdir resumes from its newest checkpoint; --mode=eval only
evaluates it (or config.method.init_from) without training. A workdir has one writer (a lock)
and one experiment: another config is refused before anything is written, unless
--config_change=allow (jaxmilab/workdir.py). Ctrl-C checkpoints at the next step and stops
(exit 130; a second Ctrl-C aborts at once); SIGTERM checkpoints at the next log step (exit 0).
Mistakes are one line on stderr with exit code 2 (--verbosity=1: the traceback). Multi-host
runs (TPU pods, SLURM) pass --distributed (auto-detected cluster) or the explicit
--coordinator_address / --num_processes / --process_id flags.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging

from jaxmilab import config_lib
from jaxmilab import console

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "config",
    None,
    "configs/<exp>.py:<variant> (from a checkout) or jaxmilab:<exp>:<variant> (from anywhere); "
    "override keys with --config.<key>=<value>. Run with --help to list the experiments.",
)
flags.DEFINE_string(
    "workdir",
    None,
    "Run folder: checkpoints/, metrics.jsonl, TensorBoard events; "
    "a local path or any etils.epath filesystem, e.g. gs://bucket/run.",
)
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "eval"],
    "train: train (resuming from the newest checkpoint) and evaluate. eval: only "
    "evaluate the newest checkpoint of --workdir, else config.method.init_from; no "
    'optimizer step; writes split "eval" rows to metrics.jsonl.',
)
flags.DEFINE_enum(
    "config_change",
    "refuse",
    ["refuse", "allow"],
    "What to do when --workdir's config.json names another experiment (model, "
    "method, data or optimizer keys differ): refuse (default, nothing is written) "
    "or allow (continue its checkpoints under the new config; the change is "
    "recorded in config_history.jsonl). Safe changes (total_steps, cadences, mesh) "
    "are always allowed and recorded.",
)
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (cluster auto-detection)."
)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for jax.distributed.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for jax.distributed.")
flags.DEFINE_integer("process_id", None, "This process's index, for jax.distributed.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDES: dict[str, str] = {}


def split_config_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates `--config.<key>=<value>` (or `--config.<key> <value>`) from the other flags."""
  rest, overrides = [], {}
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config.") :].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise app.UsageError(f"--config.{key} needs a value (--config.{key}=VALUE).")
        value = argv[i + 1]
        i += 1
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  # Component names first: a new model / method / dataset brings its own keys.
  ordered = dict(
      sorted(overrides.items(), key=lambda kv: kv[0].count(".") != 1 or not kv[0].endswith(".name"))
  )
  return rest, ordered


def _parse_flags(argv: list[str]) -> list[str]:
  rest, overrides = split_config_overrides(argv)
  _OVERRIDES.clear()
  _OVERRIDES.update(overrides)
  FLAGS["config"].help += "\nExperiments and variants:\n" + config_lib.describe_configs()
  return FLAGS(rest)


def load_config():
  """The --config with its --config.* overrides; exits with a one-line message on a mistake."""
  try:
    return config_lib.load(FLAGS.config, _OVERRIDES, string_values=True)
  except config_lib.ConfigError as e:
    user_error(e)


def user_error(error: Exception) -> None:
  """Prints `error` as one line and exits 2; with --verbosity >= 1 re-raises (full traceback)."""
  console.user_error(error)


class _QuietOrbax(std_logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the console (warnings still pass)."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  console.setup()  # libraries' INFO logs only with --verbosity=1
  config = load_config()  # Before JAX starts: a wrong key costs no device set-up.
  from jaxmilab import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  try:  # A workdir that is a file or not writable: one line before any device set-up.
    if FLAGS.mode == "train":
      workdir_lib.ensure_writable(FLAGS.workdir)
    elif "://" not in FLAGS.workdir and os.path.isfile(FLAGS.workdir):
      raise workdir_lib.WorkdirError(f"--workdir={FLAGS.workdir} is a file, not a run folder.")
  except workdir_lib.WorkdirError as e:
    user_error(e)
  import jax  # pylint: disable=g-import-not-at-top

  if FLAGS.coordinator_address or FLAGS.distributed:
    jax.distributed.initialize(
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
    )
  from jaxmilab import compilation_cache  # pylint: disable=g-import-not-at-top

  compilation_cache.setup(FLAGS.workdir)  # a restart loads its compiled steps (module docstring)
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top
  from jaxmilab.data import base as data_base  # pylint: disable=g-import-not-at-top

  logging.info(
      "JAX process %d/%d, local devices %s",
      jax.process_index(),
      jax.process_count(),
      jax.local_devices(),
  )
  try:
    if FLAGS.mode == "eval":
      trainer.evaluate_checkpoint(config, FLAGS.workdir)
    else:
      state = trainer.train_and_evaluate(config, FLAGS.workdir, config_change=FLAGS.config_change)
      if trainer.stopped_by() == "SIGINT" and int(jax.device_get(state.step)) < config.total_steps:
        sys.exit(console.EXIT_INTERRUPTED)  # the closing line said where it stopped
  except (config_lib.ConfigError, data_base.DataError) as e:
    user_error(e)
  except console.USER_ERRORS as e:
    user_error(e)


def run():
  """Console-script entry point (jaxmilab-train): one-line errors with exit code 2, --help 0."""
  console.run_app(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
