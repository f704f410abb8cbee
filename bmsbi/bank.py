"""Simulation banks: vmapped, chunked, sharded, resumable and NaN-aware.

:func:`simulate_bank` maps a JAX-traceable simulator over parameters drawn from a
:class:`~bmsbi.Prior`. Each simulation ``i`` gets its parameters and its noise from
keys derived from ``(key, i)``, so the bank does not depend on how the work is cut
into chunks, devices or processes. Chunks are written atomically when ``path`` is
given, and a second call with the same arguments resumes where a killed run stopped.

:class:`Bank` holds ``theta (n, d)`` and ``x (n, *x_shape)`` with names and metadata,
and reads/writes ``.npz`` files or bank directories (JSON manifest + ``.npz``
chunks). Nothing is pickled.

A bank folder's identity is its manifest's ``fingerprint``: the simulator's name, a
digest of what it computes (``simulator_code``: the text of its jaxpr traced at one
simulation, with object addresses masked, plus its constants and the values of the
brainstate states it reads), the prior, the key, the budget, the chunk size, the
output shape and dtype, the NaN policy and the trials. A call with ``path=`` resumes
only a bank with the same fingerprint. When ``simulator_code`` cannot vouch for the
simulator — a folder from a bmsbi that did not record it, a digest that changed (the
simulator was edited, or a JAX/brainstate upgrade traces it differently), or a
simulator that calls back into Python (``pure_callback``, ``io_callback``,
``ffi_call``: code no trace shows) — the first stored chunk is simulated again and
compared with what is stored (``rtol=1e-5``): the run resumes (and the manifest
records the new digest) only if they agree. Each chunk records its indices and its
bank's ``bank_id``; a chunk file at the wrong position (a copy, a reordered or a
foreign file) is refused on load and on resume.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import io as bio
from ._checks import available_memory as _available_memory, format_bytes as _size, real_array
from ._checks import as_key, check_positive_int, folder_path
from .prior import Prior, as_prior

__all__ = ["Bank", "BankMismatchError", "simulate_bank", "simulate_at"]


class BankMismatchError(ValueError):
    """A bank folder was made with other arguments than the ones given, so it cannot be resumed.

    A ``ValueError``; raised by :func:`simulate_bank` with ``path=``. ``differs`` lists the
    fingerprint fields that differ (e.g. ``['chunk_size']``).

    Examples
    --------
    >>> import bmsbi
    >>> issubclass(bmsbi.bank.BankMismatchError, ValueError)
    True
    """

    def __init__(self, message: str, differs=()):
        super().__init__(message)
        self.differs = list(differs)

SCHEMA_VERSION = 1
_FORMAT = "bmsbi.bank"
_ON_INVALID = ("drop", "raise", "keep")
# Default chunk: bound one chunk's output to about this many bytes.
_CHUNK_BYTES = 256 * 2**20
# ... and at most this many simulations: a simulation's working memory (its whole time
# series before the summary) is usually far larger than its output; 16 million hopf_node
# summaries fit in 256 MiB, their time series in no machine.
_CHUNK_MAX_SIMS = 4096
# ... and its working memory (noise and trajectories held before the summary, estimated
# from the trace) to about this many bytes: a 94-region BOLD run holds megabytes per simulation.
_CHUNK_WORK_BYTES = 2 * 2**30


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _load_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as exc:  # truncated zip, wrong format, object arrays ...
        raise ValueError(f"path: {path} is not a readable bmsbi .npz file ({exc})") from None


class Bank:
    """A set of simulations: parameters ``theta (n, d)`` and outputs ``x (n, *x_shape)``.

    Parameters
    ----------
    theta : array-like, shape ``(n, d)``
        Parameters, one row per simulation.
    x : array-like, shape ``(n, *x_shape)``
        Simulator outputs (floating point), aligned with ``theta``.
    names : sequence of str, optional
        Parameter names (``theta0 ...`` by default).
    meta : dict, optional
        JSON-serialisable metadata (how the bank was made, invalid simulations, ...).
        ``meta["trials"] = K`` marks ``x`` of shape ``(n, K, *x_shape)`` as ``K`` iid
        trials per parameter (as ``simulate_bank(..., trials=K)`` writes); see
        :attr:`trials`.

    Examples
    --------
    >>> import numpy as np, bmsbi
    >>> bank = bmsbi.Bank(np.zeros((10, 2)), np.ones((10, 3)), names=["a", "b"])
    >>> len(bank), bank.x_shape
    (10, (3,))
    >>> train, val = bank.split(0.8, key=0)
    >>> len(train), len(val)
    (8, 2)
    """

    def __init__(self, theta, x, names: Sequence[str] | None = None, meta: Mapping | None = None):
        theta = np.asarray(real_array(theta, "theta", what="an array of shape (n, d)"))
        x = np.asarray(real_array(x, "x", what="an array of shape (n, *x_shape)"))
        if theta.ndim != 2:
            raise ValueError(f"theta: expected shape (n, d), got {theta.shape}")
        if x.ndim < 1 or x.shape[0] != theta.shape[0]:
            raise ValueError(
                f"x: expected shape (n, *x_shape) with n={theta.shape[0]} (the rows of theta), got {x.shape}")
        for arg, a in (("theta", theta), ("x", x)):
            if not np.issubdtype(a.dtype, np.floating):
                raise ValueError(f"{arg}: expected a floating-point array, got dtype {a.dtype}")
        if names is None:
            names = [f"theta{i}" for i in range(theta.shape[1])]
        names = tuple(str(n) for n in names)
        if len(names) != theta.shape[1]:
            raise ValueError(f"names: expected {theta.shape[1]} names (columns of theta), got {len(names)}: {names}")
        meta = dict(meta or {})
        try:
            json.dumps(meta)
        except TypeError as exc:
            raise ValueError(f"meta: expected JSON-serialisable metadata ({exc})") from None
        k = meta.get("trials")
        if k is not None:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
                raise ValueError(f"meta['trials']: expected a positive int (trials per simulation), got {k!r}")
            if x.ndim < 2 or x.shape[1] != k:
                raise ValueError(f"x: meta['trials'] = {k} needs x of shape (n, {k}, *x_shape) (trials on "
                                 f"the second axis), got {x.shape}")
        self.theta, self.x, self.names, self.meta = theta, x, names, meta

    @property
    def trials(self) -> int | None:
        """Trials per simulation (``x``'s second axis), or ``None`` for a bank without trials."""
        k = self.meta.get("trials")
        return None if k is None else int(k)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.theta.shape[0]

    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return self.theta.shape[1]

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one simulator output."""
        return tuple(self.x.shape[1:])

    def __getitem__(self, index) -> "Bank":
        index = np.arange(len(self))[index]
        return Bank(self.theta[np.atleast_1d(index)], self.x[np.atleast_1d(index)], self.names, self.meta)

    def __repr__(self) -> str:
        return f"Bank(n={len(self)}, names={self.names}, x_shape={self.x_shape})"

    def finite_mask(self) -> np.ndarray:
        """``(n,)`` bool: rows whose ``theta`` and ``x`` are all finite."""
        return _finite_rows(self.theta) & _finite_rows(self.x)

    def split(self, fraction: float, *, key=0) -> tuple["Bank", "Bank"]:
        """Random split into ``(first, second)`` with ``round(fraction * n)`` rows in ``first``."""
        if not (isinstance(fraction, (float, int)) and 0.0 < fraction < 1.0):
            raise ValueError(f"fraction: expected a number strictly between 0 and 1, got {fraction!r}")
        perm = np.asarray(jax.random.permutation(as_key(key), len(self)))
        k = int(round(fraction * len(self)))
        return self[perm[:k]], self[perm[k:]]

    @staticmethod
    def concatenate(banks: Sequence["Bank"]) -> "Bank":
        """Concatenate banks with the same names and ``x_shape`` (e.g. shards)."""
        banks = list(banks)
        if not banks or not all(isinstance(b, Bank) for b in banks):
            raise ValueError("banks: expected a non-empty sequence of bmsbi.Bank")
        first = banks[0]
        for i, b in enumerate(banks[1:], 1):
            if b.names != first.names or b.x_shape != first.x_shape:
                raise ValueError(
                    f"banks[{i}]: expected names {first.names} and x_shape {first.x_shape}, "
                    f"got {b.names} and {b.x_shape}")
        meta = {"concatenated_from": [len(b) for b in banks]}
        return Bank(np.concatenate([b.theta for b in banks]), np.concatenate([b.x for b in banks]),
                    first.names, meta)

    # -------------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write the bank.

        ``path`` ending in ``.npz`` gives one file; any other path gives a bank directory
        (``manifest.json`` + one ``.npz`` chunk), the same layout :func:`simulate_bank` writes.
        Returns the path written.
        """
        path = Path(path)
        if path.suffix == ".npz":
            arrays = {"theta": self.theta, "x": self.x}
            header = {"format": _FORMAT, "schema": SCHEMA_VERSION, "names": list(self.names),
                      "meta": self.meta, "checksum": _digest(self.theta, self.x)}
            bio.atomic_write(path, lambda f: np.savez(f, header=np.array(json.dumps(header)), **arrays))
            return path
        if path.exists() and not path.is_dir():
            raise ValueError(f"path: {path} is a file; end the name in .npz for a one-file bank")
        if path.exists() and any(path.iterdir()):
            raise ValueError(f"path: {path} exists and is not empty; choose a new folder or a .npz file name")
        bank_id = _digest(self.theta, self.x)[:16]
        manifest = {"format": _FORMAT, "schema": SCHEMA_VERSION, "names": list(self.names),
                    "num_simulations": len(self), "chunk_size": max(len(self), 1), "num_chunks": 1,
                    "x_shape": list(self.x_shape), "on_invalid": "keep", "bank_id": bank_id, "meta": self.meta}
        _write_chunk(path, 0, np.arange(len(self)), self.theta, self.x, bank_id)
        bio.atomic_write(path / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        return path

    @classmethod
    def load(cls, path) -> "Bank":
        """Read a bank written by :meth:`save` or :func:`simulate_bank` (all shards merged)."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"path: no bank at {path}")
        if path.is_dir():
            manifest = _read_manifest(path)
            if manifest is None:
                raise ValueError(f"path: {path} is a folder without a bmsbi manifest.json")
            return _assemble(path, manifest)
        data = _load_npz(path)
        if "header" not in data:
            raise ValueError(f"path: {path} is an .npz without a bmsbi header")
        header = _parse_json(str(data["header"]), f"{path} (its header)")
        _check_schema(header, path)
        missing = [k for k in ("theta", "x") if k not in data]
        if missing:
            raise ValueError(f"path: {path} lacks the arrays {missing}; it is not a complete bmsbi bank")
        theta, x = data["theta"], data["x"]
        if _digest(theta, x) != header.get("checksum"):
            raise ValueError(f"path: {path} failed its checksum; the file is corrupted or was altered")
        try:
            return cls(theta, x, header.get("names"), header.get("meta"))
        except ValueError as exc:
            raise ValueError(f"path: {path} holds an inconsistent bank ({exc})") from None


def _parse_json(text: str, where) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"path: {where} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"path: {where} is not a JSON object (got a {type(obj).__name__})")
    return obj


def _check_schema(header: Mapping, path) -> None:
    if header.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not a bmsbi bank (format {header.get('format')!r})")
    schema = header.get("schema")
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise ValueError(f"path: {path} has no integer bank schema (got {schema!r}); the file is damaged")
    if schema > SCHEMA_VERSION:
        raise ValueError(
            f"path: {path} has bank schema {header.get('schema')}, newer than this bmsbi "
            f"understands ({SCHEMA_VERSION}); upgrade bmsbi")


def _finite_rows(a: np.ndarray) -> np.ndarray:
    return np.all(np.isfinite(a.reshape(a.shape[0], -1)), axis=1)


def _chunk_path(folder: Path, c: int) -> Path:
    return folder / f"chunk-{c:06d}.npz"


def _write_chunk(folder: Path, c: int, index, theta, x, bank_id: str) -> None:
    index, theta, x = np.asarray(index), np.asarray(theta), np.asarray(x)
    checksum = np.array(_digest(index, theta, x))
    # simulate_bank sweeps the folder's leftovers once, not one listing per chunk.
    bio.atomic_write(_chunk_path(folder, c), lambda f: np.savez(
        f, index=index, theta=theta, x=x, checksum=checksum, bank_id=np.array(bank_id)), clean=False)


def _present_chunks(folder: Path) -> set[int]:
    """Numbers of the chunk files in ``folder`` (one directory listing, whatever the budget)."""
    return {int(m.group(1)) for p in folder.glob("chunk-*.npz")
            if (m := re.fullmatch(r"chunk-(\d+)\.npz", p.name))}


def _read_chunk(folder: Path, c: int, manifest: Mapping) -> dict | None:
    """Chunk ``c``, checked against its checksum and its place in the bank; ``None`` if absent."""
    p = _chunk_path(folder, c)
    if not p.exists():
        return None
    data = _load_npz(p)
    missing = [k for k in ("index", "theta", "x", "checksum") if k not in data]
    if missing:
        raise ValueError(f"path: chunk {p} lacks {missing}; delete it and resume to simulate it again")
    if _digest(data["index"], data["theta"], data["x"]) != str(data["checksum"]):
        raise ValueError(f"path: chunk {p} failed its checksum; delete it and resume to simulate it again")
    cs, n = manifest["chunk_size"], manifest["num_simulations"]
    expected = np.arange(c * cs, min((c + 1) * cs, n))
    index = data["index"]
    if index.shape != expected.shape or not np.array_equal(index, expected):
        got = f"{index[0]}..{index[-1]}" if index.ndim == 1 and index.size else f"shape {index.shape}"
        raise ValueError(
            f"path: chunk {p} holds simulations {got}, but chunk {c} of this bank holds "
            f"{expected[0]}..{expected[-1]}: it is a copy of another chunk, a renamed one or from another "
            "bank; delete it and resume to simulate it again")
    if "bank_id" in data and "bank_id" in manifest and str(data["bank_id"]) != manifest["bank_id"]:
        raise ValueError(f"path: chunk {p} belongs to another bank (bank_id {str(data['bank_id'])!r}, this "
                         f"bank's is {manifest['bank_id']!r}); delete it and resume to simulate it again")
    x_shape = tuple(manifest["x_shape"])
    if data["theta"].shape != (len(expected), len(manifest["names"])) or \
            data["x"].shape != (len(expected), *x_shape):
        raise ValueError(f"path: chunk {p} holds theta {data['theta'].shape} and x {data['x'].shape}, expected "
                         f"{(len(expected), len(manifest['names']))} and {(len(expected), *x_shape)}; delete "
                         "it and resume to simulate it again")
    return data


# Manifest keys and their checks; a manifest failing one is refused with the key's name.
_MANIFEST_KEYS = {
    "names": lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
    "num_simulations": lambda v: _is_int(v) and v >= 1,
    "chunk_size": lambda v: _is_int(v) and v >= 1,
    "num_chunks": lambda v: _is_int(v) and v >= 1,
    "x_shape": lambda v: isinstance(v, list) and all(_is_int(s) and s >= 0 for s in v),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_manifest(folder: Path) -> dict | None:
    p = folder / "manifest.json"
    if not p.exists():
        return None
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"path: cannot read {p} ({exc})") from None
    manifest = _parse_json(text, p)
    _check_schema(manifest, p)
    for k, ok in _MANIFEST_KEYS.items():
        if k not in manifest:
            raise ValueError(f"path: {p} lacks {k!r}; the manifest is damaged")
        if not ok(manifest[k]):
            raise ValueError(f"path: {p} holds an invalid {k!r} ({manifest[k]!r}); the manifest is damaged")
    if manifest["num_chunks"] != math.ceil(manifest["num_simulations"] / manifest["chunk_size"]):
        raise ValueError(f"path: {p} holds num_chunks {manifest['num_chunks']}, but {manifest['num_simulations']} "
                         f"simulations in chunks of {manifest['chunk_size']} make "
                         f"{math.ceil(manifest['num_simulations'] / manifest['chunk_size'])}; the manifest is damaged")
    for k, kind in (("fingerprint", dict), ("meta", dict)):
        if manifest.get(k) is not None and not isinstance(manifest[k], kind):
            raise ValueError(f"path: {p} holds a {k!r} that is not a JSON object; the manifest is damaged")
    if manifest.get("on_invalid", "keep") not in _ON_INVALID:
        raise ValueError(f"path: {p} holds an invalid 'on_invalid' ({manifest['on_invalid']!r}); the manifest is damaged")
    return manifest


def _apply_policy(theta, x, index, on_invalid):
    """Split rows into kept bank arrays and the record of invalid simulations."""
    bad = ~_finite_rows(x)
    invalid = index[bad].tolist()
    if on_invalid == "drop":
        theta, x = theta[~bad], x[~bad]
    return theta, x, invalid


def _assemble(folder: Path, manifest: Mapping) -> Bank:
    n, nc = manifest["num_simulations"], manifest["num_chunks"]
    present = _present_chunks(folder)
    have = sum(1 for c in present if c < nc)
    if have < nc:  # the first missing ones lie among the first len(present) + 5: no list as long as the budget
        missing = [c for c in range(min(nc, len(present) + 5)) if c not in present][:5]
        raise ValueError(
            f"path: bank at {folder} is incomplete: {nc - have} of {nc} chunks are missing "
            f"(first: {missing}); call simulate_bank again with the same arguments to resume")
    chunks = [_read_chunk(folder, c, manifest) for c in range(nc)]
    missing = [c for c, ch in enumerate(chunks) if ch is None]
    if missing:
        raise ValueError(
            f"path: bank at {folder} is incomplete: {len(missing)} of {nc} chunks are missing "
            f"(first: {missing[:5]}); call simulate_bank again with the same arguments to resume")
    index = np.concatenate([c["index"] for c in chunks])[:n]
    theta = np.concatenate([c["theta"] for c in chunks])[:n]
    x = np.concatenate([c["x"] for c in chunks])[:n]
    theta, x, invalid = _apply_policy(theta, x, index, manifest.get("on_invalid", "keep"))
    meta = dict(manifest.get("meta") or {})
    if isinstance(manifest.get("fingerprint"), dict):
        meta.update(num_simulations=n, num_invalid=len(invalid), invalid_indices=invalid,
                    on_invalid=manifest.get("on_invalid", "keep"), chunk_size=manifest["chunk_size"],
                    simulator=manifest["fingerprint"].get("simulator"))
    try:
        return Bank(theta, x, manifest["names"], meta)
    except ValueError as exc:
        raise ValueError(f"path: bank at {folder} is inconsistent ({exc})") from None


# --------------------------------------------------------------------- simulate
def _simulator_name(simulator) -> str:
    mod = getattr(simulator, "__module__", None) or type(simulator).__module__
    name = getattr(simulator, "__qualname__", None) or type(simulator).__qualname__
    return f"{mod}.{name}"


# Compiled functions reused across calls (simulate_bank, simulate_at, resumed runs, posterior
# predictive checks): the keys are arguments, not constants of the trace, so the same simulator
# (or prior) with a new key or another bank of the same chunk shape does not trace and compile
# again. Like jax.jit, a cached simulator keeps the globals it read when first traced.
_FN_CACHE: dict = {}
_FN_CACHE_MAX = 16


def _cached(cache_key, build):
    try:
        hit = _FN_CACHE.pop(cache_key, None)
    except TypeError:  # an unhashable callable: no caching
        return build()
    if hit is None:
        hit = build()
    _FN_CACHE[cache_key] = hit  # most recently used last
    while len(_FN_CACHE) > _FN_CACHE_MAX:
        _FN_CACHE.pop(next(iter(_FN_CACHE)))
    return hit


def _build_sim_fn(simulator, trials: int | None = None):
    """``(theta (c, d), index (c,), k_sim) -> x (c, *x_shape)`` for one chunk: (compiled, uncompiled).

    Simulation ``i`` gets the key ``fold_in(k_sim, i)``, also as brainstate's random
    state (noise inside brainmass models), so it does not depend on the chunking. With
    ``trials=K`` it runs ``K`` trials per parameter, trial ``j`` under the key
    ``fold_in(fold_in(k_sim, i), j)``: ``x (c, K, *x_shape)``.
    """
    def build():
        import brainstate

        def one(theta, i, k_sim, j=None):
            k = jax.random.fold_in(k_sim, i)
            if j is not None:
                k = jax.random.fold_in(k, j)
            with brainstate.random.seed_context(k):
                return simulator(theta, k)

        if trials is None:
            mapped = brainstate.transform.vmap(one, in_axes=(0, 0, None))
        else:
            flat = brainstate.transform.vmap(one, in_axes=(0, 0, None, 0))

            def mapped(theta, idx, k_sim):  # every (simulation, trial) pair in one vmap
                c = theta.shape[0]
                x = flat(jnp.repeat(theta, trials, axis=0), jnp.repeat(idx, trials), k_sim,
                         jnp.tile(jnp.arange(trials, dtype=jnp.int32), c))
                return x.reshape((c, trials) + x.shape[1:])
        return brainstate.transform.jit(mapped), mapped, {}

    return _cached(("sim", simulator, trials), build)


def _theta_fn(prior: Prior):
    """``(index (c,), k_theta) -> theta (c, d)``, compiled once per prior specification."""
    try:
        spec = json.dumps(prior.to_dict(), sort_keys=True)
    except (TypeError, ValueError):
        spec = prior  # not serialisable: cache by the object itself
    return _cached(("prior", spec), lambda: jax.jit(jax.vmap(
        lambda i, k: prior.sample(jax.random.fold_in(k, i), 1)[0], in_axes=(0, None))))


# Primitives that run code no jaxpr shows: a digest of the trace cannot vouch for them.
_OPAQUE = re.compile(r"\b(pure_callback|io_callback|ffi_call)\[")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _probe(sim_fn, d: int, k_sim):
    """``(x_shape, dtype, code, opaque, work)`` of the simulator, traced once (per ``d``) without running it.

    ``code`` digests what it computes: its jaxpr text (object addresses masked), its
    constants and the values of the brainstate states it reads (not random states);
    ``opaque`` says the trace calls code it does not show (host callbacks, FFI);
    ``work`` estimates the bytes one simulation's intermediates take (:func:`_working_bytes`).
    """
    import brainstate

    _, mapped, probes = sim_fn
    if d in probes:
        return probes[d]
    try:
        # Brainstate's global random state enters the trace; its value's type (a raw or a
        # typed key) depends on what ran before, so fix it for a digest that every process shares.
        with brainstate.random.seed_context(jax.random.key(0)):
            closed, states, x_struct = brainstate.transform.make_jaxpr(mapped, return_shape=True)(
                jax.ShapeDtypeStruct((1, d), jnp.float32), jax.ShapeDtypeStruct((1,), jnp.int32), k_sim)
    except Exception as exc:
        raise ValueError(
            f"simulator: calling simulator(theta (d={d},), key) failed while tracing: "
            f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(x_struct, jax.ShapeDtypeStruct):
        raise ValueError(f"simulator: expected it to return one array, got a {type(x_struct).__name__}")
    if not jnp.issubdtype(x_struct.dtype, jnp.floating):
        raise ValueError(f"simulator: expected a floating-point output, got dtype {x_struct.dtype}; "
                         "cast it, e.g. x.astype(jnp.float32)")
    text = str(closed.jaxpr)
    h = hashlib.sha256(_ADDRESS.sub("0x", text).encode())
    values = list(closed.consts) + [st.value for st in states if not isinstance(st, brainstate.random.RandomState)]
    for leaf in jax.tree.leaves(values):
        h.update(_leaf_digest(leaf).encode())
    probes[d] = (tuple(x_struct.shape[1:]), x_struct.dtype, h.hexdigest(), bool(_OPAQUE.search(text)),
                 _working_bytes(closed.jaxpr))
    return probes[d]


def _working_bytes(jaxpr) -> int:
    """Estimated bytes one simulation's intermediates take, from its trace ``jaxpr``.

    Every array the top level makes (a loop's stacked trajectory, noise drawn up front)
    plus the largest single array made inside a call or loop: inner chains of elementwise
    operations are fused by XLA, so summing them would overstate what is held.
    """
    total = sum(_aval_bytes(var) for eqn in jaxpr.eqns for var in eqn.outvars)
    return total + max((_largest_array(inner) for eqn in jaxpr.eqns for inner in _inner_jaxprs(eqn)), default=0)


def _largest_array(jaxpr) -> int:
    own = max((_aval_bytes(var) for eqn in jaxpr.eqns for var in eqn.outvars), default=0)
    return max([own, *(_largest_array(inner) for eqn in jaxpr.eqns for inner in _inner_jaxprs(eqn))])


def _inner_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                yield inner


def _aval_bytes(var) -> int:
    aval = getattr(var, "aval", None)
    try:
        return int(np.prod(aval.shape, dtype=np.int64)) * int(aval.dtype.itemsize)
    except (AttributeError, TypeError):  # tokens and other non-arrays
        return 0


def _leaf_digest(leaf) -> str:
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    try:
        arr = np.asarray(leaf)
    except Exception:  # not an array: its text, addresses masked
        return _ADDRESS.sub("0x", repr(leaf))
    return _ADDRESS.sub("0x", repr(leaf)) if arr.dtype == object else _digest(arr)


def _local_sharding():
    devices = jax.local_devices()
    if len(devices) == 1:
        return None, 1
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    return NamedSharding(Mesh(np.array(devices), ("sims",)), PartitionSpec("sims")), len(devices)


def _run_chunk(fn, theta, idx, k_sim, sharding, x_shape):
    """Simulate one (padded) chunk; the parameter axis is split over the local devices."""
    args = (theta, idx) if sharding is None else (jax.device_put(theta, sharding), jax.device_put(idx, sharding))
    x = np.asarray(jax.device_get(fn(*args, k_sim)))
    if x.shape[1:] != x_shape:
        raise ValueError(f"simulator: output shape changed from {x_shape} to {x.shape[1:]} between calls")
    return x


def simulate_at(simulator: Callable, theta, *, key, chunk_size: int | None = None) -> np.ndarray:
    """Run ``simulator`` at given parameters: ``x (n, *x_shape)``, NaN/inf kept as returned.

    The same machinery as :func:`simulate_bank` (brainstate vmap, per-simulation keys
    ``fold_in(key, i)`` also seeding brainstate's noise, chunks split over local
    devices), for parameters you already have — posterior draws for a posterior
    predictive check, a grid, a design.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, numpy as np, bmsbi
    >>> sim = lambda theta, key: theta + 0.1 * jax.random.normal(key, (2,))
    >>> bmsbi.simulate_at(sim, np.zeros((5, 2), np.float32), key=jax.random.key(0)).shape
    (5, 2)
    """
    if not callable(simulator):
        raise ValueError(f"simulator: expected a callable simulator(theta, key) -> x, got {type(simulator).__name__}")
    theta = np.asarray(theta, dtype=np.float32)
    if theta.ndim != 2 or theta.shape[0] == 0:
        raise ValueError(f"theta: expected shape (n, d) with n >= 1, got {theta.shape}")
    if not np.isfinite(theta).all():
        raise ValueError(f"theta: {int((~np.isfinite(theta)).any(axis=1).sum())} rows hold NaN or inf")
    chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=True)
    k_sim = as_key(key)
    sim_fn = _build_sim_fn(simulator)
    fn = sim_fn[0]
    x_shape, dtype, _, _, work = _probe(sim_fn, theta.shape[1], k_sim)
    sharding, n_dev = _local_sharding()
    n = theta.shape[0]
    cs = _resolve_chunk_size(chunk_size, n, int(np.prod(x_shape, dtype=np.int64)) * dtype.itemsize, n_dev, work)
    out = []
    for start in range(0, n, cs):
        idx = np.arange(start, start + cs, dtype=np.int32)
        rows = np.minimum(idx, n - 1)  # pad the last chunk by repeating the last row
        out.append(_run_chunk(fn, theta[rows], idx, k_sim, sharding, x_shape)[: min(cs, n - start)])
    return np.concatenate(out)


def _resolve_chunk_size(chunk_size, n, bytes_per_sim, n_dev, work_per_sim):
    if chunk_size is None:
        largest = max(1, min(n, _CHUNK_MAX_SIMS, _CHUNK_BYTES // max(bytes_per_sim, 1),
                             _CHUNK_WORK_BYTES // max(work_per_sim, 1)))
        chunk_size = math.ceil(n / math.ceil(n / largest))  # equal chunks: the last one pads little
    chunk_size = min(int(chunk_size), n)
    return int(math.ceil(chunk_size / n_dev) * n_dev)


def _bank_folder(path) -> Path | None:
    """``path`` as a bank folder, refused early when it cannot be one."""
    return folder_path(path, "bank folder", " (for a one-file bank, simulate without path and call "
                                            "bank.save('name.npz'))")


def _check_budget(n: int, rows: int, row_bytes: int, folder: Path | None) -> None:
    """Refuse a budget whose bank cannot fit in memory (it is returned) or on disk (``path``)."""
    need = rows * row_bytes
    avail = _available_memory()
    if avail is not None and need > avail:
        raise ValueError(
            f"num_simulations: {n} simulations need about {_size(need)} of memory to return the bank, "
            f"but {_size(avail)} is available; simulate fewer (several banks with different keys "
            "can be concatenated)")
    if folder is not None:
        stored = sum(p.stat().st_size for p in folder.glob("chunk-*.npz")) if folder.is_dir() else 0
        free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
        if need - stored > free:
            raise ValueError(
                f"num_simulations: {n} simulations need about {_size(need - stored)} more on disk at "
                f"path {folder}, but {_size(free)} is free; simulate fewer or choose another path")


def _resume_doubt(old: Mapping, fingerprint: Mapping, folder: Path, opaque: bool) -> str:
    """Why a stored chunk must be simulated again before resuming (empty: no need); refuses other arguments."""
    stored = old.get("fingerprint")
    if not isinstance(stored, dict):
        raise ValueError(f"path: {folder} holds a bank written by Bank.save, which simulate_bank cannot "
                         "resume; use a new path")
    diff = sorted(k for k in set(fingerprint) | set(stored) if fingerprint.get(k) != stored.get(k))
    others = [k for k in diff if k != "simulator_code"]  # a new shape or prior changes the trace too
    if others:
        raise BankMismatchError(
            f"path: {folder} holds a bank made with other arguments (differs in {others}); "
            "use a new path, or the original arguments to resume", others)
    if "simulator_code" not in stored:
        return "the bank predates simulator fingerprints"
    if diff:
        return "the simulator's trace differs from the one that began the bank"
    if opaque:
        return "the simulator calls code its trace does not show (a host callback or FFI)"
    return ""


def _check_same_simulator(fn, folder: Path, c: int, manifest: Mapping, theta_fn, keys, sharding, why: str):
    """Simulate stored chunk ``c`` again; refuse to resume when it differs from what is stored."""
    data = _read_chunk(folder, c, manifest)
    cs = manifest["chunk_size"]
    idx = np.arange(c * cs, (c + 1) * cs, dtype=np.int32)
    theta = np.asarray(theta_fn(idx, keys[0]))
    x = _run_chunk(fn, theta, idx, keys[1], sharding, tuple(manifest["x_shape"]))[:len(data["x"])]
    if not np.allclose(x, data["x"], rtol=1e-5, atol=1e-6, equal_nan=True):
        raise BankMismatchError(
            f"simulator: computes other values than the simulator that made the bank at path {folder} "
            f"(chunk {c} simulated again differs; checked because {why}); use a new path, or the original "
            "simulator to resume", ["simulator"])


def simulate_bank(simulator: Callable, prior, num_simulations: int, *, key, chunk_size: int | None = None,
                  path=None, progress: bool = True, on_invalid: str = "drop", meta=None,
                  trials: int | None = None) -> Bank:
    """Simulate ``num_simulations`` parameter draws from ``prior`` through ``simulator``.

    Parameters
    ----------
    simulator : callable
        ``simulator(theta (d,), key) -> x`` (float array of fixed shape), JAX-traceable.
        It may build brainmass/brainstate models inside: each call runs under
        ``brainstate.random.seed_context(key)``, so brainstate noise is per-simulation
        and reproducible. Run ``brainmass.Simulator.run(..., jit=False)`` inside it.
    prior : bmsbi.Prior or dict
        Prior to draw ``theta`` from (a dict of numpyro distributions is wrapped).
    num_simulations : int
        Number of simulations ``n > 0``.
    key : jax PRNG key or int
        Master key. Simulation ``i`` uses keys derived from ``(key, i)``: ``theta`` is
        identical for any ``chunk_size``, device count or process count, and ``x`` equal
        up to floating-point reassociation; the same settings give bitwise the same bank.
    chunk_size : int, optional
        Simulations per compiled call (bounds memory). Default: as many as fit in about
        256 MiB of output and in about 2 GiB of working memory (noise and trajectories held
        before a summary, estimated from the simulator's trace), at most 4,096, split into
        chunks of equal size. Rounded up to a multiple of the local device count; the
        parameter axis of each chunk is split over all local devices.
    path : str or Path, optional
        Bank folder. Each finished chunk is written atomically; calling again with the
        same arguments resumes after a crash or kill and yields exactly the uninterrupted
        bank. A folder holding a bank made with other arguments — or by a simulator that
        computes something else (see the module docstring: the fingerprint digests the
        simulator's trace) — is refused. Missing parent folders are created; a file at
        ``path`` is refused. A folder written by an older bmsbi (no simulator digest)
        still loads, and resumes once one stored chunk, simulated again, matches. Under
        ``jax.distributed`` each process simulates and writes its own chunks into the
        shared folder; :meth:`Bank.load` merges them.
    progress : bool
        Show a tqdm bar with simulations/s and the count of invalid simulations.
    on_invalid : {"drop", "raise", "keep"}
        Policy for simulations whose output has NaN/inf: drop them, raise
        ``ValueError``, or keep them. Their count and indices go into ``bank.meta``
        (``num_invalid``, ``invalid_indices``) in every case.
    meta : dict, optional
        JSON metadata describing the bank (e.g. its task, summary and prior, as
        :meth:`simulators.Task.bank` records); merged into ``bank.meta`` and stored in a
        bank folder's manifest, so :meth:`Bank.load` returns it too.
    trials : int, optional
        Simulate ``K = trials`` iid trials per parameter draw, each with its own key
        (trial ``j`` of simulation ``i`` from ``(key, i, j)``): ``x`` has shape
        ``(n, K, *x_shape)`` and ``bank.meta["trials"] == K``. A simulation counts as
        invalid when any of its trials is. Estimators read the second axis as trials
        (:class:`bmsbi.Trials`); chunking and resuming work as without.

    Raises
    ------
    ValueError
        Bad arguments, each naming the argument; ``num_simulations`` whose bank cannot
        fit in the available memory (it is returned) or, with ``path``, on the disk
        (checked before simulating); a simulator returning a scalar per simulation.

    Returns
    -------
    Bank
        With ``len(bank) == num_simulations - num_invalid`` under ``"drop"``. Under
        ``jax.distributed`` without ``path``, each process returns only the chunks it
        simulated.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, bmsbi
    >>> prior = bmsbi.Prior.uniform([-1.], [1.], names=["mu"])
    >>> sim = lambda theta, key: theta + 0.1 * jax.random.normal(key, (3,))
    >>> bank = bmsbi.simulate_bank(sim, prior, 100, key=jax.random.key(0), progress=False)
    >>> bank.theta.shape, bank.x.shape
    ((100, 1), (100, 3))
    >>> bmsbi.simulate_bank(sim, prior, 100, key=0, trials=5, progress=False).x.shape
    (100, 5, 3)
    """
    if not callable(simulator):
        raise ValueError(f"simulator: expected a callable simulator(theta, key) -> x, got {type(simulator).__name__}")
    prior = as_prior(prior)
    n = check_positive_int(num_simulations, "num_simulations")
    chunk_size = check_positive_int(chunk_size, "chunk_size", allow_none=True)
    trials = check_positive_int(trials, "trials", allow_none=True)
    if on_invalid not in _ON_INVALID:
        raise ValueError(f"on_invalid: expected one of {_ON_INVALID}, got {on_invalid!r}")
    user_meta = dict(meta or {})
    if trials is not None:
        if "trials" in user_meta and user_meta["trials"] != trials:
            raise ValueError(f"meta: holds trials={user_meta['trials']!r} but trials={trials}")
        user_meta["trials"] = trials
    try:
        json.dumps(user_meta, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta: expected JSON-serialisable metadata ({exc})") from None
    folder = _bank_folder(path)
    key = as_key(key)
    k_theta, k_sim = jax.random.split(key)
    sim_fn = _build_sim_fn(simulator, trials)
    fn = sim_fn[0]
    x_shape, x_dtype, code, opaque, work = _probe(sim_fn, prior.dim, k_sim)
    if x_shape[0 if trials is None else 1:] == ():
        raise ValueError(
            "simulator: returns a scalar (shape ()) per simulation; estimators need a vector of "
            "features: return jnp.atleast_1d(x) (shape (1,))")
    # theta_i depends on (key, i) only: identical for any chunking or device count.
    theta_fn = _theta_fn(prior)

    sharding, n_dev = _local_sharding()
    bytes_per_sim = int(np.prod(x_shape, dtype=np.int64)) * x_dtype.itemsize
    cs = _resolve_chunk_size(chunk_size, n, bytes_per_sim, n_dev, work)
    n_chunks = math.ceil(n / cs)
    proc, n_proc = jax.process_index(), jax.process_count()
    mine = range(proc, n_chunks, n_proc)  # lazy: nothing as long as the budget is built
    # Bytes per simulation held (and stored): x, theta (float32) and its index (int32).
    _check_budget(n, min(n, len(mine) * cs), bytes_per_sim + 4 * prior.dim + 4, folder)

    fingerprint = {"simulator": _simulator_name(simulator), "simulator_code": code, "num_simulations": n,
                   "chunk_size": cs, "key": np.asarray(jax.random.key_data(key)).tolist(),
                   "on_invalid": on_invalid, "x_shape": list(x_shape), "x_dtype": str(x_dtype)}
    if trials is not None:
        fingerprint["trials"] = trials
    try:
        fingerprint["prior"] = prior.to_dict()
    except ValueError:
        fingerprint["prior"] = repr(prior)
    manifest = {"format": _FORMAT, "schema": SCHEMA_VERSION, "names": list(prior.names),
                "num_simulations": n, "chunk_size": cs, "num_chunks": n_chunks, "x_shape": list(x_shape),
                "on_invalid": on_invalid, "fingerprint": fingerprint,
                "bank_id": hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16],
                "meta": user_meta}
    if folder is not None:
        old = _read_manifest(folder) if folder.is_dir() else None
        if old is not None:
            why = _resume_doubt(old, fingerprint, folder, opaque)
            manifest["bank_id"] = old.get("bank_id", manifest["bank_id"])  # its chunks carry the old id
            if why:
                first = min((c for c in _present_chunks(folder) if c < n_chunks and c % n_proc == proc), default=None)
                if first is not None:
                    _check_same_simulator(fn, folder, first, manifest, theta_fn, (k_theta, k_sim), sharding, why)
        elif folder.exists() and any(folder.iterdir()):
            raise ValueError(f"path: {folder} exists, is not empty and holds no bmsbi bank; choose a new folder")
        if old != manifest and proc == 0:
            bio.atomic_write(folder / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine) and min(n, len(mine) * cs), unit="sim", desc="simulate_bank",
                   dynamic_ncols=True)
    results, n_invalid, t0 = {}, 0, time.perf_counter()
    if folder is not None:
        # A run killed while writing leaves its temporary files; live writers (other
        # processes of a jax.distributed run) hold a lock on theirs, so these stay.
        bio.remove_stale_temporaries(folder, ".chunk-*.npz.*.tmp")
    try:
        for c in mine:
            count = min(cs, n - c * cs)
            data = _read_chunk(folder, c, manifest) if folder is not None else None
            if data is None:
                # Pad the last chunk to the compiled shape; the padding is simulated and discarded.
                idx = np.arange(c * cs, (c + 1) * cs, dtype=np.int32)
                theta = np.asarray(theta_fn(idx, k_theta))
                x = _run_chunk(fn, theta, idx, k_sim, sharding, x_shape)
                theta, x, idx = theta[:count], x[:count], idx[:count]
                if on_invalid == "raise" and not _finite_rows(x).all():
                    bad = idx[~_finite_rows(x)]
                    raise ValueError(
                        f"simulator: {bad.size} simulations returned NaN/inf (first indices {bad[:5].tolist()}, "
                        f"theta {theta[~_finite_rows(x)][:2].tolist()}); pass on_invalid='drop' or 'keep' to continue")
                if folder is not None:
                    _write_chunk(folder, c, idx, theta, x, manifest["bank_id"])
                data = {"index": idx, "theta": theta, "x": x}
            results[c] = data
            n_invalid += int((~_finite_rows(data["x"])).sum())
            if bar is not None:
                bar.set_postfix(invalid=n_invalid, refresh=False)
                bar.update(count)
    finally:
        if bar is not None:
            bar.close()

    index = np.concatenate([results[c]["index"] for c in mine]) if results else np.zeros(0, np.int32)
    theta = np.concatenate([results[c]["theta"] for c in mine]) if results else np.zeros((0, prior.dim), np.float32)
    x = np.concatenate([results[c]["x"] for c in mine]) if results else np.zeros((0, *x_shape), x_dtype)
    theta, x, invalid = _apply_policy(theta, x, index, on_invalid)
    meta = {**user_meta, "num_simulations": n, "num_invalid": len(invalid), "invalid_indices": invalid,
            "on_invalid": on_invalid, "chunk_size": cs, "simulator": fingerprint["simulator"],
            "seconds": round(time.perf_counter() - t0, 3), "devices": n_dev,
            "process_index": proc, "process_count": n_proc}
    return Bank(theta, x, prior.names, meta)
