"""Safe, versioned files: a JSON header and a binary payload, checksummed.

Files that bmsbi reads are data, never code: no pickle anywhere. Layout::

    MAGIC (8 bytes: b"BMSBI" + container version byte + b"\\r\\n")
    header length (8 bytes, little-endian unsigned)
    header (UTF-8 JSON object)
    payload (bytes; e.g. equinox.tree_serialise_leaves output or packed arrays)
    SHA-256 digest (32 bytes) of everything above

The header records ``kind`` (``"posterior"``, ``"bank"``...), ``schema_version`` (per
kind), ``bmsbi_version``, ``payload_size`` and ``payload_sha256``. Readers check, in this
order: the magic, the container version, the lengths, the digest (any flipped or
missing byte is refused), the kind, the schema version (a newer one asks to upgrade
bmsbi). Writes go to a temporary file that is renamed into place, so a killed writer
never leaves a half-written file under the final name.

Every file bmsbi writes (posteriors, banks, bank chunks and manifests) goes through
:func:`atomic_write`, with one policy:

- **Permissions**: the usual ``0o666`` less the process umask (``0644`` under the
  common umask ``022``), like any file a program creates; tighten the umask to keep
  files private.
- **Leftovers**: the temporary file of a killed writer, ``.<name>.<random>.tmp`` next
  to ``<name>``, is removed by the next write of that path (or, for a bank folder, of
  that folder), never while its writer is alive: a writer holds a lock on it.
- **Bad paths**: a folder where a file is expected, a parent that is a file, or a
  place that cannot be written is a ``ValueError`` naming ``path``; so is reading a
  missing file or a folder.

Examples
--------
>>> import numpy as np, tempfile, os
>>> from bmsbi import io
>>> payload, index = io.pack_arrays({"a": np.arange(3.0)})
>>> path = os.path.join(tempfile.mkdtemp(), "f.bmsbi")
>>> _ = io.write_file(path, kind="demo", schema_version=1, header={"index": index}, payload=payload)
>>> header, data = io.read_file(path, kind="demo", schema_version=1)
>>> io.unpack_arrays(data, header["index"])["a"]
array([0., 1., 2.])
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import struct
import tempfile
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; leftovers are only removed when old
    fcntl = None

import numpy as np

from ._version import __version__

__all__ = ["write_file", "read_file", "pack_arrays", "unpack_arrays", "atomic_write",
           "remove_stale_temporaries", "CONTAINER_VERSION"]

# Version of the container layout (magic, header, payload, digest) this bmsbi writes and reads.
CONTAINER_VERSION = 1
_MAGIC_PREFIX = b"BMSBI"
_MAGIC_SUFFIX = b"\r\n"
_MAGIC = _MAGIC_PREFIX + bytes([CONTAINER_VERSION]) + _MAGIC_SUFFIX
_LEN = struct.Struct("<Q")
_DIGEST = 32
_MAX_HEADER = 1 << 30
# Without locks (Windows), a temporary file this old is taken to be a dead writer's.
_STALE_SECONDS = 24 * 3600
_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64", "complex64", "complex128"}


def _version() -> str:
    return __version__


def _jsonable(obj, where="header"):
    """Reject NaN/inf and non-JSON types early, with the offending path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be str, got {k!r}")
            _jsonable(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _jsonable(v, f"{where}[{i}]")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"{where}: non-finite float {obj!r} cannot be stored; use None")
    elif not (obj is None or isinstance(obj, (str, int, bool))):
        raise ValueError(f"{where}: expected JSON data (dict, list, str, int, float, bool, None), "
                         f"got {type(obj).__name__}")


def write_file(path, *, kind: str, schema_version: int, header: dict, payload: bytes = b"") -> str:
    """Write ``header`` (JSON data) and ``payload`` (bytes) atomically to ``path``.

    ``kind``, ``schema_version``, ``bmsbi_version``, ``payload_size`` and
    ``payload_sha256`` are added to the header. Returns the path written.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"kind: expected a non-empty str, got {kind!r}")
    if not isinstance(header, dict):
        raise ValueError(f"header: expected a dict, got {type(header).__name__}")
    payload = bytes(payload)
    full = {"kind": kind, "schema_version": int(schema_version), "bmsbi_version": _version(),
            "payload_size": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(), **header}
    _jsonable(full)
    head = json.dumps(full, allow_nan=False, separators=(",", ":")).encode("utf-8")
    body = _MAGIC + _LEN.pack(len(head)) + head + payload
    data = body + hashlib.sha256(body).digest()

    atomic_write(path, lambda fh: fh.write(data))
    return os.fspath(path)


def remove_stale_temporaries(folder, pattern: str = ".*.tmp") -> int:
    """Remove temporary files of killed writers matching ``pattern`` in ``folder``; returns how many.

    A live writer holds an exclusive lock on its temporary file, so only files whose
    writer died are removed (where locks are unavailable: files older than a day).
    """
    removed = 0
    for tmp in Path(folder).glob(pattern):
        try:
            if _remove_if_dead(tmp):
                removed += 1
        except OSError:  # vanished meanwhile, or a read-only folder: leave it
            pass
    return removed


def _remove_if_dead(tmp: Path) -> bool:
    if fcntl is None:
        import time

        if time.time() - tmp.stat().st_mtime < _STALE_SECONDS:
            return False
        tmp.unlink()
        return True
    fd = os.open(tmp, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer holds it
            return False
        tmp.unlink()
        return True
    finally:
        os.close(fd)


def _path_error(path: Path, exc: OSError) -> ValueError:
    return ValueError(f"path: cannot write {str(path)!r} ({exc.strerror or exc}); choose a writable location")


def atomic_write(path, write: Callable, *, clean: bool = True) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, then rename it to ``path``.

    Readers never see half a file; a killed writer leaves only ``.<name>.<random>.tmp``,
    which the next write of ``path`` removes (``clean=False`` leaves that to the caller,
    e.g. one sweep of a bank folder instead of one listing per chunk). The file gets ``0o666`` less the umask.
    Missing parent folders are created. A folder at ``path``, a parent that is a file
    or an unwritable place is a ``ValueError`` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path: {str(path)!r} is a folder, expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"path: cannot write {str(path)!r}: a parent of it is a file, not a folder") from None
    except OSError as exc:
        raise _path_error(path, exc) from None
    if clean:
        remove_stale_temporaries(path.parent, f".{glob.escape(path.name)}.*.tmp")
    while True:
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        except OSError as exc:
            raise _path_error(path, exc) from None
        if fcntl is None:
            break
        fcntl.flock(fd, fcntl.LOCK_EX)  # tells remove_stale_temporaries this writer is alive
        if os.fstat(fd).st_nlink:
            break
        os.close(fd)  # removed as stale between its creation and the lock: make another
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
            # mkstemp creates 0600 files; give the usual umask-respecting permissions.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)  # still under the lock
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, PermissionError):
            raise _path_error(path, exc) from None
        raise
    return path


def read_file(path, *, kind: str | None = None, schema_version: int | None = None):
    """Read and verify a file written by :func:`write_file`; returns ``(header, payload)``.

    Parameters
    ----------
    kind : str, optional
        Expected ``kind``; a different one is refused.
    schema_version : int, optional
        Newest schema this reader understands; a newer file is refused with a request
        to upgrade bmsbi.

    Raises
    ------
    ValueError
        Missing, a folder, unreadable, not a bmsbi file, truncated, altered (checksum mismatch), wrong kind, or
        written by a newer bmsbi.
    """
    path = os.fspath(path)
    where = f"{path!r}"
    if os.path.isdir(path):
        raise ValueError(f"path: {where} is a folder, expected a file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ValueError(f"path: no such file: {where}") from None
    except OSError as exc:
        raise ValueError(f"path: cannot read {where} ({exc.strerror or exc})") from None
    if len(data) < len(_MAGIC) or not data.startswith(_MAGIC_PREFIX):
        raise ValueError(f"path: {where} is not a bmsbi file (missing the BMSBI signature)")
    container = data[len(_MAGIC_PREFIX)]
    if container > CONTAINER_VERSION and data[len(_MAGIC_PREFIX) + 1:len(_MAGIC)] == _MAGIC_SUFFIX:
        raise ValueError(
            f"path: {where} uses file container version {container}, newer than this bmsbi "
            f"({_version()}) reads ({CONTAINER_VERSION}); upgrade bmsbi "
            "(pip install -U bmsbi) to load it")
    if not data.startswith(_MAGIC):
        raise ValueError(f"path: {where} has a damaged bmsbi signature; the file is corrupted")
    min_size = len(_MAGIC) + _LEN.size + _DIGEST
    if len(data) < min_size:
        raise ValueError(f"path: {where} is truncated ({len(data)} bytes); the file is incomplete")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError(
            f"path: {where} failed its SHA-256 checksum: the file is truncated or was altered "
            "after writing; re-create it from the original run")
    (head_len,) = _LEN.unpack_from(body, len(_MAGIC))
    start = len(_MAGIC) + _LEN.size
    if head_len > min(_MAX_HEADER, len(body) - start):
        raise ValueError(f"path: {where} has an inconsistent header length; the file is corrupted")
    try:
        header = json.loads(body[start:start + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"path: {where} has an unreadable header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"path: {where} has a header that is not a JSON object")
    payload = body[start + head_len:]
    if header.get("payload_size") != len(payload) or \
            header.get("payload_sha256") != hashlib.sha256(payload).hexdigest():
        raise ValueError(f"path: {where} payload does not match its header; the file is corrupted")
    if kind is not None and header.get("kind") != kind:
        raise ValueError(f"path: {where} holds a {header.get('kind')!r}, expected a {kind!r}")
    version = header.get("schema_version")
    if not isinstance(version, int):
        raise ValueError(f"path: {where} lacks an integer schema_version")
    if schema_version is not None and version > schema_version:
        raise ValueError(
            f"path: {where} was written by bmsbi {header.get('bmsbi_version')} with "
            f"{header.get('kind')} schema version {version}; this bmsbi ({_version()}) reads up "
            f"to version {schema_version}. Upgrade bmsbi (pip install -U bmsbi) to load it")
    return header, payload


def pack_arrays(arrays: dict) -> tuple[bytes, list]:
    """Concatenate numeric arrays into one payload; returns ``(payload, index)``.

    ``index`` (JSON) lists each array's name, dtype, shape, offset and size; pass it to
    :func:`unpack_arrays`. Object and string dtypes are refused.
    """
    index, chunks, offset = [], [], 0
    for name, value in arrays.items():
        arr = np.asarray(value)
        arr = np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray makes 0-d 1-d
        if arr.dtype.name not in _DTYPES:
            raise ValueError(f"arrays[{name!r}]: dtype {arr.dtype} cannot be stored; use a numeric dtype")
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        index.append({"name": str(name), "dtype": arr.dtype.name, "shape": list(arr.shape),
                      "offset": offset, "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)
    return b"".join(chunks), index


def unpack_arrays(payload: bytes, index: list) -> dict:
    """Inverse of :func:`pack_arrays` (arrays are read-only views copied out)."""
    out = {}
    for entry in index:
        dtype = entry.get("dtype")
        if dtype not in _DTYPES:
            raise ValueError(f"index: refusing dtype {dtype!r}")
        shape = tuple(int(s) for s in entry["shape"])
        start, size = int(entry["offset"]), int(entry["nbytes"])
        dt = np.dtype(dtype).newbyteorder("<")
        if size != math.prod(shape) * dt.itemsize or start < 0 or start + size > len(payload):
            raise ValueError(f"index: entry {entry.get('name')!r} does not fit the payload")
        out[entry["name"]] = np.frombuffer(payload, dt, count=math.prod(shape),
                                           offset=start).reshape(shape).astype(dtype)
    return out
