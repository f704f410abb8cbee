"""Test-session settings: the persistent compilation cache goes to a temporary folder.

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
