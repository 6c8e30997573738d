"""Writing a generated doc, or checking that it is current (the tools' `--check`, run by tests)."""
from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(path: Path, text: str, check: bool, command: str) -> int:
    """With `check`: 1 (and one line naming `command`) if `path` does not hold `text`, else 0.
    Without: write `text` to `path`."""
    if check:
        if (path.read_text() if path.exists() else "") != text:
            print(f"{path} is out of date: run {command}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0
