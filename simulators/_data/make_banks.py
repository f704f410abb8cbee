"""Regenerate the banks shipped with :mod:`simulators` (``<task>_bank.npz``).

Run from anywhere with the package installed::

    python -m simulators._data.make_banks            # all tasks
    python -m simulators._data.make_banks hopf_node  # some tasks

Each bank is ``task.bank(512, jax.random.key(SEEDS[task]))``: the parameters are
identical on every machine and the summaries equal up to floating-point
reassociation (bitwise on the same machine and library versions). Simulations that
return NaN/inf are dropped and counted in ``meta["num_invalid"]``. Only
reproducible metadata is stored (no timings), with the library versions used.
"""

from __future__ import annotations

import sys
from pathlib import Path

NUM_SIMULATIONS = 512
SEEDS = {"hopf_node": 1, "jansen_rit": 2, "wilson_cowan": 3, "montbrio": 4, "hopf_network": 5}
_KEEP = ("num_simulations", "num_invalid", "invalid_indices", "on_invalid", "task", "summary")


def make_bank(name: str, out_dir: Path | None = None, progress: bool = True) -> Path:
    """Simulate and write the bank of task ``name``; returns the file written."""
    import brainmass
    import jax

    import bmsbi
    import simulators

    task = simulators.get(name)
    bank = task.bank(NUM_SIMULATIONS, jax.random.key(SEEDS[name]), progress=progress)
    meta = {k: bank.meta[k] for k in _KEEP}
    meta.update(
        seed=SEEDS[name], prior=task.prior.to_dict(), feature_names=task.feature_names,
        fs=task.fs, recording_shape=[task.n_time, task.n_regions],
        generator="simulators/_data/make_banks.py",
        versions={"bmsbi": bmsbi.__version__, "brainmass": brainmass.__version__, "jax": jax.__version__})
    out = (out_dir or Path(__file__).resolve().parent) / f"{name}_bank.npz"
    bmsbi.Bank(bank.theta, bank.x, bank.names, meta).save(out)
    out.chmod(0o644)  # package data: readable by everyone (the atomic writer creates 0600 files)
    return out


def main(argv=None) -> int:
    import simulators

    names = list(argv if argv is not None else sys.argv[1:]) or simulators.list_tasks()
    for name in names:
        path = make_bank(name)
        print(f"{name}: wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
