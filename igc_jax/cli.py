"""What every command-line tool shares: flag parsing and user-error reporting.

A bad flag, config override or config file is one line and exit 2 (`igc_jax.errors`); the tools
(`main`, `evaluate`, `summary`, `compile`, `sweep`, `report`, `convert_mxnet`) parse their absl
flags here. `main`, `evaluate`, `summary` and `compile` define theirs in absl's global registry
and run through `app.run`; `sweep`, `report` and `convert_mxnet`, whose `main(args)` is also
called in-process (tests, notebooks), keep theirs in a `FlagValues` of their own, so that they
never collide with another tool's `--config` or `--out` and each call starts from the defaults.
"""
from __future__ import annotations

import functools
import sys
import textwrap
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from igc_jax.errors import UserError, fail

if TYPE_CHECKING:
    from absl import flags as absl_flags

F = TypeVar("F", bound=Callable)


def check_config_flag(argv: list[str], name: str = "config") -> None:
    """A `--config=path[:arg]` that names no file is one line, not ml_collections' deferred
    OSError traceback at the config's first use."""
    import os
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            value = a.split("=", 1)[1]
        elif a == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        path = value.partition(":")[0]
        if not os.path.isfile(path):
            raise UserError(f"--{name}: config file {path!r} not found "
                            "(give experiments/<file>.py[:arg])")
        _check_overrides(argv, name, value)
        return


def _check_overrides(argv: list[str], name: str, spec: str) -> None:
    """Load the config file as the flag will (pure Python, no JAX), so that a UserError from its
    get_config stays one line and any other exception keeps its traceback (ml_collections folds
    both into a flags.Error); then `--config.a.b=v` naming no field is one line (ml_collections
    raises a bare KeyError)."""
    from igc_jax.configs import load_config
    config = load_config(spec)
    overrides = [a[len(name) + 3:].split("=", 1)[0] for a in argv if a.startswith(f"--{name}.")]
    for override in overrides:
        node = config
        for i, part in enumerate(override.split(".")):
            if not hasattr(node, "keys"):
                break
            if part not in node:
                where = ".".join(override.split(".")[:i]) or "the config"
                raise UserError(f"--{name}.{override}: {where} has no field {part!r}; it has "
                                f"{', '.join(sorted(node.keys()))}")
            node = node[part]


HELP_FLAGS = ("-h", "-?", "--help", "-help", "--helpshort", "--helpfull")


def config_help(argv: list[str], name: str = "config") -> str:
    """How `--config` works and every field with its value: those of the file `--config` names,
    else base_config's defaults (a tool's help must say how to set what it runs)."""
    from igc_jax.configs import base_config, load_config
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
    config = load_config(spec) if spec else base_config()
    intro = [f"--{name}=<file>[:arg]: an experiment file and the argument its get_config takes, "
             "e.g. experiments/cifar10_igc.py:L24M2,D20.",
             f"--{name}.<field>=<value>: overrides one field, e.g. --{name}.batch_size=128 "
             f"--{name}.model.M=4 (an unknown field or a bad value: one line, exit 2).",
             (f"The fields, as {spec} sets them:" if spec else
              f"The fields and their defaults (base_config; `--{name}=<file> --help` shows that "
              "file's values, model.* come from the experiment file; what each field means and "
              "allows: docs/config.md):")]
    fields = [f"  {key} = {value!r}" for key, value in _flat(config.to_dict())]
    return "\n".join(["", *(textwrap.fill(p, 100) for p in intro), *fields])


def _flat(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of a nested dict, in order: the override syntax's names."""
    out: list[tuple[str, object]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def print_help(argv: list[str], flag_values: absl_flags.FlagValues | None = None) -> None:
    """absl's usage (its --help exits 1, the status of a bug here), then how --config works when
    the tool has one (the tools with a config file use absl's global FLAGS); the caller exits 0."""
    from absl import app, flags
    if flag_values is None or flag_values is flags.FLAGS:
        app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True)
        if "config" in flags.FLAGS:
            print(config_help(argv))
    else:  # a tool's own flags, laid out as app.usage lays them out
        print(f"{sys.modules['__main__'].__doc__ or ''}\nflags:\n{flag_values.get_help()}")


def parse_absl_flags(argv: list[str], flag_values: absl_flags.FlagValues | None = None,
                     known_only: bool = False) -> list[str]:
    """absl flag parsing for a tool (into absl's global FLAGS unless `flag_values` is given): a
    bad flag, override or config file, or a UserError raised by a config file's get_config, is
    one line and exit 2; --help exits 0. Returns the program name and the arguments that are not
    flags (with `known_only`, the unknown flags too). A second parse starts from the defaults."""
    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        if any(a in HELP_FLAGS for a in argv[1:]):
            print_help(argv, flag_values)
            raise SystemExit(0)
        if flag_values is flags.FLAGS:
            check_config_flag(argv)
        if flag_values.is_parsed():
            flag_values.unparse_flags()
        return flag_values(argv, known_only=known_only)
    except UserError as e:
        fail(str(e))
    except flags.Error as e:  # an unknown flag, a value of the wrong type, a missing flag
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        fail(lines[0] if lines else type(e).__name__)
    raise AssertionError("unreachable")


def parse_tool_flags(flag_values: absl_flags.FlagValues, args: Sequence[str] | None = None,
                     known_only: bool = False) -> list[str]:
    """A tool's own flags parsed from its arguments (sys.argv[1:] when None), as
    `parse_absl_flags` parses them; returns the arguments that are not flags."""
    args = sys.argv[1:] if args is None else list(args)
    return parse_absl_flags([sys.argv[0], *args], flag_values, known_only)[1:]


def reports_user_errors(fn: F) -> F:
    """Wrap a CLI entry point: a UserError becomes one line and exit 2; anything else propagates
    (a traceback, exit 1)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e))
    return wrapper  # type: ignore[return-value]
