"""Pre-simulated banks shipped with the package, registered with ``brainmass.datasets``.

Each task has a small bank (``_data/<task>_bank.npz``, written by
``_data/make_banks.py`` with :meth:`bmsbi.Bank.save`) of 512 simulations of its
default summary. Loading goes through :meth:`bmsbi.Bank.load`: a checksummed ``.npz``
read with ``allow_pickle=False``.
"""

from __future__ import annotations

from pathlib import Path

import bmsbi

__all__ = ["DATA_DIR", "bank_path", "dataset_name", "load_bank", "register_banks"]

DATA_DIR = Path(__file__).resolve().parent / "_data"


def dataset_name(task: str) -> str:
    """The ``brainmass.datasets`` name of a task's bank: ``bmsbi_<task>_bank``."""
    return f"bmsbi_{task}_bank"


def bank_path(task: str) -> Path:
    """Path of the bank file shipped for ``task``."""
    return DATA_DIR / f"{task}_bank.npz"


def load_bank(task: str) -> bmsbi.Bank:
    """Load the shipped bank of ``task`` (512 simulations of its default summary).

    Examples
    --------
    >>> import simulators
    >>> bank = simulators.load_bank("hopf_node")
    >>> bank.names, bank.x.shape
    (('a', 'f', 'sigma'), (512, 15))
    """
    path = bank_path(task)
    if not path.exists():
        raise ValueError(
            f"task: no shipped bank for {task!r} at {path}; regenerate the banks with "
            "`python -m simulators._data.make_banks`")
    return bmsbi.Bank.load(path)


def _loader(task: str):
    def load():
        return load_bank(task)

    load.__name__ = load.__qualname__ = f"load_{task}_bank"
    return load


def register_banks(tasks) -> list[str]:
    """Register ``bmsbi_<task>_bank`` for each task; names already registered are left alone.

    Returns the names registered by this call.
    """
    import brainmass

    registered = dict(brainmass.datasets.list_datasets())
    new = []
    for task in tasks:
        name = dataset_name(task)
        if name in registered:
            continue  # a second import (or importlib.reload) must not raise
        brainmass.datasets.register_dataset(
            name, _loader(task),
            description=f"bmsbi: 512 simulations (theta, default summary) of the simulators "
                        f"task {task!r}, as a bmsbi.Bank")
        new.append(name)
    return new
