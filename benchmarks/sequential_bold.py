"""Truncated sequential NPE (TSNPE) on one real fMRI subject of the 94-region BOLD task (issue 17).

Acceptance line: "on the 94-region BOLD task the posterior-predictive FC r of a subject
within 0.01 of the amortized result with <= 1/4 of its simulations".

``bmsbi.SequentialNPE(rounds, simulations_per_round)`` (``bmsbi.NPE()`` defaults) on the
task ``hopf_bold_gw`` (:mod:`simulators.hopf_bold`), for ONE subject's recording: ``x_obs``
is the task summary of that recording. The posterior-predictive check is
``benchmarks/empirical_fmri.py``'s (:func:`empirical_fmri.posterior_predictive`): ``--draws``
of ``--samples`` posterior draws, each simulated; the median FC r against the subject's
FC, and the FCD KS distance of the median draw. The amortized reference (2,000
simulations, the same check) is read from ``benchmarks/RESULTS.md``, "Real fMRI", run 3,
not run again (``--amortized-r``).

    python benchmarks/sequential_bold.py                                  # gw/NAP_002, 4 x 125
    python benchmarks/sequential_bold.py --rounds 2 --simulations-per-round 250 --no-append
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import bmsbi  # noqa: E402
from benchmarks import empirical_fmri as ef  # noqa: E402
from benchmarks import npe_vs_sbi  # noqa: E402

HEADING = "## TSNPE on one real fMRI subject (hopf_bold_gw) (2026-12-06, issue 17)"
# Amortized NPE, 2,000 simulations: RESULTS.md "Run 3: the committed defaults again" (gw table).
AMORTIZED_R = {"gw/NAP_001": 0.484, "gw/NAP_002": 0.440, "gw/NAP_007": 0.474, "gw/NAP_009": 0.388,
               "gw/NAP_013": 0.314}
AMORTIZED_SIMULATIONS = 2000


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subject", default="gw/NAP_002", choices=sorted(AMORTIZED_R))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--simulations-per-round", type=int, default=125)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warm-start", action="store_true")
    p.add_argument("--robust", action="store_true",
                   help="also check robust inference (posterior.infer(robust=True)) from the same network")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)

    import simulators
    from bmsbi import datasets

    task = simulators.get("hopf_bold_gw")
    rec = next(r for r in datasets.load_fmri("gw") if r.name == args.subject)
    emp = ef.bandpassed(rec.data, task.fs)
    emp_fc, emp_fcd = ef.fc_upper(emp), ef.fcd_values(emp, task.fs)
    x_obs = np.asarray(task.summary(jax.numpy.asarray(rec.data, jax.numpy.float32)), np.float32)

    seq = bmsbi.SequentialNPE(rounds=args.rounds, simulations_per_round=args.simulations_per_round,
                              warm_start=args.warm_start)
    t0 = time.perf_counter()
    post = seq.fit(task, None, x_obs, key=jax.random.key(args.seed + 1), progress=not args.quiet)
    fit_s = time.perf_counter() - t0

    def checked(robust):
        """The posterior at the recording (plain or robust), its posterior-predictive FC r and FCD KS,
        and the seconds of the posterior-predictive simulations."""
        res = post.infer(jax.random.key(args.seed + 2), [rec], args.samples, robust=robust)
        samples = np.asarray(res.samples)  # (1, n, d)
        t0 = time.perf_counter()
        (r,), (ks,) = ef.posterior_predictive(task, samples, [emp_fc], [emp_fcd], args)
        return res, samples, r, ks, time.perf_counter() - t0

    def listed(values):
        return ", ".join(f"{v:.3g}" for v in values)

    res, samples, r, ks, ppc_s = checked(False)
    if args.robust:  # the same network, the posterior mixed over the matched training simulations
        res_rb, samples_rb, r_rb, ks_rb, _ = checked(True)

    total = args.rounds * args.simulations_per_round
    ref = AMORTIZED_R[args.subject]
    mean, sd = listed(samples[0].mean(0)), listed(samples[0].std(0))
    md = "\n".join([
        "| method | simulations | post.-pred. FC r (median of draws) | FCD KS | posterior mean G, a, sigma "
        "| posterior sd | OOD score (flag) |",
        "|---|---:|---:|---:|---|---|---|",
        f"| amortized NPE (RESULTS.md, run 3) | {AMORTIZED_SIMULATIONS} | {ref:.3f} | | | | |",
        f"| TSNPE {args.rounds} × {args.simulations_per_round}"
        f"{', warm start' if args.warm_start else ', from scratch'} | {total} | {r:.3f} | {ks:.2f} | {mean} "
        f"| {sd} | {float(np.asarray(res.ood_score)[0]):.2f} ({'yes' if bool(np.asarray(res.flagged)[0]) else 'no'}) |",
    ] + ([
        f"| TSNPE {args.rounds} × {args.simulations_per_round}, robust inference (ESS "
        f"{float(np.asarray(res_rb.ess)[0]):.1f}) | {total} | {r_rb:.3f} | {ks_rb:.2f} | "
        f"{listed(samples_rb[0].mean(0))} | {listed(samples_rb[0].std(0))} | |"] if args.robust else []))
    met = abs(r - ref) <= 0.01 and 4 * total <= AMORTIZED_SIMULATIONS
    notes = [
        f"Subject {args.subject}; {args.draws} of {args.samples} posterior draws simulated (empirical_fmri.py's "
        f"check, numpy seed {args.seed}, simulation key {args.seed + 3}).",
        "Truncated-prior fraction per round: " + ", ".join(
            f"{x['truncated_prior_fraction']:.3g}" for x in seq.rounds_info) + "; methods: " + ", ".join(
            x["method"] for x in seq.rounds_info) + "; epochs: " + ", ".join(str(x["epochs"]) for x in seq.rounds_info)
        + f"; invalid simulations: {sum(x['num_invalid'] for x in seq.rounds_info)}.",
        f"Wall time: SequentialNPE fit {fit_s:.0f} s (all rounds' simulations and training), "
        f"posterior-predictive simulations {ppc_s:.0f} s.",
        f"Acceptance half (|FC r − amortized| ≤ 0.01 with ≤ 1/4 of {AMORTIZED_SIMULATIONS} simulations): "
        f"{'met' if met else 'NOT met'} ({r:.3f} vs {ref:.3f}, difference {r - ref:+.3f}, {total} simulations).",
    ] + ([f"Robust inference from the same network: FC r {r_rb:.3f} (difference to the amortized plain "
          f"reference {r_rb - ref:+.3f})."] if args.robust else [])
    npe_vs_sbi.report(HEADING, "sequential_bold.py", argv, md, notes, not args.no_append)

if __name__ == "__main__":
    main()
