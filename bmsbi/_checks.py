"""Small argument checks shared by the public calls (errors name the argument)."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

__all__ = ["as_key", "remember", "folder_path", "check_positive_int", "real_array", "check_training_settings", "check_positive_fields",
           "available_memory", "format_bytes"]


def as_key(key, arg: str = "key") -> jax.Array:
    """Return a new-style typed PRNG key from a typed key, a legacy uint32[2] key or an int seed."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{arg}: expected a single PRNG key, got a key array of shape {key.shape}")
        return key
    arr = np.asarray(key) if not isinstance(key, jax.Array) else key
    if getattr(arr, "dtype", None) == np.uint32 and arr.shape == (2,):
        return jax.random.wrap_key_data(arr)
    raise ValueError(
        f"{arg}: expected a jax.random.key(...), a legacy PRNGKey or an int seed, got "
        f"{type(key).__name__} {getattr(key, 'shape', '')}")


def check_positive_int(value, arg: str, *, allow_none: bool = False):
    """``value`` as a positive ``int``; ``ValueError`` naming ``arg`` otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{arg}: expected a positive int, got {value!r}")
    return int(value)


def _real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and bool(np.isfinite(value))


def check_training_settings(obj) -> None:
    """The engine settings an estimator holds (those of its fields that exist), checked once.

    ``learning_rate > 0``; ``0 <= validation_fraction < 1``; ``clip_norm`` ``None`` or
    ``> 0``; ``weight_decay >= 0``; ``patience`` ``None`` or a positive int; ``ema_decay``
    ``None`` or in ``(0, 1)``; ``tail_bound > 0``. ``ValueError`` naming the field otherwise.
    """
    rules = {
        "learning_rate": ("a finite float > 0", lambda v: _real(v) and v > 0),
        "validation_fraction": ("a float in [0, 1)", lambda v: _real(v) and 0 <= v < 1),
        "clip_norm": ("None or a finite float > 0", lambda v: v is None or (_real(v) and v > 0)),
        "weight_decay": ("a finite float >= 0", lambda v: _real(v) and v >= 0),
        "patience": ("None or a positive int", lambda v: v is None or (
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1)),
        "ema_decay": ("None or a float in (0, 1)", lambda v: v is None or (_real(v) and 0 < v < 1)),
        "tail_bound": ("a finite float > 0", lambda v: _real(v) and v > 0),
    }
    for name, (expected, ok) in rules.items():
        if hasattr(obj, name) and not ok(getattr(obj, name)):
            raise ValueError(f"{name}: expected {expected}, got {getattr(obj, name)!r}")


def check_positive_fields(obj, names) -> None:
    """Each ``getattr(obj, name)`` a positive int (``ValueError`` naming the field otherwise)."""
    for name in names:
        check_positive_int(getattr(obj, name), name)


def _item_shape(item) -> str:
    try:
        return str(np.shape(item))
    except ValueError:  # itself ragged
        return "ragged"


def _describe(value) -> str:
    """What came, for an error message: the item shapes of a ragged list, else the type."""
    if isinstance(value, (list, tuple)):
        shapes = [_item_shape(v) for v in value]
        listing = ", ".join(shapes[:8]) + (", ..." if len(shapes) > 8 else "")
        return (f"a ragged {type(value).__name__} of {len(value)} items whose shapes differ "
                f"({listing}); every item must have the same shape")
    return type(value).__name__


def real_array(value, arg: str, *, what: str = "a numeric array", allow_bool: bool = True):
    """``value`` as an array of real numbers (integers, floats, and booleans if ``allow_bool``).

    Nothing is converted silently: ragged nesting (its items' shapes are named), complex
    numbers (the imaginary part would be lost), and object, string, byte or date data
    are a ``ValueError`` naming ``arg``. The dtype is kept (the caller casts); a numpy or
    jax array comes back as it is, anything else as a numpy array.
    """
    try:
        arr = value if isinstance(value, (np.ndarray, jax.Array)) else np.asarray(value)
    except (TypeError, ValueError):
        raise ValueError(f"{arg}: expected {what}, got {_describe(value)}") from None
    kind = np.dtype(arr.dtype).kind if not jax.dtypes.issubdtype(arr.dtype, jax.dtypes.prng_key) else "V"
    if kind == "c":
        raise ValueError(f"{arg}: expected real numbers, got complex values ({arr.dtype}), whose "
                         "imaginary part would be lost; pass np.real, np.abs or np.angle of them, "
                         "as the analysis needs")
    if kind == "b" and not allow_bool:
        raise ValueError(f"{arg}: expected real numbers, got booleans")
    if kind == "O":
        kinds = sorted({type(v).__name__ for v in arr.reshape(-1)[:1000]})
        raise ValueError(f"{arg}: expected {what}, got "
                         + (f"{type(value).__name__}" if arr.ndim == 0 else f"an object array holding {kinds}"))
    if kind in "US":
        raise ValueError(f"{arg}: expected {what}, got text {arr.reshape(-1)[:5].tolist()!r:.80}")
    if kind not in "biuf":
        raise ValueError(f"{arg}: expected {what}, got {type(value).__name__} of dtype {arr.dtype}")
    return arr


def available_memory() -> int | None:
    """Bytes of memory this process can still take (the cgroup limit counts), or None if unknown."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            pass
    try:  # a container's limit; its page cache ("file") can be reclaimed, so it counts as free
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            stat = dict(line.split() for line in (cgroup / "memory.stat").read_text().splitlines())
            free = int(limit) - int((cgroup / "memory.current").read_text()) + int(stat.get("file", 0))
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in B, KiB, ... PiB (one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024


def remember(cache: dict, key, build, size: int = 64):
    """``cache[key]``, built by ``build()`` on a miss; the oldest entry goes past ``size`` entries.

    ``key=None`` (a key that cannot be compared by value) builds without caching.
    """
    if key is None:
        return build()
    if key not in cache:
        if len(cache) >= size:
            cache.pop(next(iter(cache)))
        cache[key] = build()
    return cache[key]


def folder_path(path, what: str, hint: str = ""):
    """``path`` (str or PathLike) as a ``Path`` to a folder that exists or can be created; ``None`` stays ``None``.

    ``ValueError`` naming ``path`` for another type, a file at ``path`` (``hint`` is added to
    that message) or a file where a parent folder must be. ``what`` names the folder
    (e.g. ``"bank folder"``).
    """
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a folder path (str or Path), got {type(path).__name__}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path: {folder} is a file, expected a {what}{hint}")
    parent = next(p for p in folder.parents if p.exists())
    if not parent.is_dir():
        raise ValueError(f"path: cannot create the {what} {folder}: {parent} is a file, not a folder")
    return folder
