"""Real resting-state fMRI of 12 people: amortized NPE against the classic grid search.

One run per dataset (``hcp``: 7 subjects, ``gw``: 5 subjects; :mod:`bmsbi.datasets`), on
the whole-brain Hopf BOLD task of that dataset (:mod:`simulators.hopf_bold`):

bmsbi
    one bank of ``--simulations`` prior draws, one NPE fit (``--npe-options``), then ``posterior.infer`` on
    every subject's raw recording in one batched call (the OOD score comes with it), with
    ``robust=True`` (:mod:`bmsbi.robust`: the mixture of the posteriors at the matched
    training simulations) and, beside it from the same network, plain (``robust=False``).
    Posterior-predictive check: ``--draws`` posterior draws per subject, each simulated;
    the FC r of each draw against the subject's FC, the median reported.
grid search (what the literature does: Deco et al. 2017)
    ``G`` on ``--grid-g`` points over its prior range times ``a`` on ``--grid-a`` values,
    ``sigma`` fixed at 0.02, each point simulated once; per subject the point with the
    highest FC r is re-simulated with ``--reseeds`` fresh noise seeds and their r
    averaged, so the maximum over noisy evaluations does not flatter it.

FC r: Pearson correlation between the upper triangles of empirical and simulated FC,
both computed on the linearly detrended, 0.01-0.1 Hz band-passed signals (the task
summary's own filter). FCD KS: two-sample Kolmogorov-Smirnov distance between the
FCD-matrix upper triangles (60 s windows every 10 s), empirical vs the simulation
(posterior: the draw with the median FC r; grid: the first re-seed of the best point).
SC-FC r: correlation between the empirical FC and the group connectome's weights, the
floor any model must beat.

Timing: the grid's simulations are shared by the subjects of a dataset here; a user
fitting one subject pays the whole grid, which is the per-subject time reported.

    python benchmarks/empirical_fmri.py                       # both datasets, RESULTS.md entry
    python benchmarks/empirical_fmri.py --datasets gw --simulations 500 --no-append
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import warnings
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DEFAULTS = {"hcp": 2000, "gw": 2000}


def bandpassed(x: np.ndarray, fs: float) -> np.ndarray:
    """The task summary's preprocessing (detrend + 0.01-0.1 Hz): ``(time, regions)``."""
    from bmsbi.summaries import BandPassed, FC
    from simulators.hopf_bold import BAND

    return np.asarray(BandPassed(fs, BAND[0], BAND[1], FC()).filter(np.asarray(x, np.float32)))


def fc_upper(x: np.ndarray) -> np.ndarray:
    iu = np.triu_indices(x.shape[1], 1)
    return np.corrcoef(x.T)[iu]


def fcd_values(x: np.ndarray, fs: float) -> np.ndarray:
    window, step = max(2, round(60.0 * fs)), max(1, round(10.0 * fs))
    starts = range(0, x.shape[0] - window + 1, step)
    fcs = np.stack([fc_upper(x[s:s + window]) for s in starts])
    return fc_upper(fcs.T)


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    import scipy.stats

    return float(scipy.stats.ks_2samp(a, b).statistic)


def pearson(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def posterior_predictive(task, samples, emp_fc, emp_fcd, args):
    """Per subject: median FC r of ``args.draws`` simulated posterior draws, and the FCD KS of the median draw.

    ``samples`` ``(subjects, n, d)``; draws picked with ``numpy`` seed ``args.seed``, simulated
    in one batch with key ``args.seed + 3``. Returns ``(fc_r, fcd_ks)``, lists over subjects.
    """
    import jax

    import bmsbi

    fs = task.fs
    rng = np.random.default_rng(args.seed)
    draws = np.stack([s[rng.choice(len(s), args.draws, replace=False)] for s in samples])
    sims = np.asarray(bmsbi.simulate_at(task.observe_fn, draws.reshape(-1, draws.shape[-1]).astype(np.float32),
                                        key=jax.random.key(args.seed + 3), chunk_size=args.chunk_size))
    sims = sims.reshape(len(samples), args.draws, *sims.shape[1:])
    ppc_r, ppc_ks = [], []
    for i in range(len(samples)):
        f = [bandpassed(s, fs) for s in sims[i]]
        rs = np.array([pearson(fc_upper(s), emp_fc[i]) for s in f])
        ppc_r.append(float(np.median(rs)))
        mid = int(np.argsort(rs)[len(rs) // 2])
        ppc_ks.append(ks_distance(fcd_values(f[mid], fs), emp_fcd[i]))
    return ppc_r, ppc_ks


def run_dataset(name: str, args) -> dict:
    import jax

    import bmsbi
    import simulators
    from bmsbi import datasets

    task = simulators.get(f"hopf_bold_{name}")
    recs = datasets.load_fmri(name)
    conn = simulators.hopf_bold.coupling_matrix(datasets.load_connectome(name))
    iu = np.triu_indices(task.n_regions, 1)
    fs = task.fs
    emp = [bandpassed(r.data, fs) for r in recs]
    emp_fc = [fc_upper(e) for e in emp]
    emp_fcd = [fcd_values(e, fs) for e in emp]
    out = {"dataset": name, "subjects": [r.name for r in recs], "simulations": args.simulations}

    def observe_batch(theta, key):
        return bmsbi.simulate_at(task.observe_fn, np.asarray(theta, np.float32), key=key,
                                 chunk_size=args.chunk_size)

    def filtered(sim):
        return [bandpassed(s, fs) for s in np.asarray(sim)]

    # ------------------------------------------------------------------ bmsbi
    t0 = time.perf_counter()
    bank = task.bank(args.simulations, jax.random.key(args.seed), chunk_size=args.chunk_size,
                     progress=not args.quiet)
    out["bank_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    post = bmsbi.NPE(**json.loads(args.npe_options)).fit(
        bank, prior=task.prior, key=jax.random.key(args.seed + 1), progress=not args.quiet)
    out["train_s"] = time.perf_counter() - t0
    out["epochs"] = post.history.epochs
    for robust, tag in ((True, ""), (False, "_plain")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)  # the flags are reported
            post.infer(jax.random.key(0), recs, args.samples, robust=robust)  # compile once, as served
            t0 = time.perf_counter()
            res = post.infer(jax.random.key(args.seed + 2), recs, args.samples, robust=robust)
            out["infer_s" + tag] = time.perf_counter() - t0
        samples = np.asarray(res.samples)  # (m, n, d)
        out["posterior_mean" + tag] = samples.mean(axis=1).tolist()
        out["posterior_sd" + tag] = samples.std(axis=1).tolist()
        if robust:  # the OOD scores are the same for both
            out["ess"] = np.asarray(res.ess).tolist()
            out["misfits"] = [res.misfits(i, top=3) for i in range(len(recs))]
            out["ood_score"] = np.asarray(res.ood_score).tolist()
            out["ood_flag"] = np.asarray(res.flagged).tolist()
        t0 = time.perf_counter()
        out["ppc_fc_r" + tag], out["ppc_fcd_ks" + tag] = posterior_predictive(task, samples, emp_fc, emp_fcd,
                                                                              args)
        out["ppc_s" + tag] = time.perf_counter() - t0

    # ------------------------------------------------------------ grid search
    g_values = np.linspace(0.0, simulators.hopf_bold.G_MAX, args.grid_g)  # the prior's range of G
    a_values = np.array(json.loads(args.grid_a))
    grid = np.array([[g, a, 0.02] for a in a_values for g in g_values], np.float32)
    t0 = time.perf_counter()
    gsims = observe_batch(grid, jax.random.key(args.seed + 4))
    out["grid_s"] = time.perf_counter() - t0
    gfc = np.stack([fc_upper(s) for s in filtered(gsims)])
    best_r, best_ks, best_theta = [], [], []
    t0 = time.perf_counter()
    for i in range(len(recs)):
        scores = np.array([pearson(g, emp_fc[i]) for g in gfc])
        best = grid[int(np.nanargmax(scores))]
        resim = filtered(observe_batch(np.tile(best, (args.reseeds, 1)),
                                       jax.random.key(args.seed + 10 + i)))
        best_r.append(float(np.mean([pearson(fc_upper(s), emp_fc[i]) for s in resim])))
        best_ks.append(ks_distance(fcd_values(resim[0], fs), emp_fcd[i]))
        best_theta.append(best.tolist())
    out["reseed_s"] = time.perf_counter() - t0
    out["grid_best_r"], out["grid_fcd_ks"], out["grid_best_theta"] = best_r, best_ks, best_theta
    out["grid_points"] = len(grid)
    out["sc_fc_r"] = [pearson(conn[iu], f) for f in emp_fc]
    return out


def report(res: dict) -> str:
    lines = [f"### {res['dataset']}: {len(res['subjects'])} subjects, {res['simulations']} simulations, "
             f"grid {res['grid_points']} points",
             "",
             "| subject | robust NPE post.-pred. FC r (median of draws) | grid best r (re-simulated) | "
             "difference | plain NPE FC r (difference) | FCD KS robust / plain / grid | SC-FC r | "
             "OOD score (flag) | ESS | posterior mean G, a, sigma (robust; plain) | largest misfits (sd) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, s in enumerate(res["subjects"]):
        diff = res["ppc_fc_r"][i] - res["grid_best_r"][i]
        plain = res["ppc_fc_r_plain"][i]
        mean = ", ".join(f"{v:.3g}" for v in res["posterior_mean"][i])
        mean_plain = ", ".join(f"{v:.3g}" for v in res["posterior_mean_plain"][i])
        mis = ", ".join(f"{n} {v:+.1f}" for n, v in res["misfits"][i])
        lines.append(f"| {s} | {res['ppc_fc_r'][i]:.3f} | {res['grid_best_r'][i]:.3f} | {diff:+.3f} | "
                     f"{plain:.3f} ({plain - res['grid_best_r'][i]:+.3f}) | "
                     f"{res['ppc_fcd_ks'][i]:.2f} / {res['ppc_fcd_ks_plain'][i]:.2f} / {res['grid_fcd_ks'][i]:.2f} | "
                     f"{res['sc_fc_r'][i]:.3f} | "
                     f"{res['ood_score'][i]:.2f} ({'yes' if res['ood_flag'][i] else 'no'}) | {res['ess'][i]:.1f} | "
                     f"{mean}; {mean_plain} | {mis} |")
    n = len(res["subjects"])
    bmsbi_total = res["bank_s"] + res["train_s"] + res["infer_s"]
    grid_one = res["grid_s"] + res["reseed_s"] / n
    lines += ["",
              f"Wall times: bank {res['bank_s']:.0f} s, NPE training {res['train_s']:.0f} s "
              f"({res['epochs']} epochs), inference of all {n} subjects in one call "
              f"{res['infer_s'] * 1000:.0f} ms robust, {res['infer_s_plain'] * 1000:.0f} ms plain; "
              f"posterior-predictive simulations {res['ppc_s']:.0f} s (robust). Grid search: {res['grid_s']:.0f} s for the grid, "
              f"{res['reseed_s'] / n:.1f} s of re-seeds per subject, so one subject costs "
              f"{grid_one:.0f} s and {n} separate grid searches {n * grid_one:.0f} s, against "
              f"{bmsbi_total:.0f} s for bmsbi's bank + training + inference of all {n} "
              f"(ratio {n * grid_one / bmsbi_total:.2f})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["gw", "hcp"], choices=["gw", "hcp"])
    p.add_argument("--simulations", type=int, default=None, help="bank size (default per dataset)")
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--grid-g", type=int, default=25)
    p.add_argument("--grid-a", default="[-0.2, -0.1, -0.05, -0.02, 0.0, 0.02]")
    p.add_argument("--reseeds", type=int, default=5)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--npe-options", default="{}", help="JSON keyword arguments of bmsbi.NPE")
    p.add_argument("--json", type=Path, default=None, help="write the raw results here")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args(argv)
    results = []
    for name in args.datasets:
        a = argparse.Namespace(**vars(args))
        a.simulations = args.simulations or DEFAULTS[name]
        res = run_dataset(name, a)
        results.append(res)
        print(report(res), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_append:
        cmd = "python benchmarks/empirical_fmri.py " + " ".join(sys.argv[1:] if argv is None else argv)
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write(f"\n## Real fMRI: NPE vs grid search ({datetime.date.today()})\n\n"
                     f"Command: `{cmd.strip()}`\n\n" + "\n\n".join(report(r) for r in results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
