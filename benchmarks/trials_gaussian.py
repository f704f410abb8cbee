"""iid trials on 3-D linear-Gaussian: one NPE for 1..K trials, and NLE summing over trials.

Model: ``theta ~ N(0, I_3)``, each trial ``x_j = theta + N(0, 0.5^2 I)``; the posterior
given ``k`` trials is Gaussian with precision ``1 + 4 k`` (exact). A bank of
``--simulations`` draws with ``K = 20`` trials each (``simulate_bank(..., trials=20)``)
trains NPE with each flow family (one posterior for every ``k``) and NLE (every trial a
training pair; NUTS sums the per-trial log-likelihood). Reported per ``k`` in
{1, 5, 20}: the worst posterior-mean error in posterior sds and the worst
``|sd / exact sd - 1|`` over 5 true parameters (4,000 draws each), and fit times.

Run: ``python benchmarks/trials_gaussian.py [--simulations 20000] [--flows nsf maf]``
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import numpy as np
import numpyro.distributions as dist

import bmsbi

S, K = 0.5, 20
PRIOR = bmsbi.Prior({f"t{i}": dist.Normal(0.0, 1.0) for i in range(3)})


def simulator(theta, key):
    return theta + S * jax.random.normal(key, (3,))


def errors(post, num_truths=5):
    rng = np.random.default_rng(11)
    out = {}
    for seed in range(num_truths):
        theta = rng.normal(size=3).astype(np.float32)
        x_k = (theta + S * np.random.default_rng(100 + seed).normal(size=(K, 3))).astype(np.float32)
        for k in (1, 5, 20):
            draws = np.asarray(post.sample(jax.random.key(seed), bmsbi.Trials(x_k[:k]), 4000))
            prec = 1.0 + k / S**2
            mean, sd = x_k[:k].sum(0) / S**2 / prec, prec**-0.5
            m_err = float(np.max(np.abs(draws.mean(0) - mean)) / sd)
            s_err = float(np.max(np.abs(draws.std(0) / sd - 1)))
            prev = out.get(k, (0.0, 0.0))
            out[k] = (max(prev[0], m_err), max(prev[1], s_err))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--simulations", type=int, default=20000)
    p.add_argument("--flows", nargs="+", default=["nsf", "maf"])
    p.add_argument("--seed", type=int, default=20)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    bank = bmsbi.simulate_bank(simulator, PRIOR, args.simulations, key=args.seed, trials=K, progress=False)
    print(f"bank: {args.simulations} x {K} trials in {time.perf_counter() - t0:.1f} s (seed {args.seed})")
    print(f"{'estimator':22s} {'fit s':>6s} {'epochs':>6s}  " +
          "  ".join(f"k={k:<2d} mean/sd  sd err" for k in (1, 5, 20)))
    runs = [(f"NPE {flow}", bmsbi.NPE(density_estimator=flow)) for flow in args.flows]
    runs.append(("NLE (every trial)", bmsbi.NLE()))
    for label, est in runs:
        t0 = time.perf_counter()
        post = est.fit(bank, prior=PRIOR, key=args.seed + 1, progress=False)
        fit = time.perf_counter() - t0
        res = errors(post)
        cells = "  ".join(f"{res[k][0]:14.3f} {res[k][1]:7.3f}" for k in (1, 5, 20))
        print(f"{label:22s} {fit:6.0f} {len(post.history.val_loss):6d}  {cells}", flush=True)


if __name__ == "__main__":
    main()
