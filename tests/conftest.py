"""Test-wide settings, set before JAX starts (subprocesses inherit them through the environment).

A persistent compilation cache: many tests train the same tiny network in fresh processes, and on
this CPU compiling it costs far more than running it.
"""
import os
from pathlib import Path

_CACHE = Path(__file__).resolve().parents[1] / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
