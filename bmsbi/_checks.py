"""Small argument checks shared by the public calls (errors name the argument)."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["as_key", "check_positive_int"]


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
