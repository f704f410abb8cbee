"""Test-session settings: parallel test processes, and the compilation cache in a temporary folder.

``python -m pytest`` runs the test files in parallel processes (pytest-xdist,
``-n auto --dist loadfile`` in pyproject.toml: every file in one process, so its module
fixtures and cached fits are built once); :func:`pytest_xdist_auto_num_workers` caps them
at 4, since each process holds its own JAX runtime and compiled programs. ``-n 0`` runs
everything in one process.

The CLI and ``load_posterior`` turn on JAX's persistent compilation cache
(:func:`bmsbi.enable_compilation_cache`); a test run must not fill the user's
``~/.cache/bmsbi``. The parallel test processes and the subprocesses the tests start
inherit the variable (one folder for the whole run). The folder
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
    """``-n auto``: one process per core this process may run on, at most 4 (and at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


# The files that take longest (minutes each on 2 cores), handed out first so that no
# process is left running one of them after the others have finished.
_LONGEST_FIRST = ("test_notebooks.py", "test_npe.py", "test_joint_prior.py", "test_recording.py",
                  "test_nle_nre.py", "test_empirical.py", "test_cold_start.py", "test_sequential.py", "test_trials.py",
                  "test_byo_model.py", "test_recordings.py")


def pytest_collection_modifyitems(session, config, items):
    """Longest files first (the rest in their usual order); the order of tests in a file is kept."""
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
