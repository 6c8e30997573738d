"""Run a sweep: one `igc_jax.main` process per named point, each in its own sub-workdir.

A sweep file in `experiments/` is an ordinary config file (`get_config(arg)`) that also defines
`get_sweep() -> list[(name, overrides)]`; `get_config(name)` is the base config with that point's
overrides applied (`point_config` below), so one point runs alone as
`python -m igc_jax.main --config=<sweep file>:<name> --workdir=<root>/<name>`.

    python -m igc_jax.sweep --config=experiments/cifar100_lm_sweep.py --workdir=/tmp/lm \\
        [--dry_run] [--only=L40M2,L64M1] [--config.num_train_steps=1000 ...]

runs the points one after another (that exact command per point, with the `--config.*` flags
passed through, under this interpreter), skips a point whose `status.json` says "finished" at
all its steps or that another process is running now (status "running" with a fresh heartbeat,
`igc_jax.training.status`) and simply re-runs any other (the trainer resumes from its
checkpoint). A failed point does not stop the sweep; a preempted one does. `--dry_run` prints
the commands, one line per point, for a cluster launcher. The root may be a `gs://` path (read
through `etils.epath`).
"""
from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType

import ml_collections
from absl import flags

from igc_jax import configs, errors
from igc_jax.cli import parse_tool_flags
from igc_jax.errors import UserError

FINISHED = "finished"
# Names become directory names, `--only` items and the `:arg` of `--config=file:arg`.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

Point = tuple[str, dict]

# This tool's own flags (`igc_jax.cli`); the `--config.*` overrides pass through, unparsed.
FLAGS = flags.FlagValues()
flags.DEFINE_string("config", None, "sweep file, e.g. experiments/cifar100_lm_sweep.py",
                    flag_values=FLAGS)
flags.DEFINE_string("workdir", None, "root; each point runs in <workdir>/<name>",
                    flag_values=FLAGS)
flags.DEFINE_bool("dry_run", False, "print one igc_jax.main command per point, run none",
                  flag_values=FLAGS)
flags.DEFINE_string("only", "", "comma-separated point names (default: all)", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping) -> ml_collections.ConfigDict:
    """A copy of `config` with flat dotted overrides ({"model.L": 40}) applied.

    Every key must name an existing field (a typo must not silently start a wrong run). A mapping
    value replaces that whole sub-config, which is how a point switches network: the `model.*`
    fields are the chosen network's constructor arguments and differ between networks.
    """
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                missing = ".".join(parents[:depth + 1])
                raise UserError(f"override {key!r}: the config has no field {missing!r}")
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise UserError(f"override {key!r}: the config has no field {key!r}")
        is_tree = isinstance(value, (Mapping, ml_collections.ConfigDict))
        node[leaf] = ml_collections.ConfigDict(dict(value)) if is_tree else value
    return config


def check_points(points: Sequence[Point]) -> None:
    """Names unique and usable as directory names; raise a one-line UserError otherwise."""
    seen = set()
    for name, overrides in points:
        if not _NAME.match(name):
            raise UserError(f"sweep point name {name!r} must match {_NAME.pattern}")
        if name in seen:
            raise UserError(f"sweep point name {name!r} appears twice")
        if not isinstance(overrides, Mapping):
            raise UserError(f"sweep point {name!r}: overrides must be a dict, "
                            f"got {type(overrides).__name__}")
        seen.add(name)


def point_config(base: ml_collections.ConfigDict, points: Sequence[Point], name: str | None,
                 ) -> ml_collections.ConfigDict:
    """The config of one named point (`name=None`: the base config itself)."""
    check_points(points)
    if name is None or name == "":
        return copy.deepcopy(base)
    by_name = dict(points)
    if name not in by_name:
        raise UserError(f"unknown sweep point {name!r}; valid: {', '.join(n for n, _ in points)}")
    return apply_overrides(base, by_name[name])


def load_sweep_module(path: str) -> ModuleType:
    module = configs.load_config_module(path)
    if not hasattr(module, "get_sweep"):
        raise UserError(f"{path} defines no get_sweep(); it is not a sweep file")
    return module


def sweep_points(path: str) -> list[Point]:
    points = list(load_sweep_module(path).get_sweep())
    check_points(points)
    return points


def select_points(points: Sequence[Point], only: Sequence[str] | None) -> list[Point]:
    """The points named in `only` (all when empty), in sweep order."""
    if not only:
        return list(points)
    names = [n for n, _ in points]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UserError(f"unknown sweep point(s) {', '.join(unknown)}; valid: {', '.join(names)}")
    return [p for p in points if p[0] in only]


def point_workdir(root: str, name: str) -> str:
    """`<root>/<name>`; plain string joining so that `gs://` roots stay intact."""
    return f"{root.rstrip('/')}/{name}"


def point_command(config_path: str, name: str, root: str, overrides: Sequence[str] = (),
                  python: str = "python") -> list[str]:
    """The `igc_jax.main` command of one point."""
    return [python, "-m", "igc_jax.main", f"--config={config_path}:{name}",
            f"--workdir={point_workdir(root, name)}", *overrides]


def read_status(workdir: str) -> dict | None:
    """The run's status.json, or None when absent or unreadable (a run killed mid-write)."""
    # Imported here: only needed when a sweep actually runs.
    from igc_jax.training.metrics_log import read_status as read

    return read(workdir)


def is_finished(workdir: str) -> bool:
    """Finished all its steps. A run stopped by `max_train_seconds` also says "finished" but at
    fewer steps than planned: it is not done, and running it again continues it."""
    status = read_status(workdir)
    if not status or status.get("status") != FINISHED:
        return False
    step, num_steps = status.get("step"), status.get("num_steps")
    return step is None or num_steps is None or step >= num_steps


def is_live(workdir: str) -> bool:
    """Running with a fresh heartbeat (another process is training it now). A "running" one
    whose heartbeat is stale died, and one without a heartbeat (written before status.json had
    one) was interrupted: running either again resumes it."""
    from igc_jax.training.status import run_state

    status = read_status(workdir)
    return run_state(status) == "running" and "heartbeat" in (status or {})


def check_overrides(overrides: Sequence[str]) -> None:
    """Only `--config.<field>=<value>` flags are passed through to every point."""
    for flag in overrides:
        if not re.match(r"^--config\.[A-Za-z_][\w.]*=", flag):
            raise UserError(f"unexpected argument {flag!r}; pass-through overrides look like "
                            "--config.field=value")


def run_sweep(config_path: str, root: str, *, only: Sequence[str] | None = None,
              overrides: Sequence[str] = (), dry_run: bool = False,
              run: Callable[[list[str]], int] | None = None,
              out: Callable[[str], None] | None = None) -> dict[str, str]:
    """Run (or print) every selected point in order; return name → outcome.

    Outcomes: "printed" (dry run), "skipped" (finished before), "running elsewhere" (live
    heartbeat), "ran", "failed (rc N)", "preempted". A failing point does not stop the others
    (they are independent runs); a preempted one stops the sweep, since the machine is going
    away (run it again to resume).
    """
    check_overrides(overrides)
    points = select_points(sweep_points(config_path), only)
    run = run or (lambda cmd: subprocess.run(cmd, check=False).returncode)
    out = out or (lambda line: print(line, flush=True))  # before the child's own output
    outcome = {}
    for name, _ in points:
        cmd = point_command(config_path, name, root, overrides)
        workdir = point_workdir(root, name)
        if dry_run:
            out(shlex.join(cmd))
            outcome[name] = "printed"
            continue
        if is_finished(workdir):
            out(f"[sweep] {name}: finished already, skipped")
            outcome[name] = "skipped"
            continue
        if is_live(workdir):
            out(f"[sweep] {name}: running elsewhere (its heartbeat is fresh), skipped")
            outcome[name] = "running elsewhere"
            continue
        out(f"[sweep] {name}: {shlex.join(cmd)}")
        rc = run([sys.executable, *cmd[1:]])
        status = read_status(workdir) or {}
        if status.get("status") == "preempted":
            outcome[name] = "preempted"
            out(f"[sweep] {name} was preempted; stopping the sweep (run it again to resume)")
            break
        outcome[name] = "ran" if rc == 0 else f"failed (rc {rc})"
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m igc_jax.sweep`'s arguments (sys.argv[1:] when None) → the exit status."""
    overrides = parse_tool_flags(FLAGS, argv, known_only=True)
    only = [n for n in FLAGS.only.split(",") if n]
    try:
        outcome = run_sweep(FLAGS.config, FLAGS.workdir, only=only, overrides=overrides,
                            dry_run=FLAGS.dry_run)
    except UserError as e:  # anything else is a bug: its traceback, exit 1
        return errors.report(str(e))
    if not FLAGS.dry_run:
        print("[sweep] " + ", ".join(f"{n}: {o}" for n, o in outcome.items()))
    done = ("printed", "skipped", "running elsewhere", "ran")
    return 0 if all(o in done for o in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
