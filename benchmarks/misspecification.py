"""Misspecification tests side by side (issue 18): MMD with a simulated null vs the kNN OOD score.

Training simulations: ``--train`` draws of ``hopf_node`` (the bank of
``benchmarks/model_comparison.py``'s cache is reused when present). Both tests are fitted
on their summaries: :class:`bmsbi.misspecification.MMDTest` and
:class:`bmsbi.ood.OODReference` (the score every posterior carries). Each recording is
tested alone and rejected at ``p < 0.05`` (both give a p-value from held-out
simulations; the OOD reference's own flag, ``score > 1``, is set for ``alpha = 0.001``
and is reported too).

- false-positive rate: ``--fresh`` fresh ``hopf_node`` simulations (not in training);
- power: the same simulations with 50 Hz line noise of amplitude ``--line`` times each
  recording's standard deviation; ``--fresh`` simulations of each other single-node
  task (``jansen_rit``, ``wilson_cowan``, ``montbrio``) through the same summary; and
  ``hopf_node`` recordings sampled at 500 Hz (resampled by 2) but read as 250 Hz.
- the MMD test also on sets of ``--set-size`` recordings of one family tested together
  (``--sets`` sets each, rows drawn without replacement).

The real-fMRI family of the issue is not included: real fMRI (0.5 or 1.39 Hz, 94
regions) cannot enter a test fitted on ``hopf_node``'s 250 Hz single-region recordings;
it needs the test fitted on a ``hopf_bold_*`` bank.

Run::

    PYTHONPATH=. python benchmarks/misspecification.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import numpy as np
from scipy.signal import resample_poly

import bmsbi
import simulators
from bmsbi.misspecification import MMDTest
from bmsbi.ood import OODReference


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--fresh", type=int, default=1000)
    ap.add_argument("--line", type=float, default=0.5, help="line-noise amplitude / recording sd")
    ap.add_argument("--set-size", type=int, default=10, help="recordings per set tested together")
    ap.add_argument("--sets", type=int, default=200, help="sets per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/bmsbi-bench-model-comparison")
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}")
    key = jax.random.key(args.seed)
    n = args.train + args.fresh
    banks = {}
    for i, name in enumerate(("hopf_node", "jansen_rit", "wilson_cowan", "montbrio")):
        task = simulators.get(name)
        t0 = time.perf_counter()
        bank = task.bank(n, jax.random.fold_in(key, i), progress=False,
                         path=os.path.join(args.cache, f"{name}-{n}-{args.seed}"))
        banks[name] = bank[np.flatnonzero(bank.finite_mask())]
        print(f"bank {name}: {len(banks[name])} finite of {n}, {time.perf_counter() - t0:.1f} s")
    task = simulators.get("hopf_node")
    train = banks["hopf_node"].x[:args.train]
    fresh = banks["hopf_node"][np.arange(args.train, len(banks["hopf_node"]))]
    t0 = time.perf_counter()
    mmd = MMDTest.fit(train, seed=args.seed)
    knn = OODReference.fit(train, seed=args.seed)
    print(f"fitted {mmd} and the kNN reference in {time.perf_counter() - t0:.1f} s")

    recs = np.asarray(bmsbi.simulate_at(task.observe_fn, fresh.theta, key=jax.random.fold_in(key, 50)), np.float32)
    summarise = lambda r: np.asarray(task.summary.batch(np.asarray(r, np.float32)), np.float32).reshape(  # noqa: E731
        (len(r),) + tuple(train.shape[1:]))
    t = np.arange(recs.shape[1]) / task.fs
    line = np.sin(2 * np.pi * 50.0 * t)[None, :, None] * args.line * recs.std(axis=1, keepdims=True)
    fast = resample_poly(recs, 2, 1, axis=1)[:, :recs.shape[1]]
    families = {
        f"fresh hopf_node simulations (false positives; {len(fresh)})": fresh.x,
        f"fresh hopf_node simulations, recomputed from raw recordings ({len(recs)})": summarise(recs),
        f"+ 50 Hz line noise, {args.line:g} x sd": summarise(recs + line),
        "hopf_node at 500 Hz read as 250 Hz": summarise(fast),
    }
    for name in ("jansen_rit", "wilson_cowan", "montbrio"):
        families[f"{name} simulations"] = banks[name].x[args.train:]
    print("\nrejection rate at p < 0.05 (first two rows: false-positive rate, nominal 0.05; others: power); "
          f"last column: {args.sets} sets of {args.set_size} recordings tested together by the MMD test\n")
    print(f"| recordings | n | MMD test | kNN score, p < 0.05 | kNN flag (score > 1, alpha 0.001) | "
          f"MMD test, sets of {args.set_size} |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for label, x in families.items():
        p_mmd = mmd.pvalues(x)
        p_knn = knn.pvalue(x)
        sets = [mmd.pvalue(x[np.random.default_rng(s).choice(len(x), args.set_size, replace=False)])
                for s in range(args.sets)]
        print(f"| {label} | {len(x)} | {(p_mmd < 0.05).mean():.3f} | {(p_knn < 0.05).mean():.3f} | "
              f"{knn.flag(x).mean():.3f} | {np.mean(np.array(sets) < 0.05):.3f} |")
    print(f"\n(tests of all rows: {time.perf_counter() - t0:.1f} s)")

if __name__ == "__main__":
    main()
