"""NPE accuracy and speed: bmsbi vs sbi vs hand-written flowjax, on the same simulations.

For each task (sbibm's two-moons and 10-D Gaussian-linear, `benchmarks/tasks.py`) and
each simulation budget, one bank is simulated with a fixed seed and handed to all
contenders in the same run:

* ``bmsbi``:   ``bmsbi.NPE().fit(bmsbi.Bank(theta, x), prior=prior, key=key)``, then
  ``posterior.sample(key, x_obs, n)``;
* ``sbi``:     sbi's ``NPE(density_estimator="nsf")`` with its defaults, in its own
  PyTorch venv through ``benchmarks/_sbi_runner.py`` (``--sbi-python``);
* ``flowjax``: a conditional spline MAF fitted with ``flowjax.train.fit_to_data``
  (`benchmarks/flowjax_baseline.py`).

Reported per contender: wall time of the fit (compilation included: it is what a user
waits for), epochs, C2ST against exact reference samples (sbibm's definition, mean and
sd over the observations; 0.5 is best), a cheap moment check (``mean err``: RMS of the
posterior-mean error in reference sds), the time of 10,000 samples for one
observation, and the fit-time ratio to sbi.

C2ST dominates the run time in 10-D: sbibm's classifier (two hidden layers of 100)
trains for ~500 epochs on indistinguishable sets, about 1 min CPU per fold at 1,000
samples per set on this machine and roughly 10x that at 10,000. For Gaussian-linear
here use ``--num-samples 1000`` (or ``--no-c2st``) unless hours are available. For bmsbi it also times, after
compilation, 10,000 samples for one observation and 1,000 observations x 1,000
samples in one call (amortized inference on many recordings).

Seeds: the bank of (task, budget) comes from ``jax.random.fold_in(key(seed), budget)``;
observation ``i`` from ``numpy.random.default_rng(1000 + i)`` (`tasks.observation`);
reference samples for observation ``i`` use numpy seed ``i``; contenders get key
``seed + 1``; C2ST uses sklearn seed 1 as sbibm.

torch threads: the sbi contender runs with ``--torch-threads 1`` by default. On this
small shared machine torch's default (one OpenMP thread per core, busy-waiting) made
sbi's two-moons 1k fit 17x slower (947 s vs 55 s, same 195 epochs) when other jobs held
the cores; the networks are far too small to gain from intra-op threads.

A contender that is missing (bmsbi's NPE not written yet, no sbi venv) or fails is
reported in the table and the others still run. The machine is small and shared:
read ratios, not absolute times.

    python benchmarks/npe_vs_sbi.py                                  # full run, appends RESULTS.md
    python benchmarks/npe_vs_sbi.py --quick                          # two-moons 1k, 2 obs, 1k samples
    python benchmarks/npe_vs_sbi.py --tasks two_moons --budgets 10000 --contenders sbi flowjax
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import tasks as bt  # noqa: E402
from bmsbi.diagnostics import c2st  # noqa: E402

CONTENDERS = ("bmsbi", "sbi", "flowjax")
DEFAULT_SBI_PYTHON = os.environ.get("BMSBI_SBI_PYTHON", "/work/sbi-venv/bin/python")


class Unavailable(Exception):
    """A contender cannot run here (missing API or environment)."""


@dataclass
class Outcome:
    contender: str
    status: str = "ok"  # "ok", "skipped: ...", "error: ..."
    fit_s: float = float("nan")
    epochs: int | None = None
    samples: np.ndarray | None = None  # (m, n, d)
    sample_10k_s: float = float("nan")
    c2st: list[float] = field(default_factory=list)
    mean_err: list[float] = field(default_factory=list)  # RMS over dims of (mean - ref mean) / ref sd
    extra: dict = field(default_factory=dict)


def _block(x):
    """Wait for JAX's asynchronous dispatch; objects that are not arrays pass through."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(x) if isinstance(leaf, jax.Array)]
    jax.block_until_ready(leaves)
    return x


# --------------------------------------------------------------------------- contenders
def _bmsbi_prior(task: bt.Task):
    import bmsbi

    if not hasattr(bmsbi, "Prior"):
        raise Unavailable("bmsbi.Prior not available yet")
    if task.prior_kind == "uniform":
        return bmsbi.Prior.uniform(task.prior_low, task.prior_high, names=task.names)
    import numpyro.distributions as dist

    return bmsbi.Prior(
        {
            name: dist.Normal(float(loc), float(scale))
            for name, loc, scale in zip(task.names, task.prior_low, task.prior_high)
        }
    )


def run_bmsbi(task, theta, x, x_obs, num_samples, seed, timing=True, npe_options=None) -> Outcome:
    import bmsbi

    missing = [n for n in ("NPE", "Bank", "Prior") if not hasattr(bmsbi, n)]
    if missing:
        raise Unavailable(f"bmsbi has no {', '.join(missing)} yet")
    out = Outcome("bmsbi")
    prior = _bmsbi_prior(task)
    key_fit, key_sample = jax.random.split(jax.random.key(seed + 1))

    bank = bmsbi.Bank(theta, x, names=task.names)
    npe = bmsbi.NPE(**(npe_options or {}))
    quiet = {"progress": False} if "progress" in inspect.signature(npe.fit).parameters else {}
    t0 = time.perf_counter()
    posterior = npe.fit(bank, prior=prior, key=key_fit, **quiet)
    _block(posterior)
    out.fit_s = time.perf_counter() - t0
    history = getattr(posterior, "history", None)
    out.epochs = _epochs(history)
    epoch_time = getattr(history, "epoch_time", None)
    if epoch_time:  # seconds to the end of the first epoch: mostly compilation
        out.extra["first_epoch_s"] = float(epoch_time[0])
    if timing:  # a second fit in this process on a fresh bank of the same shape (another key)
        theta2, x2 = task.simulate_bank(jax.random.key(seed + 11), len(theta))
        bank2 = bmsbi.Bank(np.asarray(theta2, np.float32), np.asarray(x2, np.float32), names=task.names)
        t0 = time.perf_counter()
        second = npe.fit(bank2, prior=prior, key=jax.random.fold_in(key_fit, 1), **quiet)
        _block(second)
        out.extra["second_fit_s"] = time.perf_counter() - t0
        out.extra["second_fit_epochs"] = _epochs(getattr(second, "history", None))
        second_times = getattr(getattr(second, "history", None), "epoch_time", None)
        if second_times:
            out.extra["second_first_epoch_s"] = float(second_times[0])

    keys = jax.random.split(key_sample, len(x_obs))
    out.samples = np.stack(
        [np.asarray(posterior.sample(k, xo.astype(np.float32), num_samples)) for k, xo in zip(keys, x_obs)]
    )
    if timing:
        x0 = x_obs[0].astype(np.float32)
        _block(posterior.sample(keys[0], x0, 10_000))  # compile this shape
        t0 = time.perf_counter()
        _block(posterior.sample(keys[0], x0, 10_000))
        out.sample_10k_s = time.perf_counter() - t0
        many = np.repeat(x_obs.astype(np.float32), -(-1000 // len(x_obs)), axis=0)[:1000]
        _block(posterior.sample(keys[0], many, 1000))
        t0 = time.perf_counter()
        res = _block(posterior.sample(keys[0], many, 1000))
        out.extra["1000x1000_s"] = time.perf_counter() - t0
        if np.shape(res) != (1000, 1000, task.dim_theta):
            out.extra["1000x1000_shape"] = np.shape(res)
        # 1,000 different observations from the prior predictive (fresh simulations): with
        # a box prior some lie near its edges, where more rejection rounds are needed.
        _, fresh = task.simulate_bank(jax.random.key(seed + 7), 1000)
        fresh = np.asarray(fresh, np.float32)
        _block(posterior.sample(keys[0], fresh, 1000))
        t0 = time.perf_counter()
        _block(posterior.sample(keys[0], fresh, 1000))
        out.extra["1000x1000_prior_predictive_s"] = time.perf_counter() - t0
    return out


def _epochs(history):
    """Epoch count from bmsbi's history (``History.epochs``) or a dict of loss lists."""
    if history is None:
        return None
    if isinstance(getattr(history, "epochs", None), int):
        return history.epochs
    for name in ("train_loss", "train"):
        try:
            return len(history[name])
        except (KeyError, TypeError, IndexError):
            pass
    return None


def run_sbi(task, theta, x, x_obs, num_samples, seed, sbi_python, torch_threads=1,
            theta_obs=None) -> Outcome:
    """sbi's NPE on the bank, in the sbi interpreter; with ``theta_obs`` (m, d) the outcome's
    ``extra`` also holds the posterior's log densities at the draws and at ``theta_obs``."""
    if not Path(sbi_python).exists():
        raise Unavailable(f"no sbi interpreter at {sbi_python} (see benchmarks/requirements-sbi.txt)")
    out = Outcome("sbi")
    with tempfile.TemporaryDirectory() as tmp:
        path_in, path_out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(
            path_in,
            theta=theta,
            x=x,
            x_obs=x_obs.astype(np.float32),
            num_samples=np.int64(num_samples),
            seed=np.int64(seed + 1),
            task=np.str_(task.name),
            prior_kind=np.str_(task.prior_kind),
            prior_a=task.prior_low.astype(np.float32),
            prior_b=task.prior_high.astype(np.float32),
            torch_threads=np.int64(torch_threads),
            **({} if theta_obs is None else {"theta_obs": np.asarray(theta_obs, np.float32)}),
        )
        env = dict(os.environ)
        if torch_threads > 0:
            env["OMP_NUM_THREADS"] = str(torch_threads)
        proc = subprocess.run(
            [sbi_python, str(HERE / "_sbi_runner.py"), str(path_in), str(path_out)],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"_sbi_runner.py failed:\n{proc.stderr[-3000:]}")
        print("   ", proc.stdout.strip(), file=sys.stderr, flush=True)
        res = np.load(path_out)
        out.fit_s = float(res["train_s"])
        out.epochs = int(res["epochs"])
        out.samples = res["samples"]
        out.extra["sample_s_per_obs"] = float(np.mean(res["sample_s"]))
        if theta_obs is not None:
            out.extra["log_prob_samples"] = res["log_prob_samples"]
            out.extra["log_prob_theta"] = res["log_prob_theta"]
        out.extra["version"] = (
            f"sbi {res['sbi_version']}, torch {res['torch_version']} "
            f"({int(res['torch_threads'])} thread(s))"
        )
        # sbi samples num_samples per observation; scale to 10k for the common column.
        out.sample_10k_s = out.extra["sample_s_per_obs"] * 10_000 / num_samples
    return out


def run_flowjax(task, theta, x, x_obs, num_samples, seed) -> Outcome:
    from benchmarks.flowjax_baseline import fit_flowjax_npe

    out = Outcome("flowjax")
    key_fit, key_sample = jax.random.split(jax.random.key(seed + 1))
    t0 = time.perf_counter()
    posterior = fit_flowjax_npe(theta, x, key_fit)
    _block(posterior.flow)
    out.fit_s = time.perf_counter() - t0
    out.epochs = posterior.epochs
    keys = jax.random.split(key_sample, len(x_obs))
    out.samples = np.stack([np.asarray(posterior.sample(k, xo, num_samples)) for k, xo in zip(keys, x_obs)])
    _block(posterior.sample(keys[0], x_obs[0], 10_000))
    t0 = time.perf_counter()
    _block(posterior.sample(keys[0], x_obs[0], 10_000))
    out.sample_10k_s = time.perf_counter() - t0
    return out


# --------------------------------------------------------------------------- driver
def run_case(task_name, budget, args):
    task = bt.get_task(task_name)
    key = jax.random.fold_in(jax.random.key(args.seed), budget)
    theta, x = task.simulate_bank(key, budget)
    _, x_obs = bt.observations(task, args.num_observations)
    refs = [task.reference_posterior(xo, args.num_samples, seed=i + 1) for i, xo in enumerate(x_obs)]

    outcomes = []
    for name in args.contenders:
        print(f"[{task_name} n={budget}] {name} ...", file=sys.stderr, flush=True)
        try:
            if name == "bmsbi":
                out = run_bmsbi(task, theta, x, x_obs, args.num_samples, args.seed, timing=not args.no_timing,
                                npe_options=args.npe_options)
            elif name == "sbi":
                out = run_sbi(
                    task, theta, x, x_obs, args.num_samples, args.seed, args.sbi_python, args.torch_threads
                )
            else:
                out = run_flowjax(task, theta, x, x_obs, args.num_samples, args.seed)
        except Unavailable as err:
            print(f"    skipped: {err}", file=sys.stderr, flush=True)
            outcomes.append(Outcome(name, status=f"skipped: {err}"))
            continue
        except Exception as err:  # keep the other contenders running
            traceback.print_exc()
            outcomes.append(Outcome(name, status=f"error: {type(err).__name__}: {err}".splitlines()[0][:120]))
            continue
        for ref, samples in zip(refs, out.samples):
            samples = np.asarray(samples, np.float64)
            finite = np.all(np.isfinite(samples), axis=1)
            if not finite.all():
                out.extra["nonfinite"] = out.extra.get("nonfinite", 0) + int((~finite).sum())
            samples = samples[finite]
            z = (samples.mean(0) - ref.mean(0)) / ref.std(0)
            out.mean_err.append(float(np.sqrt(np.mean(z**2))))
            if not args.no_c2st:
                out.c2st.append(c2st(ref, samples, seed=1))
        print(
            f"    fit {out.fit_s:.1f} s, epochs {out.epochs}, mean err {np.mean(out.mean_err):.3f}, "
            f"C2ST {np.mean(out.c2st) if out.c2st else float('nan'):.3f} "
            f"({', '.join(f'{c:.3f}' for c in out.c2st)}) {out.extra}",
            file=sys.stderr,
            flush=True,
        )
        outcomes.append(out)
    return task_name, budget, outcomes


def table(cases) -> str:
    head = (
        "| task | sims | contender | fit s | epochs | C2ST mean ± sd | mean err | fit time / sbi "
        "| C2ST − sbi | 10k samples s |\n|---|---:|---|---:|---:|---|---:|---:|---:|---:|"
    )
    rows = [head]
    for task_name, budget, outcomes in cases:
        sbi = next((o for o in outcomes if o.contender == "sbi" and o.status == "ok"), None)
        for o in outcomes:
            if o.status != "ok":
                rows.append(f"| {task_name} | {budget} | {o.contender} | — | — | {o.status} | — | — | — | — |")
                continue
            ratio = f"{o.fit_s / sbi.fit_s:.2f}" if sbi else "—"
            if o.c2st:
                mean, sd = float(np.mean(o.c2st)), float(np.std(o.c2st))
                c2st_cell = f"{mean:.3f} ± {sd:.3f}"
                diff = f"{mean - float(np.mean(sbi.c2st)):+.3f}" if sbi and sbi.c2st else "—"
            else:
                c2st_cell, diff = "—", "—"
            epochs = "—" if o.epochs is None else o.epochs
            rows.append(
                f"| {task_name} | {budget} | {o.contender} | {o.fit_s:.1f} | {epochs} "
                f"| {c2st_cell} | {np.mean(o.mean_err):.3f} | {ratio} | {diff} | {o.sample_10k_s:.3f} |"
            )
    return "\n".join(rows)


def notes(cases, args) -> str:
    lines = [
        f"C2ST: sbibm definition, {args.num_samples} posterior vs {args.num_samples} exact "
        f"reference samples, mean ± sd over {args.num_observations} observations (0.5 best)."
        if not args.no_c2st else "C2ST skipped (--no-c2st).",
        "mean err: RMS over parameters of (estimated mean − reference mean) / reference sd, "
        "averaged over the observations (0 best; sampling noise alone gives about "
        f"{np.sqrt(2.0 / args.num_samples):.3f}).",
    ]
    lines.append(
        "fit s: wall time of the fit call, compilation included (sbi: `train()`); "
        "10k samples s: one observation, after compilation (sbi: scaled from its per-"
        "observation sampling time, which includes rejection to the prior's support)."
    )
    versions = set()
    for task_name, budget, outcomes in cases:
        for o in outcomes:
            if o.status == "ok" and "1000x1000_s" in o.extra:
                lines.append(
                    f"bmsbi {task_name} n={budget}, after compilation: 10,000 samples for one "
                    f"observation {o.sample_10k_s:.3f} s; 1,000 observations × 1,000 samples "
                    f"in one call {o.extra['1000x1000_s']:.3f} s (the observations repeated)"
                    + (f", {o.extra['1000x1000_prior_predictive_s']:.3f} s (1,000 different "
                       "prior-predictive observations)"
                       if "1000x1000_prior_predictive_s" in o.extra else "")
                    + (f"; fit's first epoch (mostly compilation) ended at "
                       f"{o.extra['first_epoch_s']:.1f} s." if "first_epoch_s" in o.extra else ".")
                    + (f" A second fit in the same process on a fresh bank of the same shape: "
                       f"{o.extra['second_fit_s']:.1f} s for {o.extra['second_fit_epochs']} epochs "
                       f"(first epoch ended at {o.extra.get('second_first_epoch_s', float('nan')):.2f} s; "
                       f"the first fit: {o.fit_s:.1f} s for {o.epochs} epochs)."
                       if "second_fit_s" in o.extra else "")
                )
            if o.status == "ok" and "version" in o.extra:
                versions.add(o.extra["version"])
    for version in sorted(versions):
        lines.append(f"sbi contender: {version}, density_estimator='nsf', its defaults.")
    return "\n".join(f"- {line}" for line in lines)


def append_results(text: str) -> None:
    path = HERE / "RESULTS.md"
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\n"
            "Appended by the scripts in `benchmarks/`; each section names its command, the\n"
            "date and the environment. The machines are small and shared: compare ratios\n"
            "within a section, not absolute times across sections.\n"
        )
    with open(path, "a") as f:
        f.write(text + "\n")


def report(heading: str, script: str, argv, table: str, notes: list, append: bool) -> None:
    """Print a run's table and notes; with ``append``, add them to RESULTS.md under ``heading``
    with the command line (``argv``, or ``sys.argv`` when None) and the environment."""
    nts = "\n".join(f"- {n}" for n in notes)
    print(table)
    print()
    print(nts)
    if append:
        cmd = f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)
        env = (f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
               f"Python {platform.python_version()}")
        append_results(f"\n{heading}\n\n`{cmd.strip()}` ({env}; shared machine)\n\n{table}\n\n{nts}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(bt.SBIBM_TASKS), choices=list(bt.TASKS))
    p.add_argument("--budgets", nargs="+", type=int, default=[1000, 10000])
    p.add_argument("--num-observations", type=int, default=5)
    p.add_argument("--num-samples", type=int, default=10_000,
                   help="posterior and reference samples per observation for C2ST")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--quick", action="store_true",
                   help="two_moons, 1000 simulations, 2 observations, 1000 samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sbi-python", default=DEFAULT_SBI_PYTHON)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch threads for the sbi contender (0: torch's default)")
    p.add_argument("--no-c2st", action="store_true",
                   help="skip C2ST (costly in 10-D: minutes per observation on 2 cores)")
    p.add_argument("--no-timing", action="store_true", help="skip bmsbi's extra sampling timings")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    p.add_argument("--npe-options", type=json.loads, default=None,
                   help='bmsbi.NPE settings as JSON, e.g. \'{"tail_bound": 5.0}\' (default: its defaults)')
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.budgets = ["two_moons"], [1000]
        args.num_observations, args.num_samples = 2, 1000
    return args


def main(argv=None):
    args = parse_args(argv)
    cases = [run_case(t, b, args) for t in args.tasks for b in args.budgets]
    md, nts = table(cases), notes(cases, args)
    print(md)
    print()
    print(nts)
    if not args.no_append:
        cmd = "python benchmarks/npe_vs_sbi.py " + " ".join(sys.argv[1:] if argv is None else argv)
        env = (
            f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}"
        )
        append_results(
            f"\n## NPE vs sbi vs flowjax — {datetime.date.today().isoformat()}\n\n"
            f"`{cmd.strip()}` ({env}; shared machine: read the ratios)\n\n{md}\n\n{nts}"
        )


if __name__ == "__main__":
    main()
