"""Test-session settings: parallel test processes, and the compilation cache in a temporary folder.

``python -m pytest`` runs the test files in parallel processes (pytest-xdist,
``-n auto --dist loadfile`` in pyproject.toml: every file in one process, so its module
fixtures and cached fits are built once); :func:`pytest_xdist_auto_num_workers` caps them
at 4, since each process holds its own JAX runtime and compiled programs. ``-n 0`` runs
everything in one process.

The CLI and ``load_posterior`` turn on JAX's persistent compilation cache
(:func:`bmsbi.enable_compilation_cache`); a test run must not fill the user's
``~/.cache/bmsbi``. Subprocesses started by the tests inherit the variable. The folder
is removed when the test session ends.
"""

import atexit
import os
import shutil
import tempfile

if "BMSBI_COMPILATION_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="bmsbi-test-jax-cache-")
    os.environ["BMSBI_COMPILATION_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


import gc

import pytest


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one process per core, at most 4 (and at least 1)."""
    return max(1, min(4, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free JAX's compiled programs after each test module.

    One pytest process compiles thousands of programs; kept all session they grow its
    memory until XLA fails late in the run (the clean-clone CI of 2026-12-06 crashed three
    times in tests/test_trials.py, inside XLA compile or cache-serialise calls).
    """
    yield
    import jax

    jax.clear_caches()
    gc.collect()
