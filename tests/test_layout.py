"""The package's layers import only downwards (docs/design.md "Modules"), with no cycles, and the
config layer loads without JAX (experiment files stay fast to load)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "igc_jax"
# Lowest first; a module may import its own layer and the layers before it, never a later one.
LAYERS = ["errors", "configs", "igc", "models", "data", "mxnet", "training", "tools"]
TOOLS = {"main", "evaluate", "summary", "sweep", "report", "convert_mxnet", "compile", "cli",
         "__init__"}


def layer_of(module: str) -> str:
    parts = module.split(".")[1:]  # drop "igc_jax"
    if not parts or parts[0] in TOOLS:
        return "tools"
    return parts[0]


def imports(path: Path) -> set[str]:
    """igc_jax modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("igc_jax"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
            if node.module != "igc_jax":  # `from igc_jax import x` imports only x
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("igc_jax")}
    return found


def test_layers_import_only_downwards():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = LAYERS.index(layer_of(module))
        for target in imports(path):
            layer = layer_of(target)
            if layer in LAYERS and LAYERS.index(layer) > own:
                bad.append(f"{module} ({layer_of(module)}) imports {target} ({layer})")
    assert not bad, bad


def test_configs_and_experiments_load_without_jax():
    code = ("import sys\nfrom igc_jax import configs\n"
            "configs.load_config('experiments/imagenet_l16m16.py')\n"
            "configs.load_config('experiments/cifar10_igc.py:L24M2,D20')\n"
            "heavy = [m for m in ('jax', 'flax', 'grain', 'PIL', 'tensorflow_datasets')"
            " if m in sys.modules]\nassert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
