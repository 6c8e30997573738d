"""Building a C++ source into a cached shared library on first use (the `native` IGC kernels,
the data pipeline's resample kernel): one builder, so both cache and fail the same way.

The library is compiled with the system's C++ compiler (`$CXX`, else g++ or c++) and cached in
`$IGC_JAX_NATIVE_CACHE` (default ~/.cache/igc_jax/native) under a name that hashes the source,
compiler, flags, the caller's extra key (e.g. the jaxlib it links against) and the CPU. It is
written beside its final name and renamed, so processes building it at once (grain's workers,
pytest's) never load a half-written file.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
from typing import Sequence


class NativeUnavailable(RuntimeError):
    """A C++ kernel could not be built or loaded here."""


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_path(source: pathlib.Path, compiler: str, flags: Sequence[str],
                 key: Sequence[str] = ()) -> pathlib.Path:
    """Where the library of `source` built with this compiler, flags and `key` is cached."""
    text = "\n".join([source.read_text(), compiler, " ".join(flags), *key, platform.machine(),
                      _cpu_model()])
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("IGC_JAX_NATIVE_CACHE",
                                        pathlib.Path.home() / ".cache" / "igc_jax" / "native"))
    return cache / f"{source.stem}-{digest}.so"


def build(source: pathlib.Path, flags: Sequence[str], key: Sequence[str] = (),
          args: Sequence[str] = ()) -> pathlib.Path:
    """The cached shared library of `source` (compiled now if it is not cached; `args`, e.g.
    include directories, are passed to the compiler, `key` names what they depend on); a
    NativeUnavailable saying why when there is no compiler or the compile fails."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise NativeUnavailable("no C++ compiler found (set $CXX or install g++)")
    path = library_path(source, compiler, flags, key)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *flags, *args, str(source), "-o", tmp],
                              capture_output=True, text=True)
    except OSError as e:  # $CXX names no runnable program
        os.unlink(tmp)
        raise NativeUnavailable(f"cannot run the C++ compiler {compiler}: {e.strerror or e}")
    if proc.returncode:
        os.unlink(tmp)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise NativeUnavailable(f"compiling {source.name} with {compiler} failed "
                                f"(exit {proc.returncode}): {last}")
    os.replace(tmp, path)
    return path
