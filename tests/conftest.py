"""Test-wide settings, set before JAX starts (subprocesses inherit them through the environment).

A persistent compilation cache: many tests train the same tiny network in fresh processes, and on
this CPU compiling it costs far more than running it.

Each run ends with the suite's wall time and one line naming the tests skipped for missing data or
packages (docs/testing.md).
"""
import os
import time
from pathlib import Path

import pytest

_CACHE = Path(__file__).resolve().parents[1] / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_sessionstart(session):
    session.config._igc_started = time.monotonic()


def _skip_reason(report) -> str:
    """The reason given to skip/skipif/importorskip, without pytest's 'Skipped: ' prefix."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, (tuple, list)) else str(longrepr).splitlines()[0]
    return reason.removeprefix("Skipped: ")


def skipped_line(reports) -> str:
    """One line naming every skipped test (a parametrised test once, a module skipped at import
    by its file) with the reason: data, packages or hardware this machine lacks."""
    by_reason: dict[str, list[str]] = {}
    for report in reports:
        name = report.nodeid.split("::", 1)[-1].split("[", 1)[0] if "::" in report.nodeid \
            else Path(report.nodeid).name
        names = by_reason.setdefault(_skip_reason(report), [])
        if name not in names:
            names.append(name)
    if not by_reason:
        return "no test skipped for missing data or packages"
    return "skipped for missing data or packages: " + "; ".join(
        f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())


@pytest.hookimpl(wrapper=True, tryfirst=True)    # the outermost: after pytest's own summary
def pytest_terminal_summary(terminalreporter, config):
    result = yield
    if hasattr(config, "workerinput"):          # a pytest-xdist worker: the controller reports
        return result
    started = getattr(config, "_igc_started", None)
    if started is not None:
        terminalreporter.write_line(f"suite wall time: {time.monotonic() - started:.0f} s")
    terminalreporter.write_line(skipped_line(
        r for r in terminalreporter.stats.get("skipped", []) if r.skipped))
    return result
