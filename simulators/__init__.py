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

Your own tasks
--------------
A :class:`Task` built in your own module is used everywhere a task name is, in three ways:

* ``simulators.get("my_tasks.wc:task")`` (and ``bmsbi simulate my_tasks.wc:task``):
  a ``"package.module:attribute"`` reference, the attribute a :class:`Task` or a
  zero-argument function returning one;
* ``simulators.register(task)``: known by its name in this process (:func:`unregister`
  removes it);
* an installed package's entry points in the group ``bmsbi.tasks``
  (``[project.entry-points."bmsbi.tasks"] wc = "my_tasks.wc:task"`` in its
  ``pyproject.toml``): known by name in every process, listed by :func:`list_tasks` and
  ``bmsbi tasks``, loaded on first use.

A bank simulated from a task records how to find it again (:attr:`Task.ref`: the
name for named tasks, the ``module:attribute`` reference for referenced ones), so
``bmsbi train`` / ``diagnose`` find the task from the bank or posterior alone. See the
documentation page "Bring your own model".

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

import dataclasses
import functools
import importlib
import importlib.metadata

from . import hopf_bold, hopf_network, hopf_node, jansen_rit, montbrio, wilson_cowan
from ._datasets import bank_path, dataset_name, load_bank, register_banks
from ._task import Task, is_task_name, split_reference

__all__ = [
    "Task",
    "get",
    "list_tasks",
    "register",
    "unregister",
    "ENTRY_POINT_GROUP",
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


#: Entry-point group through which installed packages expose tasks.
ENTRY_POINT_GROUP = "bmsbi.tasks"

# Tasks added with register(): name -> (the task passed, the task as registered).
_REGISTERED: dict[str, tuple[Task, Task]] = {}
# Entry-point tasks already loaded: (name, "module:attr") -> task.
_LOADED: dict[tuple[str, str], Task] = {}


def list_tasks() -> list[str]:
    """Names of every known task, sorted: ready-made, registered and from entry points.

    Entry points (group ``bmsbi.tasks``) are listed without being loaded; a broken one
    shows up when :func:`get` loads it.

    Examples
    --------
    >>> import simulators
    >>> "hopf_node" in simulators.list_tasks()
    True
    """
    return sorted({*_REGISTERED, *_TASKS, *_LAZY, *_entry_points()})


def get(ref: str) -> Task:
    """The task ``ref`` names: a task name (see :func:`list_tasks`) or ``"package.module:attribute"``.

    A reference imports ``package.module`` and takes its (dotted) ``attribute``, which
    must be a :class:`Task` or a zero-argument callable returning one (a factory, called
    on every ``get``). The task comes back with :attr:`Task.reference` set to ``ref``, so
    the banks it simulates record where to find it. Names are looked up among the
    registered tasks (:func:`register`) first, then the ready-made ones, then the
    entry points of the group ``bmsbi.tasks``.

    Raises
    ------
    KeyError
        For an unknown name; the message lists the available tasks.
    ValueError
        For a reference whose module cannot be imported, whose attribute is missing or
        is neither a :class:`Task` nor a factory of one; for an entry point that cannot
        be loaded; for a ``hopf_bold_*`` task when its data (the extra
        ``bmsbi[empirical]``) is not installed. The message names the reference.

    Examples
    --------
    >>> import simulators
    >>> simulators.get("hopf_node").prior.names
    ('a', 'f', 'sigma')
    >>> task = simulators.get("simulators.jansen_rit:task")
    >>> task.name, task.ref
    ('jansen_rit', 'simulators.jansen_rit:task')
    """
    if not isinstance(ref, str):
        raise ValueError(f"ref: expected a task name or a 'package.module:attribute' reference (a str), "
                         f"got {type(ref).__name__}")
    if ":" in ref:
        return _resolve(ref)
    if ref in _REGISTERED:
        return _REGISTERED[ref][1]
    if ref in _TASKS:
        return _TASKS[ref]
    if ref in _LAZY:
        return _LAZY[ref]()
    entry = _entry_points().get(ref)
    if entry is not None:
        return _load_entry_point(entry)
    raise KeyError(f"ref: unknown task {ref!r}; available tasks: {', '.join(list_tasks())}; "
                   "a task of your own: pass 'package.module:attribute'")


def register(task: Task, *, name: str | None = None, replace: bool = False) -> Task:
    """Make ``task`` known to :func:`get`, :func:`list_tasks` and ``bmsbi tasks`` as ``name``.

    Parameters
    ----------
    task : Task
        The task to register.
    name : str, optional
        Registry name (letters, digits, ``_``, ``.``, ``-``); default ``task.name``.
        Under another name the task is registered as a copy carrying that name.
    replace : bool
        Replace (or shadow) an existing task of that name instead of raising.
        Registering the same task under the same name again is always allowed.

    Returns
    -------
    Task
        The task as registered (``get(name)`` returns it).

    The registry lives in this process: a command run later (``bmsbi train`` on a bank
    of a registered task) knows the name only if the task comes from an entry point
    (group ``bmsbi.tasks``); otherwise give the task a ``reference="package.module:attribute"``
    or pass that reference to the command.

    Raises
    ------
    ValueError
        ``task`` is not a :class:`Task`, ``name`` is not a valid name, or a different
        task of that name exists and ``replace`` is false.

    Examples
    --------
    >>> import simulators
    >>> wc = simulators.register(simulators.get("wilson_cowan"), name="my_wc")
    >>> simulators.get("my_wc").name
    'my_wc'
    >>> _ = simulators.unregister("my_wc")
    """
    if not isinstance(task, Task):
        raise ValueError(f"task: expected a simulators.Task, got {type(task).__name__}")
    name = task.name if name is None else name
    if not is_task_name(name):
        raise ValueError(f"name: expected a task name of letters, digits, '_', '.' or '-' (a ':' marks a "
                         f"'package.module:attribute' reference), got {name!r}")
    if name in _REGISTERED and _REGISTERED[name][0] is task:
        return _REGISTERED[name][1]
    if not replace and name in list_tasks():
        raise ValueError(f"name: a task called {name!r} already exists; pass replace=True to replace it "
                         "or register under another name=")
    _REGISTERED[name] = (task, _named(task, name))
    return _REGISTERED[name][1]


def unregister(name: str) -> Task:
    """Remove a task added with :func:`register` and return it.

    A ready-made or entry-point task that it shadowed is visible again.

    Raises
    ------
    KeyError
        When ``name`` was not registered with :func:`register`.

    Examples
    --------
    >>> import simulators
    >>> _ = simulators.register(simulators.get("hopf_node"), name="my_hopf")
    >>> simulators.unregister("my_hopf").name
    'my_hopf'
    """
    if name not in _REGISTERED:
        raise KeyError(f"name: {name!r} was not added with simulators.register; registered: "
                       f"{', '.join(sorted(_REGISTERED)) or 'none'}")
    return _REGISTERED.pop(name)[1]


def _named(task: Task, name: str) -> Task:
    """``task`` known as ``name``; a ``module:attr`` reference is kept (it works in any process)."""
    if task.name == name:
        return task
    reference = task.reference if split_reference(task.reference) else None
    return dataclasses.replace(task, name=name, reference=reference)


def _as_task(obj, where: str) -> Task:
    """``obj`` if it is a Task, else what calling it (a factory) returns, checked."""
    if not isinstance(obj, Task) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ValueError(f"{where}: calling it (a task factory) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Task):
        raise ValueError(f"{where}: expected a simulators.Task or a zero-argument callable returning one, "
                         f"got {type(obj).__name__}")
    return obj


def _resolve(ref: str) -> Task:
    parts = split_reference(ref)
    if parts is None:
        raise ValueError(f"ref: expected a task name or 'package.module:attribute' (dotted Python names "
                         f"around one ':'), got {ref!r}")
    module_name, attribute = parts
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"ref: {ref!r}: cannot import module {module_name!r} ({exc}); put its folder on "
                         "sys.path (PYTHONPATH)") from exc
    except Exception as exc:  # the user's module raised while importing
        raise ValueError(f"ref: {ref!r}: importing module {module_name!r} failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"ref: {ref!r}: module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    task = _as_task(obj, f"ref: {ref!r}")
    return task if task.reference == ref else dataclasses.replace(task, reference=ref)


def _entry_points() -> dict:
    """Entry points of the group ``bmsbi.tasks`` by name (the first of a name wins)."""
    found = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return found


def _load_entry_point(entry) -> Task:
    key = (entry.name, entry.value)
    if key not in _LOADED:
        package = getattr(getattr(entry, "dist", None), "name", None) or "an installed package"
        where = f"ref: task {entry.name!r} (entry point {entry.value!r} of {package}, group {ENTRY_POINT_GROUP})"
        try:
            obj = entry.load()
        except Exception as exc:
            raise ValueError(f"{where}: cannot load it: {type(exc).__name__}: {exc}") from exc
        _LOADED[key] = _named(_as_task(obj, where), entry.name)
    return _LOADED[key]


register_banks(sorted(_TASKS))  # the lazy tasks ship no bank
