"""Train and evaluate a config.

    python -m igc_jax.main --config=experiments/<file>.py --workdir=<dir>

Thin on purpose: the logic lives in `igc_jax.training`. Exit status:

- 0: done, preempted (resume by running the same command), or already finished (nothing to do);
- 2: bad input (an `igc_jax.errors.UserError`: one line on stderr, no traceback), including a
  workdir that another live run holds (the line names its host, pid and start time);
- 3: the environment failed a write (no space left, permission lost, the object store refusing
  after its retries): one line naming the path, the cause and the intact checkpoint; status.json
  says "failed" with that line; rerun the same command once it is fixed;
- 1: diverged (one line) or a bug (any other exception, with its full traceback).
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from igc_jax.cli import parse_absl_flags
from igc_jax.errors import EXIT_ENVIRONMENT, EnvironmentFailure, UserError, fail, report

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs (local or gs://).")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir even though its saved model/dataset config differs.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs "
                    "outside Cloud TPU and SLURM (which need no flags).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def initialize_distributed() -> None:
    """jax.distributed: explicit flags, else auto-detected on Cloud TPU pods and SLURM jobs."""
    import jax
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif (int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
        jax.distributed.initialize()


def main(argv) -> None:
    del argv
    # After flag parsing, so --helpfull stays fast.
    from igc_jax.training import loop as train
    from igc_jax.training.validate import check_distributed_flags
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        check_distributed_flags(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        initialize_distributed()
        status = train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                          allow_config_change=FLAGS.allow_config_change)
    except (train.Preempted, train.AlreadyFinished) as e:
        print(str(e))
        sys.exit(0)
    except train.Diverged as e:
        fail(str(e), 1)
    except EnvironmentFailure as e:
        report(str(e), EXIT_ENVIRONMENT)
        # Not sys.exit: orbax's writer coroutines abandoned by the failed save would print their
        # "Exception ignored" tracebacks at interpreter shutdown (everything is closed already).
        sys.stdout.flush()
        os._exit(EXIT_ENVIRONMENT)
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        fail(str(e))
    print(summary_line(status))


def summary_line(status: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    note = f" ({status['message']})" if status["message"] else ""
    return (f"done: {status['step']} steps; test top-1 best {fmt(status['best_top1'])}, "
            f"final {fmt(status['final_top1'])}{note}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with bad flags, overrides and config files as one-line errors (exit 2)."""
    return parse_absl_flags(argv)


def run() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
