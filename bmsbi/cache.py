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

A posterior's sampler is also kept there as a :mod:`jax.export` program (subfolder
``exported``; :func:`exported_function`): a new process then reads the traced and lowered
sampler instead of tracing and lowering it again, which is most of what a cached ``bmsbi
infer`` spends after its imports. Such a program is keyed by everything its trace reads
(the caller's description of the object, the argument shapes, bmsbi's source files and the
versions of jax and the libraries bmsbi traces through), so a changed posterior, bmsbi or
jax exports again rather than reusing a stale program.

The cache is an optimisation only: results are identical with and without it. It grows
without bound (under a MB per posterior and recording shape); delete the folder to clear it.
Share it only with users you trust (jax executes what it finds there).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

__all__ = ["enable_compilation_cache", "default_cache_dir", "exported_function", "ENV_VAR"]

# The environment variable that switches the cache off (0/off/false/no) or names its folder.
ENV_VAR = "BMSBI_COMPILATION_CACHE"
_OFF = ("0", "off", "false", "no")
_ON = ("", "1", "on", "true", "yes")
# jax's own defaults for the two thresholds (jax 0.10); only these are replaced.
_JAX_DEFAULT_MIN_COMPILE_TIME = 1.0
_JAX_DEFAULT_MIN_ENTRY_SIZE = 0
_enabled: str | None = None  # the folder this module set in jax.config, if any
# Libraries whose code a posterior's trace runs through: their versions key exported programs.
_TRACED_LIBRARIES = ("jax", "jaxlib", "numpy", "equinox", "flowjax", "paramax", "numpyro", "optax")
_fingerprint: str | None = None  # bmsbi's sources and the libraries' versions, once per process
_exported: dict = {}  # digest -> jitted call of the exported program (None: cannot be exported)


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
    if path is None and current is not None:
        return Path(current)  # set up already (e.g. a folder passed earlier): a later default call keeps it
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


def _code_fingerprint() -> str:
    """SHA-256 of bmsbi's own source files and the versions of the libraries it traces through."""
    global _fingerprint
    if _fingerprint is None:
        from importlib import metadata

        h = hashlib.sha256()
        root = Path(__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        for lib in _TRACED_LIBRARIES:
            try:
                h.update(f"{lib}={metadata.version(lib)};".encode())
            except metadata.PackageNotFoundError:
                h.update(f"{lib}=-;".encode())
        _fingerprint = h.hexdigest()
    return _fingerprint


def _export_folder() -> Path | None:
    """``exported/`` in the cache folder bmsbi set up, or ``None`` (cache off, or the user's own folder)."""
    import jax

    if _enabled is None or jax.config.jax_compilation_cache_dir != _enabled \
            or not jax.config.jax_enable_compilation_cache:
        return None
    return Path(_enabled) / "exported"


def exported_function(name: str, fn: Callable, args: tuple, identity) -> Callable | None:
    """``fn`` as a :mod:`jax.export` program kept in the compilation cache, or ``None``.

    For a function whose trace is slow compared with its run (a posterior's sampler): the
    first process that calls it traces and lowers ``fn`` once, serialises the program to
    ``<cache>/exported/<name>-<digest>.jaxexport`` and calls it; every later process reads
    that file and calls it (XLA's compiled code then comes from the persistent
    compilation cache), skipping the trace. Results are identical to ``jax.jit(fn)``.

    Parameters
    ----------
    name : str
        A short name for the file (letters, digits, ``_``).
    fn : callable
        Pure, jittable ``fn(*args)``. Everything it reads besides ``args`` must be
        described by ``identity``.
    args : tuple
        The arguments (pytrees of arrays; PRNG keys allowed). Their tree structure, shapes
        and dtypes key the program.
    identity : JSON-serialisable
        Everything else the trace depends on (for a posterior: its class, prior, config,
        observation transform, the non-array parts of its network). bmsbi's own source
        files and the versions of jax and the traced libraries are added here.

    Returns
    -------
    callable or None
        ``call(*args)`` (same arguments, same outputs as ``fn``), or ``None`` when no
        bmsbi cache folder is in use (:func:`enable_compilation_cache`), the
        ``flatbuffers`` package that serialisation needs is missing, or ``fn`` cannot be
        exported; the caller then uses its own ``jax.jit``.

    Examples
    --------
    >>> call = exported_function("sampler", f, (params, key, x), {"kind": "demo"})  # doctest: +SKIP
    >>> out = (call or jax.jit(f))(params, key, x)  # doctest: +SKIP
    """
    import jax

    folder = _export_folder()
    if folder is None:
        return None
    leaves, treedef = jax.tree_util.tree_flatten(args)
    keys = [jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) for leaf in leaves]
    impls = [jax.random.key_impl(leaf) if k else None for leaf, k in zip(leaves, keys)]
    avals = [(tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves]
    described = json.dumps({"identity": identity, "tree": str(treedef), "avals": avals,
                            "keys": [None if i is None else str(i) for i in impls],
                            "x64": bool(jax.config.jax_enable_x64), "backend": jax.default_backend(),
                            "code": _code_fingerprint()}, sort_keys=True, default=str)
    digest = hashlib.sha256(described.encode()).hexdigest()[:40]
    if digest in _exported:
        call = _exported[digest]
    else:
        call = _exported[digest] = _load_or_export(folder / f"{name}-{digest}.jaxexport", fn, leaves,
                                                   treedef, keys, impls)
    if call is None:
        return None

    def run(*a):
        flat = jax.tree_util.tree_leaves(a)
        return call(*[jax.random.key_data(v) if k else v for v, k in zip(flat, keys)])

    return run


def _load_or_export(path: Path, fn: Callable, leaves: list, treedef, keys: list, impls: list) -> Callable | None:
    """The jitted call of the program at ``path``, exporting it there first when missing or unreadable."""
    import jax

    try:
        from jax import export
    except ImportError:  # pragma: no cover - jax.export ships with the pinned jax
        return None
    exp = None
    if path.is_file():
        try:
            exp = export.deserialize(bytearray(path.read_bytes()))
        except ImportError:  # flatbuffers missing
            return None
        except Exception:  # a damaged or foreign file: export it again below  # noqa: BLE001
            exp = None
    if exp is None:
        def flat(*arrays):
            restored = [jax.random.wrap_key_data(a, impl=i) if k else a for a, k, i in zip(arrays, keys, impls)]
            return fn(*jax.tree_util.tree_unflatten(treedef, restored))

        plain = [jax.random.key_data(v) if k else v for v, k in zip(leaves, keys)]
        try:
            exp = export.export(jax.jit(flat))(*plain)
            data = exp.serialize()
        except ImportError:  # flatbuffers missing
            return None
        except Exception:  # not exportable (e.g. a host callback): plain jit instead  # noqa: BLE001
            return None
        from .io import atomic_write

        try:
            atomic_write(path, lambda fh: fh.write(data))
        except (OSError, ValueError):  # an optimisation only: an unwritable cache is no error
            pass
    return jax.jit(exp.call)
