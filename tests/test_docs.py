"""The docs are current and what they show exists.

- docs/config.md is what the config schema says, docs/results.md what benchmarks/results/*.json
  say (both generated; `--check` of their generators);
- every command that README.md and docs/*.md show (`python -m <module> ...`, `python <script>.py
  ...`, `launch/<script>.sh ...`, in fenced code blocks and in inline code) names a module or
  script that exists, passes only flags that program defines, names config files that load with
  their `:arg`, and overrides only config fields (`--config.<field>=...`) that the config has;
- every relative link between them resolves, `#anchor`s included.

Each program's flags come from the program itself: its `--helpfull` (absl: igc_jax.main, compile,
evaluate, summary, sweep, report, convert_mxnet) or `--help` (argparse: the benchmarks and tools;
the launch scripts), run once per program in a subprocess. A program that parses no arguments
takes no flags.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from run_utils import ROOT

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_config_reference_is_generated_from_the_schema():
    r = subprocess.run([sys.executable, "tools/make_docs.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_config_reference_names_every_field_and_its_default():
    from igc_jax.configs import base_config
    text = (ROOT / "docs" / "config.md").read_text()
    flat = []

    def walk(node, prefix=""):
        for key, value in node.items():
            if hasattr(value, "items") and key != "model":
                walk(value, f"{prefix}{key}.")
            elif key != "model":
                flat.append((f"{prefix}{key}", value))

    walk(base_config())
    assert flat, "no fields"
    for key, value in flat:
        assert f"| `{key}` | `{value!r}` |" in text, key


def test_results_doc_is_generated_from_the_results_files():
    r = subprocess.run([sys.executable, "tools/make_results.py", "--check"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


# ---- the commands the docs show ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Command:
    doc: str                    # "README.md", "docs/tpu.md"
    line: int
    text: str                   # the command as shown, continuation lines joined
    program: tuple[str, str]    # ("module", "igc_jax.main") or ("script", "tools/make_docs.py")
    args: tuple[str, ...]

    def where(self) -> str:
        return f"{self.doc}:{self.line}: `{self.text}`"


PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"`([^`]+)`")
SEPARATORS = re.compile(r"\s(?:&&|\|\||;|\|)\s")


def code_lines(text: str) -> tuple[list[tuple[int, str]], str]:
    """(line number, logical line) of the fenced code blocks, `\\` continuations joined, and the
    text outside them (fenced lines blanked, so offsets keep their line numbers)."""
    fenced: list[tuple[int, str]] = []
    prose: list[str] = []
    inside, start, pending = False, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            prose.append("")
            continue
        if not inside:
            prose.append(line)
            continue
        prose.append("")
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        fenced.append((start, pending + line))
        pending = ""
    return fenced, "\n".join(prose)


def parse_commands(doc: str, number: int, text: str) -> list[Command]:
    """The python/launch-script commands in one shell line (several when chained)."""
    found = []
    shown = " ".join(text.split())
    for part in SEPARATORS.split(text):
        try:
            tokens = shlex.split(part, comments=True)
        except ValueError:            # an unbalanced quote in prose: plain words
            tokens = part.split()
        while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
            tokens = tokens[1:]       # VAR=value before the command
        if not tokens:
            continue
        if re.match(r"^(\./)?launch/[\w.-]+\.sh$", tokens[0]):
            found.append(Command(doc, number, shown, ("script", tokens[0].lstrip("./")),
                                 tuple(tokens[1:])))
            continue
        for i, token in enumerate(tokens):
            if not PYTHON.match(token):
                continue
            rest = tokens[i + 1:]
            if len(rest) >= 2 and rest[0] == "-m":
                found.append(Command(doc, number, shown, ("module", rest[1]),
                                     tuple(rest[2:])))
            elif rest and rest[0].endswith(".py"):
                found.append(Command(doc, number, shown, ("script", rest[0]),
                                     tuple(rest[1:])))
            break
    return found


def shown_commands(path: Path, text: str | None = None) -> list[Command]:
    """Every command a Markdown file shows: its fenced code lines and its inline code spans."""
    text = path.read_text() if text is None else text
    doc = path.relative_to(ROOT).as_posix() if path.is_absolute() else str(path)
    fenced, prose = code_lines(text)
    commands = [c for number, line in fenced for c in parse_commands(doc, number, line)]
    for m in INLINE.finditer(prose):
        span = " ".join(m.group(1).split())
        if PYTHON.match(span.split(" ", 1)[0]) or span.startswith("launch/"):
            number = prose.count("\n", 0, m.start()) + 1
            commands += parse_commands(doc, number, span)
    return commands


# ---- what each program accepts -----------------------------------------------------------------

# A flag definition line of `--help`/`--helpfull`: two spaces, then the flag (absl:
# `  --[no]dry_run: ...`, `  -?,--[no]help: ...`; argparse and the launch scripts:
# `  -h, --help            ...`, `  --budget-s BUDGET_S   ...`).
DEFINITION = re.compile(r"^  (-\S.*)$")
FLAG_NAME = re.compile(r"--(\[no\])?([A-Za-z0-9][\w.-]*)")


def flags_in_help(text: str) -> frozenset[str]:
    names: set[str] = set()
    for line in text.splitlines():
        m = DEFINITION.match(line)
        if not m:
            continue
        head = re.split(r": | {2,}", m.group(1), maxsplit=1)[0]
        for negatable, name in FLAG_NAME.findall(head):
            names.add(name)
            if negatable:
                names.add(f"no{name}")
    return frozenset(names)


@dataclasses.dataclass(frozen=True)
class Program:
    name: str                       # as the docs call it
    flags: frozenset[str] = frozenset()
    python: bool = True             # its `--config` takes `--config.<field>` overrides
    error: str = ""                 # why its flags could not be listed


def _source(program: tuple[str, str]) -> tuple[Path | None, str]:
    """The program's file in this repository (None: an installed module) or why there is none."""
    kind, name = program
    if kind == "script":
        path = ROOT / name
        return (path, "") if path.is_file() else (None, f"no such script {name}")
    for candidate in (ROOT / (name.replace(".", "/") + ".py"),
                      ROOT / name.replace(".", "/") / "__main__.py"):
        if candidate.is_file():
            return candidate, ""
    top = name.split(".")[0]
    if (ROOT / top).is_dir():      # a package of this repository without that module
        return None, f"no module {name} in this repository"
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    return None, ("" if spec is not None else f"no module named {name}")


@functools.lru_cache(maxsize=None)
def program(program: tuple[str, str]) -> Program:
    """The program's flags, from its own help (a subprocess, once per program)."""
    kind, name = program
    label = f"python -m {name}" if kind == "module" else name
    path, missing = _source(program)
    if missing:
        return Program(label, error=missing)
    if path is not None and path.suffix == ".sh":
        argv, python = ["bash", str(path), "--help"], False
    else:
        source = path.read_text() if path is not None else ""
        if path is None or "ArgumentParser" in source:
            help_flag = "--help"
        elif re.search(r"parse_absl_flags|parse_tool_flags|app\.run\(", source):
            help_flag = "--helpfull"
        else:                       # parses no arguments
            return Program(label)
        target = ["-m", name] if kind == "module" else [str(path)]
        argv, python = [sys.executable, *target, help_flag], True
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    try:
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    except subprocess.TimeoutExpired:
        return Program(label, error=f"`{' '.join(argv[1:])}` did not finish in 600 s")
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        return Program(label, error=f"its help (`{' '.join(argv[-1:])}`) failed with exit "
                                    f"{r.returncode}: " + " / ".join(tail))
    flags = flags_in_help(r.stdout)
    if python and help_flag == "--helpfull":
        from igc_jax.cli import HELP_FLAGS     # what igc_jax.cli answers before absl parses
        flags |= {f.lstrip("-") for f in HELP_FLAGS if f.startswith("--")}
    if not flags:
        return Program(label, error=f"no flags found in the output of `{argv[-1]}`")
    return Program(label, flags, python=python)


# ---- checking one command -----------------------------------------------------------------------

def _placeholder(value: str) -> bool:
    return any(mark in value for mark in ("<", ">", "...", "…", "{", "BUCKET"))


def _config_value(args: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(args):
            return args[i + 1]
    return None


def _load_config(spec: str | None):
    """The config a command runs (its `--config=file[:arg]`), base_config for a placeholder."""
    from igc_jax import configs
    if spec is None or _placeholder(spec):
        return configs.base_config()
    path, sep, arg = spec.partition(":")
    return configs.load_config(f"{ROOT / path}{sep}{arg}")


def _missing_field(config, dotted: str) -> str | None:
    node = config
    for i, part in enumerate(dotted.split(".")):
        if not hasattr(node, "keys"):
            return f"{'.'.join(dotted.split('.')[:i])} has no fields"
        if part not in node:
            where = ".".join(dotted.split(".")[:i]) or "the config"
            close = difflib.get_close_matches(part, list(node.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{where} has no field {part!r}{hint}"
        node = node[part]
    return None


def problems(command: Command) -> list[str]:
    """What is wrong with one shown command (empty: it exists, with every flag it passes)."""
    prog = program(command.program)
    if prog.error:
        return [f"{command.where()}: {prog.name}: {prog.error}"]
    args = [a.strip("[]") for a in command.args]
    # After a bare `--`, the flags go to the program it launches (a launch script's igc_jax.main):
    # only their config overrides are checked, against the command's config.
    cut = args.index("--") if "--" in args else len(args)
    own = [a for a in args[:cut] if a.startswith("--") and len(a) > 2]
    passed_on = [a for a in args[cut + 1:] if a.startswith("--") and len(a) > 2]
    found = []
    overrides = [a for a in own + passed_on if a.startswith("--config.")]
    for arg in own:
        name = arg[2:].split("=", 1)[0]
        if name.startswith("config.") and prog.python and "config" in prog.flags:
            continue
        if name not in prog.flags:
            close = difflib.get_close_matches(name, sorted(prog.flags), n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            found.append(f"{command.where()}: {prog.name} has no flag --{name}{hint}")
    if "config" in prog.flags and (overrides or _config_value(command.args)):
        spec = _config_value(command.args)
        try:
            config = _load_config(spec)
        except Exception as e:  # noqa: BLE001 - any failure to load is the finding
            return found + [f"{command.where()}: --config={spec} does not load: "
                            f"{type(e).__name__}: {e}"]
        for arg in overrides:
            missing = _missing_field(config, arg[len("--config."):].split("=", 1)[0])
            if missing:
                found.append(f"{command.where()}: {arg.split('=', 1)[0]}: {missing}")
    return found


def list_programs(commands: list[Command]) -> None:
    """The helps of the commands' programs, a few at a time (each is its own interpreter)."""
    wanted = sorted({c.program for c in commands})
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(program, wanted))


@pytest.mark.parametrize("doc", [p.relative_to(ROOT).as_posix() for p in DOC_FILES])
def test_every_command_the_docs_show_exists_with_its_flags(doc):
    commands = shown_commands(ROOT / doc)
    list_programs(commands)
    found = [p for c in commands for p in problems(c)]
    assert not found, "commands in the docs that would fail:\n" + "\n".join(found)


def test_the_command_scan_finds_the_readme_commands():
    readme = shown_commands(ROOT / "README.md")
    shown = {(c.program, c.args[:1]) for c in readme}
    assert (("module", "igc_jax.main"), ("--config=experiments/quickstart.py",)) in shown
    assert ("module", "pytest") in {c.program for c in readme}
    assert len(readme) >= 8, readme
    # a continuation line's flags belong to its command
    cifar = [c for c in readme if "cifar10_igc.py" in c.text]
    assert cifar and "--config.dataset.data_dir=../shared/data/cifar10" in cifar[0].args


def test_the_command_check_catches_a_misspelled_flag_field_config_or_program():
    text = "\n".join([
        "```bash",
        "python -m igc_jax.main --config=experiments/quickstart.py --wrokdir=/tmp/q \\",
        "    --config.batch_sise=3 --config.model.L=2",
        "python -m igc_jax.main --config=experiments/cifar10_igc.py:L24Q2,D20 --workdir=/tmp/q",
        "python -m igc_jax.no_such_tool --workdir=/tmp/q",
        "python tools/make_docs.py --chek",
        "```",
        "Prose with `python -m igc_jax.sweep --config=experiments/cifar100_lm_sweep.py --dryrun`.",
    ])
    found = "\n".join(p for c in shown_commands(Path("doc.md"), text) for p in problems(c))
    for expected in ("doc.md:2:", "has no flag --wrokdir (did you mean --workdir?)",
                     "--config.batch_sise: the config has no field 'batch_sise' "
                     "(did you mean 'batch_size'?)",
                     "cifar10_igc.py:L24Q2,D20 does not load",
                     "no module igc_jax.no_such_tool",
                     "tools/make_docs.py has no flag --chek",
                     "doc.md:8:", "has no flag --dryrun (did you mean --dry_run?)"):
        assert expected in found, f"{expected!r} not in:\n{found}"
    assert "--config.model.L:" not in found     # a real field of the quick start's model


def test_flags_are_read_from_each_kind_of_help():
    assert {"workdir", "config", "allow_config_change", "noallow_config_change",
            "helpfull"} <= program(("module", "igc_jax.main")).flags
    assert {"dry_run", "only", "help"} <= program(("module", "igc_jax.sweep")).flags
    assert {"check", "help"} <= program(("script", "tools/make_docs.py")).flags
    assert {"name", "tfds-data-dir", "dry-run"} <= program(("script", "launch/tpu_vm.sh")).flags


# ---- links --------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, prose = code_lines(path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose, re.M)}


def test_every_relative_link_between_the_docs_resolves():
    broken = []
    for path in DOC_FILES:
        _, prose = code_lines(path.read_text())
        for m in LINK.finditer(prose):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):       # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{prose.count(chr(10), 0, m.start()) + 1}"
            if not resolved.exists():
                broken.append(f"{where}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)
