"""Every "spec §N" citation in the tree resolves to a section heading of docs/spec.md, and nothing
points at the spec's old location beside the checkout. Pure Python (no JAX)."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec.md"
SUFFIXES = {".py", ".md", ".ipynb"}
TEXT_SUFFIXES = SUFFIXES | {".toml", ".cfg", ".txt", ".sh", ".yml", ".yaml", ".json", ""}
SKIP_DIRS = {".git", "build", "runs", "__pycache__", ".pytest_cache", ".hypothesis", ".jax_cache",
             ".gl", "node_modules"}
# Built by concatenation so that this file does not match itself.
OLD_SPEC_PATH = "shared/reference/" + "igcv1" + ".md"

SECTION = r"§\s*\d+(?:\.\d+)*"
# "spec §4", "Spec §3's table", "spec §2, §3", "(spec §2 and §5)", a line break (and a `#`)
# between "spec" and "§".
SEPARATOR = r"\s*(?:,|and|or|&|–|-)\s*"
CITATION = re.compile(rf"\bspec(?:'s)?\s*(?:#\s*)?({SECTION}(?:{SEPARATOR}{SECTION})*)",
                      re.IGNORECASE)
NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s+§(\d+(?:\.\d+)*)\b", re.MULTILINE)


def tree_files(suffixes):
    """The repository's own files with these suffixes (no VCS metadata, venvs or build output)."""
    stack = [ROOT]
    while stack:
        for path in sorted(stack.pop().iterdir()):
            name = path.name
            if path.is_dir():
                if not (name in SKIP_DIRS or name.startswith((".venv", "workdir"))
                        or name.endswith(".egg-info")):
                    stack.append(path)
            elif path.suffix in suffixes:
                yield path


def text_of(path: Path) -> str:
    """A file's text; a notebook's cells joined, so a citation split over source lines counts."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".ipynb":
        cells = json.loads(text).get("cells", [])
        return "\n".join("".join(c.get("source", [])) for c in cells)
    return text


def cited_sections(text: str) -> list[tuple[int, str]]:
    """(line, section number) of every spec citation in `text`."""
    found = []
    for match in CITATION.finditer(text):
        for number in NUMBER.finditer(match.group(1)):
            line = text.count("\n", 0, match.start(1) + number.start()) + 1
            found.append((line, number.group(1)))
    return found


def spec_sections() -> set[str]:
    return set(HEADING.findall(SPEC.read_text(encoding="utf-8")))


def test_the_citation_pattern_reads_lists_and_line_breaks():
    text = "x (spec §2, §3)\nSpec §4's recipe; spec\n# §1.2 and §5\nthe paper's §9"
    assert cited_sections(text) == [(1, "2"), (1, "3"), (2, "4"), (3, "1.2"), (3, "5")]


def test_every_spec_citation_names_a_section_of_docs_spec_md():
    sections = spec_sections()
    missing = []
    for path in tree_files(SUFFIXES):
        if path == Path(__file__).resolve():
            continue  # its examples above are not citations
        for line, number in cited_sections(text_of(path)):
            if number not in sections:
                missing.append(f"{path.relative_to(ROOT)}:{line}: spec §{number}")
    # docs/spec.md's own cross-references ("§1", "(§3)") resolve too.
    for line_no, line in enumerate(SPEC.read_text(encoding="utf-8").splitlines(), 1):
        missing += [f"docs/spec.md:{line_no}: §{n}" for n in NUMBER.findall(line)
                    if n not in sections]
    assert not missing, (f"citations of sections that docs/spec.md does not have "
                         f"(its sections: {sorted(sections)}): {missing}")


def test_nothing_refers_to_the_spec_outside_the_repository():
    stale = [str(path.relative_to(ROOT)) for path in tree_files(TEXT_SUFFIXES)
             if path.stat().st_size < 2_000_000
             and OLD_SPEC_PATH in path.read_text(encoding="utf-8", errors="replace")]
    assert not stale, f"these files still point at ../{OLD_SPEC_PATH}; cite docs/spec.md: {stale}"
