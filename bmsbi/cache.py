"""JAX's persistent compilation cache for bmsbi: compile a posterior's sampler once per machine.

A saved posterior is compiled again in every new Python process (``bmsbi infer`` pays
several seconds of XLA compilation per call). With the persistent cache on, the compiled
programs are written to a folder on disk and read back by the next process instead.

:func:`enable_compilation_cache` turns it on. The ``bmsbi`` command does so for every
verb, and :func:`bmsbi.load_posterior` does so before a posterior is used in a Python
session. The folder is, in order:

1. the ``path`` passed to :func:`enable_compilation_cache`;
2. the environment variable ``BMSBI_COMPILATION_CACHE``: ``0`` (or ``off``, ``false``,
   ``no``) turns the cache off, ``1`` (or ``on``, ``true``, ``yes``) or empty keeps the
   default folder, anything else is the folder to use;
3. ``$XDG_CACHE_HOME/bmsbi/jax``, or ``~/.cache/bmsbi/jax`` without ``XDG_CACHE_HOME``.

A cache folder already configured in ``jax.config`` (``jax.config.update(
"jax_compilation_cache_dir", ...)`` or the ``JAX_COMPILATION_CACHE_DIR`` environment
variable), or a cache switched off with ``jax_enable_compilation_cache=False``, is left
exactly as it is, thresholds included. Otherwise bmsbi also lowers jax's thresholds
(``jax_persistent_cache_min_compile_time_secs`` 1 s → 0, and
``jax_persistent_cache_min_entry_size_bytes`` to -1, no size limit) when they are still at
jax's defaults, so every program a posterior compiles is cached, not only those that
take over a second. These settings are process-wide: programs compiled by your own code
in the same process are cached too.

The cache is an optimisation only: results are identical with and without it. It grows
without bound (under a MB per posterior and recording shape); delete the folder to clear it.
Share it only with users you trust (jax executes what it finds there).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enable_compilation_cache", "default_cache_dir", "ENV_VAR"]

# The environment variable that switches the cache off (0/off/false/no) or names its folder.
ENV_VAR = "BMSBI_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")
_ON = ("", "1", "on", "true", "yes")
# jax's own defaults for the two thresholds (jax 0.10); only these are replaced.
_JAX_DEFAULT_MIN_COMPILE_TIME = 1.0
_JAX_DEFAULT_MIN_ENTRY_SIZE = 0
_enabled: str | None = None  # the folder this module set in jax.config, if any


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/bmsbi/jax``, or ``~/.cache/bmsbi/jax`` when ``XDG_CACHE_HOME`` is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bmsbi" / "jax"


def _requested(path) -> Path | None:
    """The folder asked for (``path``, else the environment variable, else the default), or ``None`` (off)."""
    if path is not None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise ValueError(f"path: expected a folder path (str or os.PathLike), got {path!r}")
        return Path(os.fspath(path)).expanduser()
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() in _ON:
        return default_cache_dir()
    return Path(value).expanduser()


def enable_compilation_cache(path=None) -> Path | None:
    """Turn on JAX's persistent compilation cache in a bmsbi folder, unless configured otherwise.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The cache folder (created if missing). Default: the ``BMSBI_COMPILATION_CACHE``
        environment variable (``0`` turns the cache off, a path chooses the folder), else
        ``$XDG_CACHE_HOME/bmsbi/jax`` or ``~/.cache/bmsbi/jax``.

    Returns
    -------
    pathlib.Path or None
        The cache folder now in use: ``path``/the default, or the folder already
        configured in ``jax.config`` (kept, never replaced). ``None`` when the cache is
        off: ``BMSBI_COMPILATION_CACHE=0``, ``jax_enable_compilation_cache`` set to
        ``False``, or (``path`` not given) a folder that cannot be created.

    Raises
    ------
    ValueError
        ``path`` is not a path, is a file, or cannot be created.

    Examples
    --------
    >>> import bmsbi
    >>> bmsbi.enable_compilation_cache("/tmp/my-jax-cache")  # doctest: +SKIP
    PosixPath('/tmp/my-jax-cache')
    >>> post = bmsbi.load_posterior("hopf.bmsbi")  # compiled programs now reused across sessions  # doctest: +SKIP
    """
    global _enabled
    import jax

    folder = _requested(path)
    current = jax.config.jax_compilation_cache_dir
    if not jax.config.jax_enable_compilation_cache:
        return None  # switched off by the user
    if current is not None and current != _enabled:
        return Path(current)  # configured by the user: theirs to keep
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if path is None:
            return None  # an optimisation only: no cache rather than a failed command
        raise ValueError(f"path: cannot create the cache folder {os.fspath(path)!r} ({err})") from None
    if not folder.is_dir():
        raise ValueError(f"path: {os.fspath(folder)!r} is a file, expected a folder")
    resolved = str(folder.resolve())
    if current == resolved:
        return folder
    if jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_DEFAULT_MIN_COMPILE_TIME:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_persistent_cache_min_entry_size_bytes == _JAX_DEFAULT_MIN_ENTRY_SIZE:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_dir", resolved)
    _enabled = resolved
    # jax decides once per process whether a cache is used (at its first compilation);
    # start that decision again so programs compiled from now on are cached.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    return folder
