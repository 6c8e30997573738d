"""A built wheel carries every file the package reads at run time, and nothing of the checkout
else.

What the code reads is found by reading the code: every use of `__file__` (or
`importlib.resources`) in igc_jax/ must be a `Path(__file__).with_name("<file>")` or
`Path(__file__).parent / "<file>"` this test understands, so a new kind of data file cannot slip
past it. The wheel is built with pip from a copy of the package, as `.ci/run` builds it (a stale
build/ of the checkout cannot leak into it); `.ci/run` also installs it outside the checkout and
trains with mode `native`.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "igc_jax"


def _mentions_file(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "__file__" for n in ast.walk(node))


def _data_files_of(path: Path) -> tuple[set[str], list[str]]:
    """The wheel paths of the data files one module opens beside itself, and the `__file__` or
    importlib.resources uses this test does not understand (as 'file:line')."""
    tree = ast.parse(path.read_text())
    here = path.parent.relative_to(ROOT).as_posix()
    found: set[str] = set()
    understood: set[int] = set()
    for node in ast.walk(tree):
        name = None
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "with_name" and _mentions_file(node.func.value)):
            name = node.args[0]
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
              and isinstance(node.left, ast.Attribute) and node.left.attr == "parent"
              and _mentions_file(node.left)):
            name = node.right
        if name is not None and isinstance(name, ast.Constant) and isinstance(name.value, str):
            found.add(f"{here}/{name.value}")
            understood |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    unknown = [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree)
               if (isinstance(n, ast.Name) and n.id == "__file__"
                   or isinstance(n, ast.Attribute) and n.attr in ("files", "read_text")
                   and "resources" in ast.unparse(n.value))
               and n.lineno not in understood]
    return found, unknown


def runtime_data_files() -> set[str]:
    """Every non-Python file the package opens from its own directory, as wheel paths."""
    found: set[str] = set()
    unknown: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        files, other = _data_files_of(path)
        found |= files
        unknown += other
    assert not unknown, f"uses of __file__/importlib.resources this test cannot follow: {unknown}"
    return found


def build_wheel(out: Path) -> Path:
    """The project's wheel, built by pip from a clean copy of the checkout's package."""
    src = out / "src"
    shutil.copytree(PACKAGE, src / "igc_jax",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "-w", str(out / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (out / "dist").glob("igc_jax-*.whl")
    return wheel


def test_the_code_opens_its_cpp_kernels():
    """The scan finds what mode `native` compiles (so the comparison below is not vacuous)."""
    assert "igc_jax/igc/native/igc_kernels.cc" in runtime_data_files()


def test_wheel_holds_every_module_and_exactly_the_files_the_code_opens(tmp_path):
    names = set(zipfile.ZipFile(build_wheel(tmp_path)).namelist())
    package = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    modules = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert {n for n in package if n.endswith(".py")} == modules
    assert {n for n in package if not n.endswith(".py")} == runtime_data_files()
