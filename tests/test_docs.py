"""The generated docs are current: docs/config.md is what the config schema says."""
from __future__ import annotations

import subprocess
import sys

from run_utils import ROOT


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
