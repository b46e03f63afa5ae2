r"""Command line entry point.

  python -m jaxmilab.main --config=configs/dcpt.py:smoke --workdir=/tmp/run \
      [--config.total_steps=100 ...]

Re-running on the same workdir resumes from its newest checkpoint. Multi-host
runs (TPU pods, SLURM) pass --distributed (auto-detected cluster) or the explicit
--coordinator_address / --num_processes / --process_id flags.
"""

from __future__ import annotations

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/<exp>.py:<variant>", lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, metrics.jsonl, TensorBoard events.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for jax.distributed.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for jax.distributed.")
flags.DEFINE_integer("process_id", None, "This process's index, for jax.distributed.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax(std_logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the console (warnings still pass)."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietOrbax())
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.coordinator_address or FLAGS.distributed:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  from jaxmilab import trainer  # pylint: disable=g-import-not-at-top
  logging.info("JAX process %d/%d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
