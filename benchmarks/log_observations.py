"""Observation transforms: NPE on positive observations that span orders of magnitude (issue 17).

On ``lognormal_linear`` (`benchmarks/tasks.py`: 2 parameters, 4 log-normal features
whose values run from about 1e-7 to 1e9, exact Gaussian posterior), one bank is
simulated with a fixed seed and handed to every contender in the same run:

* ``NPE auto``:   ``bmsbi.NPE()`` (``x_transform="auto"``, the default);
* ``NPE none``:   ``bmsbi.NPE(x_transform="none")``: every feature z-scored linearly
  (the behaviour before transforms);
* ``NPE hand-log``: ``bmsbi.NPE(x_transform="none")`` trained on ``log x`` and given
  ``log x_obs`` (what a user who knew would do);
* ``sbi``:        sbi's ``NPE(density_estimator="nsf")`` with its defaults on the raw
  ``x`` (`npe_vs_sbi.run_sbi`, its own PyTorch venv).

Reported: C2ST against exact reference samples (sbibm's definition; mean ± sd over the
observations, 0.5 best) and the ratio of the posterior's standard deviation to the
reference's (per parameter, averaged over parameters; mean and range over the
observations; 1 best). The issue's acceptance line: default NPE's C2ST within 0.02 of
NPE on hand-log-transformed observations, with sbi's NPE beside it.

``--sweep`` adds the measurement behind the ``"auto"`` rule's threshold
(``bmsbi.xtransform.LOG_SPAN``): one parameter, ``log x = c (theta + 0.5 eps)``, so the
posterior is the same Gaussian for every ``c`` while the feature's 99th / 1st
percentile span ``exp(5.2 c)`` grows from 3 to 10^4, and ``x = m + theta + 0.5 eps``
(positive, narrow, additive noise: log is not its natural space); NPE with
``x_transform="none"`` and ``"log"`` on the same bank, posterior-sd ratio to the exact
one and the error of the posterior mean.

    python benchmarks/log_observations.py                        # appends RESULTS.md
    python benchmarks/log_observations.py --sweep --no-append    # also the span sweep
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import tasks as bt  # noqa: E402
from benchmarks.npe_vs_sbi import DEFAULT_SBI_PYTHON, append_results, run_bmsbi, run_sbi  # noqa: E402

TASK = "lognormal_linear"
SECTION = ("## Observation transforms: positive observations over 4 orders of magnitude "
           "(2026-12-06, issue 17)")


def score(refs, samples, c2st: bool = True):
    """``(c2st per observation, sd ratio per observation)``; sd ratio averaged over parameters."""
    cs, ratios = [], []
    for ref, s in zip(refs, samples):
        s = np.asarray(s, np.float64)
        s = s[np.all(np.isfinite(s), axis=1)]
        ratios.append(float(np.mean(s.std(0) / ref.std(0))))
        if c2st:
            cs.append(bt.c2st(ref, s, seed=1))
    return cs, ratios


def compare(args):
    task = bt.get_task(TASK)
    theta, x = task.simulate_bank(jax.random.key(args.seed), args.num_simulations)
    _, x_obs = bt.observations(task, args.num_observations)
    refs = [task.reference_posterior(xo, args.num_samples, seed=i + 1) for i, xo in enumerate(x_obs)]
    lo, hi = np.quantile(x, 0.01, axis=0), np.quantile(x, 0.99, axis=0)
    print(f"bank: {len(x)} simulations; per-feature q99/q01 {np.round(hi / lo).tolist()}; "
          f"overall min {x.min():.2g}, max {x.max():.2g}", file=sys.stderr, flush=True)
    runs = {
        "NPE auto (default)": lambda: run_bmsbi(task, theta, x, x_obs, args.num_samples, args.seed,
                                                timing=False),
        'NPE x_transform="none"': lambda: run_bmsbi(task, theta, x, x_obs, args.num_samples, args.seed,
                                                    timing=False, npe_options={"x_transform": "none"}),
        "NPE on hand-log x": lambda: run_bmsbi(task, theta, np.log(x), np.log(x_obs), args.num_samples,
                                               args.seed, timing=False,
                                               npe_options={"x_transform": "none"}),
        "sbi NPE (nsf, defaults)": lambda: run_sbi(task, theta, x, x_obs, args.num_samples, args.seed,
                                                   args.sbi_python),
    }
    rows = []
    for name, run in runs.items():
        print(f"[{TASK} n={len(x)}] {name} ...", file=sys.stderr, flush=True)
        try:
            out = run()
        except Exception as err:  # keep the other contenders running
            traceback.print_exc()
            rows.append((name, None, [], [], f"error: {type(err).__name__}: {err}".splitlines()[0][:100]))
            continue
        cs, ratios = score(refs, out.samples, c2st=not args.no_c2st)
        print(f"    fit {out.fit_s:.1f} s, epochs {out.epochs}, C2ST {cs}, sd ratio {ratios}",
              file=sys.stderr, flush=True)
        rows.append((name, out, cs, ratios, "ok"))
    return rows


def table(rows) -> str:
    auto = next((r for r in rows if r[0].startswith("NPE auto") and r[2]), None)
    out = ["| contender | fit s | epochs | C2ST mean ± sd | C2ST − auto | posterior sd / reference "
           "(mean [min, max]) |", "|---|---:|---:|---|---:|---|"]
    for name, o, cs, ratios, status in rows:
        if o is None:
            out.append(f"| {name} | — | — | {status} | — | — |")
            continue
        c2 = f"{np.mean(cs):.3f} ± {np.std(cs):.3f}" if cs else "—"
        diff = f"{np.mean(cs) - np.mean(auto[2]):+.3f}" if cs and auto else "—"
        out.append(f"| {name} | {o.fit_s:.1f} | {o.epochs} | {c2} | {diff} | "
                   f"{np.mean(ratios):.2f} [{np.min(ratios):.2f}, {np.max(ratios):.2f}] |")
    return "\n".join(out)


def sweep(args):
    """Posterior-sd ratio with ``"none"`` and ``"log"`` as a feature's span grows (1 parameter)."""
    import bmsbi
    import numpyro.distributions as dist

    prior = bmsbi.Prior({"theta": dist.Normal(0.0, 1.0)})
    n, noise = args.sweep_simulations, 0.5
    rng = np.random.default_rng(args.seed)
    theta = rng.normal(size=(n, 1))
    u = theta + noise * rng.normal(size=(n, 1))
    theta_o = rng.normal(size=(args.num_observations, 1))
    u_o = theta_o + noise * rng.normal(size=theta_o.shape)
    theta = theta.astype(np.float32)
    post_sd = 1.0 / np.sqrt(1.0 + 1.0 / noise**2)  # the same for every c
    lines = ["| feature | span q99/q01 | sd ratio, none | sd ratio, log | mean err (ref sd), none "
             "| mean err (ref sd), log |", "|---|---:|---:|---:|---:|---:|"]
    q = 2 * 2.3263 * np.sqrt(1 + noise**2)  # q99 - q01 of u
    cases = [(f"exp({np.log(span) / q:.2f} u)", np.log(span) / q, None) for span in args.spans]
    cases += [(f"{m:g} + u", None, m) for m in args.offsets]  # additive noise: log is not natural
    for label, c, m in cases:
        x = (np.exp(c * u) if m is None else m + u).astype(np.float32)
        xo = (np.exp(c * u_o) if m is None else m + u_o).astype(np.float32)
        cells = {}
        for mode in ("none", "log"):
            post = bmsbi.NPE(x_transform=mode).fit(bmsbi.Bank(theta, x, names=["theta"]), prior=prior,
                                                   key=jax.random.key(args.seed + 1), progress=False)
            s = np.asarray(post.sample(jax.random.key(2), xo, 4000))[..., 0]  # (m, n)
            mean_ref = post_sd**2 * u_o[:, 0] / noise**2
            cells[mode] = (float(np.mean(s.std(1) / post_sd)),
                           float(np.sqrt(np.mean(((s.mean(1) - mean_ref) / post_sd) ** 2))))
        measured = float(np.quantile(x, 0.99) / np.quantile(x, 0.01))
        lines.append(f"| {label} | {measured:.3g} | {cells['none'][0]:.2f} | {cells['log'][0]:.2f} "
                     f"| {cells['none'][1]:.2f} | {cells['log'][1]:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-simulations", type=int, default=10_000)
    p.add_argument("--num-observations", type=int, default=5)
    p.add_argument("--num-samples", type=int, default=2_000,
                   help="posterior and reference samples per observation for C2ST")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sbi-python", default=DEFAULT_SBI_PYTHON)
    p.add_argument("--no-c2st", action="store_true")
    p.add_argument("--sweep", action="store_true", help="also the span sweep behind LOG_SPAN")
    p.add_argument("--sweep-only", action="store_true", help="only the span sweep")
    p.add_argument("--sweep-simulations", type=int, default=2_000)
    p.add_argument("--spans", nargs="+", type=float, default=[3, 10, 30, 100, 1000, 10000])
    p.add_argument("--offsets", nargs="+", type=float, default=[5.5, 8, 20],
                   help="additive features m + u (positive, narrow) in the sweep")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    parts = []
    if not args.sweep_only:
        rows = compare(args)
        parts.append(table(rows) + "\n\n" + (
            f"- {args.num_simulations} simulations (one bank, seed {args.seed}), "
            f"{args.num_observations} observations (`tasks.observation`), C2ST on "
            f"{args.num_samples} posterior vs {args.num_samples} exact samples (0.5 best); "
            "sd ratio: posterior sd over the exact one, averaged over the 2 parameters "
            "(1 best)."))
    if args.sweep or args.sweep_only:
        parts.append(f"Span sweep (1 parameter, {args.sweep_simulations} simulations, "
                     f"{args.num_observations} observations):\n\n" + sweep(args))
    text = "\n\n".join(parts)
    print(text)
    if not args.no_append:
        cmd = "python benchmarks/log_observations.py " + " ".join(sys.argv[1:] if argv is None else argv)
        env = (f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
               f"Python {platform.python_version()}")
        append_results(f"\n{SECTION}\n\n`{cmd.strip()}` ({env}; shared machine)\n\n{text}")


if __name__ == "__main__":
    main()
