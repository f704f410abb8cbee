"""Model comparison on the four single-node tasks (issue 18): calibration, accuracy, speed.

The four single-node tasks (``hopf_node``, ``jansen_rit``, ``wilson_cowan``,
``montbrio``: 1 region, 1000 samples at 250 Hz, one shared summary pipeline) are each
simulated ``--train + --heldout`` times from their priors (equal budgets; banks cached
in ``--cache``, rows with a failed simulation dropped). On the training rows:

* ``ModelComparison``: bmsbi's classifier with the engine's early stopping (defaults);
* ``no early stopping``: the same classifier, no validation split, all ``--epochs``
  epochs, the last epoch's weights;
* ``kNN``: scikit-learn's ``KNeighborsClassifier`` (``--k`` neighbours) on the z-scored
  summaries, probabilities = the neighbours' shares.

On the held-out rows of every task (never seen in training): expected calibration error
(10 equal-width bins of the top probability on [0, 1]; :func:`bmsbi.comparison.expected_calibration_error`),
accuracy overall and per model, and the confusion matrix. Then the time of
``probabilities`` for 1,000 raw recordings (250 per task, simulated afresh at held-out
parameters) in one call, after training: the first call (compiles) and the median of
five more, for a batch array ``(1000, time, 1)`` and for a list of 1,000
``bmsbi.Recording``.

Run::

    PYTHONPATH=. python benchmarks/model_comparison.py --train 3000 --heldout 1000
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import jax
import numpy as np

import bmsbi
import simulators
from bmsbi.comparison import expected_calibration_error

TASKS = ("hopf_node", "jansen_rit", "wilson_cowan", "montbrio")


def scores(name, p, labels, models):
    k = len(models)
    pred = p.argmax(axis=1)
    confusion = np.zeros((k, k), int)
    np.add.at(confusion, (labels, pred), 1)
    per = confusion.diagonal() / confusion.sum(axis=1)
    return {"method": name, "ece": expected_calibration_error(p, labels), "accuracy": float((pred == labels).mean()),
            "per_model": per, "confusion": confusion}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=3000, help="training simulations per task")
    ap.add_argument("--heldout", type=int, default=1000, help="held-out simulations per task")
    ap.add_argument("--epochs", type=int, default=150, help="epochs of the no-early-stopping baseline")
    ap.add_argument("--k", type=int, default=50, help="neighbours of the kNN baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/bmsbi-bench-model-comparison")
    args = ap.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    key = jax.random.key(args.seed)
    n = args.train + args.heldout
    train, held, thetas = {}, {}, {}
    for i, name in enumerate(TASKS):
        task = simulators.get(name)
        t0 = time.perf_counter()
        bank = task.bank(n, jax.random.fold_in(key, i), progress=False,
                         path=os.path.join(args.cache, f"{name}-{n}-{args.seed}"))
        ok = bank.finite_mask()
        bank = bank[np.flatnonzero(ok)]
        m = min(args.train, len(bank) - args.heldout)
        train[name], held[name] = bank[np.arange(m)], bank[np.arange(m, len(bank))]
        thetas[name] = held[name].theta[:250]
        print(f"bank {name}: {len(bank)} finite of {n} ({(~ok).sum()} dropped), {time.perf_counter() - t0:.1f} s; "
              f"train {len(train[name])}, held out {len(held[name])}")

    models = TASKS
    x_held = np.concatenate([held[t].x for t in models]).astype(np.float32)
    y_held = np.repeat(np.arange(len(models)), [len(held[t]) for t in models])
    results = []

    t0 = time.perf_counter()
    mc = bmsbi.ModelComparison().fit(train, key=jax.random.fold_in(key, 10), progress=False)
    fit_s = time.perf_counter() - t0
    print(f"ModelComparison: {mc.history}, fit {fit_s:.1f} s")
    cal = mc.calibration(held)
    results.append(scores("ModelComparison (early stopping)", mc.probabilities(x_held), y_held, models))
    assert abs(results[-1]["ece"] - cal.ece) < 1e-9 or len({len(held[t]) for t in models}) > 1

    t0 = time.perf_counter()
    plain = bmsbi.ModelComparison(patience=None, validation_fraction=0.0, max_epochs=args.epochs).fit(
        train, key=jax.random.fold_in(key, 10), progress=False)
    print(f"no early stopping: {plain.history}, fit {time.perf_counter() - t0:.1f} s")
    results.append(scores(f"same classifier, no early stopping ({args.epochs} epochs)",
                          plain.probabilities(x_held), y_held, models))

    from sklearn.neighbors import KNeighborsClassifier

    x_train = np.concatenate([train[t].x for t in models]).reshape(-1, int(np.prod(mc.x_shape)))
    y_train = np.repeat(np.arange(len(models)), [len(train[t]) for t in models])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    knn = KNeighborsClassifier(n_neighbors=args.k).fit((x_train - mean) / std, y_train)
    p_knn = knn.predict_proba((x_held.reshape(len(x_held), -1) - mean) / std)
    results.append(scores(f"kNN on z-scored summaries (k={args.k})", p_knn, y_held, models))

    print(f"\nheld-out: {', '.join(f'{t} {len(held[t])}' for t in models)} simulations\n")
    print("| method | ECE | accuracy | " + " | ".join(f"acc. {t}" for t in models) + " |")
    print("|---|---|---|" + "---|" * len(models))
    for r in results:
        print(f"| {r['method']} | {r['ece']:.4f} | {r['accuracy']:.4f} | "
              + " | ".join(f"{v:.3f}" for v in r["per_model"]) + " |")
    for r in results:
        print(f"\nconfusion, {r['method']} (rows: true model, columns: most probable; counts)\n")
        print("| true \\ called | " + " | ".join(models) + " |")
        print("|---|" + "---|" * len(models))
        for t, row in zip(models, r["confusion"]):
            print(f"| {t} | " + " | ".join(str(v) for v in row) + " |")
    print("\nModelComparison.calibration (reliability bins):")
    print(cal)
    for lo, c, a, w in zip(cal.bin_edges[:-1], cal.bin_confidence, cal.bin_accuracy, cal.bin_count):
        if w:
            print(f"  [{lo:.1f}, {lo + 0.1:.1f}): {w:5d} rows, mean top probability {c:.3f}, share correct {a:.3f}")

    # 1,000 raw recordings (250 per task) at held-out parameters, in one call.
    recs = np.concatenate([np.asarray(bmsbi.simulate_at(simulators.get(t).observe_fn, thetas[t],
                                                        key=jax.random.fold_in(key, 20 + i)))
                           for i, t in enumerate(models)]).astype(np.float32)
    y_recs = np.repeat(np.arange(len(models)), [len(thetas[t]) for t in models])
    fs = simulators.get(models[0]).fs
    as_list = [bmsbi.Recording(r, fs) for r in recs]
    print(f"\nprobabilities for {len(recs)} raw recordings {recs.shape[1:]} in one call:")
    for label, batch in (("batch array", recs), ("list of bmsbi.Recording", as_list)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bmsbi.RecordingWarning)
            fresh = bmsbi.load_model_comparison(mc.save(os.path.join(args.cache, "mc.bmsbi")))
            t0 = time.perf_counter()
            p = fresh.probabilities(batch)
            first = time.perf_counter() - t0
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                fresh.probabilities(batch)
                times.append(time.perf_counter() - t0)
        print(f"  {label}: first call {first:.3f} s (loaded from file, compiles), then median "
              f"{np.median(times):.3f} s; accuracy {(p.argmax(1) == y_recs).mean():.3f}")


if __name__ == "__main__":
    main()
