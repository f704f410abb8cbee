"""The ``bmsbi`` command: ``bmsbi demo``, ``bmsbi simulate`` and friends.

Every verb prints one clear line and exits with status 2 on bad input (missing
file, wrong shape, unknown task), instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _task(name: str):
    import simulators

    try:
        return simulators.get(name)
    except (KeyError, ValueError):
        raise CLIError(f"unknown task {name!r}; available: {', '.join(simulators.list_tasks())}") from None


def _key(seed: int):
    import jax

    return jax.random.key(seed)


# ------------------------------------------------------------------- simulate
def cmd_simulate(args) -> None:
    import bmsbi

    task = _task(args.task)
    out = Path(args.out)
    bank = bmsbi.simulate_bank(task.simulator, task.prior, args.num_simulations, key=_key(args.seed),
                               chunk_size=args.chunk_size, path=None if out.suffix == ".npz" else out,
                               progress=not args.quiet, on_invalid=args.on_invalid)
    if out.suffix == ".npz":
        bank.save(out)
    print(f"wrote {len(bank)} simulations of task {task.name!r} to {out} "
          f"({bank.meta['num_invalid']} invalid, policy {bank.meta['on_invalid']!r})")


# ----------------------------------------------------------------------- demo
def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(task_name=args.task, out=Path(args.out), num_simulations=args.num_simulations,
             seed=args.seed, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bmsbi",
        description="Simulation-based, amortized inference for brainmass neural-mass models.")
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    d = sub.add_parser("demo", help="end-to-end run on an embedded default model",
                       description="Simulate a bank for a brainmass model, train NPE, infer on a "
                                   "held-out synthetic recording, check calibration and write plots, "
                                   "a netCDF InferenceData and a text report.")
    d.add_argument("--out", default="bmsbi-demo", help="output folder (default: %(default)s)")
    d.add_argument("--task", default="hopf_node", help="task from the simulators package (default: %(default)s)")
    d.add_argument("--num-simulations", type=int, default=None, help="bank size (default: the task's demo size)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("simulate", help="simulate a bank for a ready-made task",
                       description="Simulate NUM_SIMULATIONS draws from a task's prior and write the "
                                   "bank (a folder: resumable; or a .npz file).")
    s.add_argument("task", help="task name (see `bmsbi tasks`)")
    s.add_argument("-n", "--num-simulations", type=int, required=True)
    s.add_argument("--out", required=True, help="bank folder (resumable) or .npz file")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chunk-size", type=int, default=None)
    s.add_argument("--on-invalid", choices=["drop", "raise", "keep"], default="drop")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_simulate)

    t = sub.add_parser("tasks", help="list the ready-made tasks")
    t.set_defaults(func=cmd_tasks)
    return p


def cmd_tasks(args) -> None:
    import simulators

    for name in simulators.list_tasks():
        task = simulators.get(name)
        print(f"{name:14s} {', '.join(task.prior.names):30s} {task.description}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        args.func(args)
    except (CLIError, ValueError, FileNotFoundError) as exc:
        print(f"bmsbi {args.verb}: error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    if getattr(args, "verbose_time", False):
        print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
