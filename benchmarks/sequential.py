"""Truncated sequential NPE (TSNPE) against amortized NPE on two-moons (issue 17).

Acceptance line: "TSNPE on two-moons at 5 rounds x 1,000 simulations: C2ST <= the
amortized 10k C2ST (mean over 5 observations)".

* ``amortized``: ``benchmarks/npe_vs_sbi.py``'s bmsbi contender (``run_case``: one bank
  of ``--amortized-budget`` simulations from the prior, ``bmsbi.NPE()`` defaults, the
  same bank seed, observations, reference seeds and C2ST as there);
* ``tsnpe``: ``bmsbi.SequentialNPE(rounds, simulations_per_round)`` with ``bmsbi.NPE()``
  defaults or ``--npe-options`` (``--epsilon``; ``--warm-start``: each round continues from the previous
  round's network), one run per observation (key ``seed + 1`` folded with the observation index),
  simulating with the task's JAX simulator (``benchmarks/tasks.py``).

C2ST is sbibm's (``bmsbi.diagnostics.c2st``, seed 1) of ``--num-samples`` posterior
draws against as many exact reference draws (reference seed ``i + 1`` for observation
``i``, as in ``npe_vs_sbi.py``); 0.5 is best. ``fit s`` is the wall time of the whole
fit (all rounds, compilation included).

    python benchmarks/sequential.py                     # 5 obs, 5 x 1,000 vs 10k; appends RESULTS.md
    python benchmarks/sequential.py --num-observations 2 --no-append
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bmsbi  # noqa: E402
from benchmarks import npe_vs_sbi  # noqa: E402
from benchmarks import tasks as bt  # noqa: E402
from bmsbi.diagnostics import c2st  # noqa: E402

HEADING = "## TSNPE on two-moons (issue 17)"


def run_tsnpe(task, x_obs, refs, args):
    """One SequentialNPE fit per observation: C2ST, mean error, fit seconds, rounds info."""
    prior = bmsbi.Prior.uniform(task.prior_low, task.prior_high, names=task.names)
    rows = []
    for i, (xo, ref) in enumerate(zip(x_obs, refs)):
        seq = bmsbi.SequentialNPE(rounds=args.rounds, simulations_per_round=args.simulations_per_round,
                                  epsilon=args.epsilon, warm_start=args.warm_start,
                                  npe=bmsbi.NPE(**json.loads(args.npe_options)))
        key = jax.random.fold_in(jax.random.key(args.seed + 1), i)
        t0 = time.perf_counter()
        post = seq.fit(task.simulate, prior, xo.astype(np.float32), key=key, progress=False)
        fit_s = time.perf_counter() - t0
        samples = np.asarray(post.sample(jax.random.fold_in(key, 99), xo.astype(np.float32), args.num_samples),
                             np.float64)
        z = (samples.mean(0) - ref.mean(0)) / ref.std(0)
        row = {"c2st": c2st(ref, samples, seed=1), "mean_err": float(np.sqrt(np.mean(z**2))), "fit_s": fit_s,
               "fractions": [r["truncated_prior_fraction"] for r in seq.rounds_info],
               "methods": [r["method"] for r in seq.rounds_info],
               "epochs": [r["epochs"] for r in seq.rounds_info]}
        print(f"    obs {i + 1}: C2ST {row['c2st']:.3f}, mean err {row['mean_err']:.3f}, fit {fit_s:.1f} s, "
              f"truncated prior {', '.join(f'{f:.3f}' for f in row['fractions'])}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--simulations-per-round", type=int, default=1000)
    p.add_argument("--amortized-budget", type=int, default=10_000)
    p.add_argument("--num-observations", type=int, default=5)
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--epsilon", type=float, default=1e-4)
    p.add_argument("--warm-start", action="store_true",
                   help="continue each round from the previous round's network (SequentialNPE(warm_start=True))")
    p.add_argument("--npe-options", default="{}",
                   help='settings of every round\'s bmsbi.NPE as JSON, e.g. \'{"ensemble": 3}\' (default: its defaults)')
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)

    task = bt.get_task("two_moons")
    _, x_obs = bt.observations(task, args.num_observations)
    refs = [task.reference_posterior(xo, args.num_samples, seed=i + 1) for i, xo in enumerate(x_obs)]

    print(f"[two_moons] amortized NPE, {args.amortized_budget} simulations ...", file=sys.stderr, flush=True)
    amortized_args = npe_vs_sbi.parse_args(
        ["--tasks", "two_moons", "--budgets", str(args.amortized_budget), "--contenders", "bmsbi",
         "--num-observations", str(args.num_observations), "--num-samples", str(args.num_samples),
         "--seed", str(args.seed), "--no-timing", "--no-append"])
    _, _, (amortized,) = npe_vs_sbi.run_case("two_moons", args.amortized_budget, amortized_args)
    if amortized.status != "ok":
        raise SystemExit(f"amortized NPE failed: {amortized.status}")

    total = args.rounds * args.simulations_per_round
    print(f"[two_moons] TSNPE {args.rounds} x {args.simulations_per_round} ...", file=sys.stderr, flush=True)
    rows = run_tsnpe(task, x_obs, refs, args)

    tsnpe_c2st = [r["c2st"] for r in rows]
    lines = [
        "| method | simulations | C2ST per observation | C2ST mean ± sd | mean err | fit s (per obs.) |",
        "|---|---:|---|---|---:|---:|",
        f"| amortized NPE | {args.amortized_budget} | {', '.join(f'{c:.3f}' for c in amortized.c2st)} "
        f"| {np.mean(amortized.c2st):.3f} ± {np.std(amortized.c2st):.3f} | {np.mean(amortized.mean_err):.3f} "
        f"| {amortized.fit_s:.1f} (once) |",
        f"| TSNPE {args.rounds} × {args.simulations_per_round}, "
        f"{'warm start' if args.warm_start else 'from scratch'}, ε = {args.epsilon:g}"
        f"{'' if args.npe_options == '{}' else ', NPE ' + args.npe_options} | {total} per obs. "
        f"| {', '.join(f'{c:.3f}' for c in tsnpe_c2st)} | {np.mean(tsnpe_c2st):.3f} ± {np.std(tsnpe_c2st):.3f} "
        f"| {np.mean([r['mean_err'] for r in rows]):.3f} | {np.mean([r['fit_s'] for r in rows]):.1f} |",
    ]
    md = "\n".join(lines)
    met = np.mean(tsnpe_c2st) <= np.mean(amortized.c2st)
    notes = [
        f"C2ST: sbibm definition, {args.num_samples} posterior vs {args.num_samples} exact reference samples, "
        f"observations 1–{args.num_observations} of `benchmarks/tasks.py` (0.5 best).",
        f"Truncated-prior fraction per round (prior mass of the (1 − ε) HPD region the round drew from, ε = {args.epsilon:g}), "
        "per observation: " + "; ".join(
            f"obs {i + 1}: " + ", ".join(f"{f:.3f}" for f in r["fractions"]) for i, r in enumerate(rows)) + ".",
        "Methods per round: " + ", ".join(sorted({m for r in rows for m in r["methods"]})) + "; epochs per round "
        "(obs 1): " + ", ".join(str(e) for e in rows[0]["epochs"]) + ".",
        f"Acceptance line (mean TSNPE C2ST ≤ mean amortized C2ST): {'met' if met else 'NOT met'} "
        f"({np.mean(tsnpe_c2st):.3f} vs {np.mean(amortized.c2st):.3f}).",
    ]
    npe_vs_sbi.report(HEADING, "sequential.py", argv, md, notes, not args.no_append)

if __name__ == "__main__":
    main()
