"""Ready-made inference tasks built on brainmass models.

Each task is a :class:`Task`: a named :class:`bmsbi.Prior` with literature ranges, a
synthetic-recording generator running a brainmass model through
:class:`brainmass.Simulator` (:meth:`Task.observe`), a default summary statistic
(:attr:`Task.summary`) and their composition :meth:`Task.simulate`, the simulator
to hand to :func:`bmsbi.simulate_bank` (or call :meth:`Task.bank`).

=============  ===============================  ================================  ==========
task           model                            parameters                        recording
=============  ===============================  ================================  ==========
hopf_node      ``HopfStep`` + white noise       a, f, sigma                       (1000, 1)
jansen_rit     ``JansenRitStep``, EEG proxy     A, B, C, mu                       (1000, 1)
wilson_cowan   ``WilsonCowanStep`` + OU noise   wEE, wIE, P, sigma                (1000, 1)
montbrio       ``MontbrioPazoRoxinStep``        eta, J, Delta, sigma              (1000, 1)
hopf_network   ``Network`` of 8 Hopf nodes      G, a, sigma                       (1000, 8)
hopf_bold_hcp  94-region Hopf BOLD, HCP         G, a, sigma                       (1200, 94)
hopf_bold_gw   94-region Hopf BOLD, gw          G, a, sigma                       (355, 94)
=============  ===============================  ================================  ==========

The single-node and 8-region recordings are 4 s at 250 Hz after a discarded 0.5 s
transient. The ``hopf_bold_*`` tasks (:mod:`simulators.hopf_bold`) are whole-brain
resting-state BOLD models on the real connectomes of :mod:`bmsbi.datasets`, sampled at
the dataset's TR (0.72 s or 2 s) for its length; they are built on first use and need
the optional extra ``pip install "bmsbi[empirical]"``. Importing the
package also registers a small pre-simulated bank per task with
``brainmass.datasets`` as ``bmsbi_<task>_bank`` (512 simulations of the default
summary, a :class:`bmsbi.Bank`).

Examples
--------
>>> import jax, simulators
>>> simulators.list_tasks()
['hopf_bold_gw', 'hopf_bold_hcp', 'hopf_network', 'hopf_node', 'jansen_rit', 'montbrio', 'wilson_cowan']
>>> task = simulators.get("jansen_rit")
>>> task.prior.names
('A', 'B', 'C', 'mu')
>>> bank = task.bank(16, jax.random.key(0), progress=False)
>>> bank.x.shape
(16, 15)
>>> import brainmass
>>> brainmass.datasets.load_dataset("bmsbi_jansen_rit_bank").x.shape
(512, 15)
"""

from __future__ import annotations

import functools

from . import hopf_bold, hopf_network, hopf_node, jansen_rit, montbrio, wilson_cowan
from ._datasets import bank_path, dataset_name, load_bank, register_banks
from ._task import Task

__all__ = [
    "Task",
    "get",
    "list_tasks",
    "load_bank",
    "bank_path",
    "dataset_name",
    "hopf_node",
    "jansen_rit",
    "wilson_cowan",
    "montbrio",
    "hopf_network",
    "hopf_bold",
]

_TASKS: dict[str, Task] = {
    m.task.name: m.task for m in (hopf_node, jansen_rit, wilson_cowan, montbrio, hopf_network)
}


# Tasks built on first use (they read data files from an optional extra).
_LAZY = {f"hopf_bold_{name}": functools.partial(hopf_bold.make_task, name)
         for name in hopf_bold.DATASETS}


def list_tasks() -> list[str]:
    """Names of the ready-made tasks, sorted."""
    return sorted([*_TASKS, *_LAZY])


def get(name: str) -> Task:
    """The task called ``name`` (see :func:`list_tasks`).

    Raises
    ------
    KeyError
        For an unknown name; the message lists the available tasks.
    ValueError
        For a ``hopf_bold_*`` task when its data (the extra ``bmsbi[empirical]``) is
        not installed; the message names the extra.
    """
    if name in _LAZY:
        return _LAZY[name]()
    if name not in _TASKS:
        raise KeyError(f"name: unknown task {name!r}; available tasks: {', '.join(list_tasks())}")
    return _TASKS[name]


register_banks(sorted(_TASKS))  # the lazy tasks ship no bank
