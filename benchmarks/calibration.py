"""Calibration study: is the default NPE calibrated on bmsbi's own tasks, and what fixes it?

For each task: a training bank at the task's default budget (``simulators.Task.budget``,
the bank ``bmsbi demo`` simulates: 20,000 for the single-node tasks and ``hopf_network``,
5,000 for the 94-region ``hopf_bold_*`` tasks; ``--num-simulations`` overrides it) and a
separate held-out bank (``--held-out``, its own key), then, per
contender, on the held-out pairs:

- HPD expected coverage (``diagnostics.expected_coverage(method="hpd")``) and TARP
  coverage (``method="tarp"``), each as the maximum |coverage - level| over 19 levels
  0.05..0.95; with ``m`` held-out pairs a calibrated posterior's maximum deviation
  is about ``0.87 / sqrt(m)`` on average (the Kolmogorov distribution's mean), 0.027 at
  ``m = 1,000``;
- SBC: the smallest per-parameter chi-square p-value of the ranks
  (``diagnostics.sbc_uniformity``), against 0.01 / d (Bonferroni);
- held-out log score: mean ``log q(theta_i | x_i)`` (larger is better; a proper score,
  so a remedy that only widens the posterior loses here if it overdoes it).

Contenders (``--contenders``): ``default`` (``bmsbi.NPE()``), ``none``
(``NPE(base_calibration="none")``: the trained flow as it is), ``scale``
(``NPE(base_calibration="scale")``: the flow's base scale fitted on the validation
rows after training), ``truncated`` (``NPE(base_calibration="truncated")``: that scale fitted
by maximum likelihood of the flow cut to the prior's box, as the posterior uses it), ``unconstrained`` (``NPE(theta_space="unconstrained")``: every
parameter modelled through the prior's bijection, box parameters in logit space, so the
flow has no mass outside the prior's support), ``edge`` (``NPE(edge_spline=True)``: a learnt
spline whose ends sit on the prior's box; ``edge_none`` without the fitted scale), ``ensemble3`` / ``ensemble5`` (``NPE(ensemble=3 or 5)``: the equal-weight mixture of three
or five networks trained from different starts), ``ensemble3_scale`` / ``ensemble5_scale``
(the same with ``base_calibration="scale"``: one base scale shared by the members, fitted on
validation rows none of them trained on), ``ensemble3_edge`` / ``ensemble3_scale_edge`` (the
same members, each with the box-edge spline) and ``sbi`` (the sbi package's NPE with its defaults on the same
bank, run by ``benchmarks/_sbi_runner.py`` in the sbi interpreter, ``--sbi-python``).
sbi gets the box prior it supports: ``LogUniform`` parameters enter it as their
logarithm with a uniform prior (the same prior), so its HPD regions are those of
``log theta`` for them; its log score is mapped back to ``theta`` with the Jacobian.

    python benchmarks/calibration.py                                 # four single-node tasks
    python benchmarks/calibration.py --tasks hopf_node --held-out 2000 --contenders default scale

Results are appended to ``benchmarks/RESULTS.md`` unless ``--no-append``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # npe_vs_sbi, for the sbi contender

import bmsbi
import simulators
from bmsbi import diagnostics

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = ("default", "none", "scale", "coverage", "truncated", "unconstrained", "edge", "edge_none", "ensemble3", "ensemble5",
              "ensemble3_scale", "ensemble5_scale", "ensemble3_edge", "ensemble3_scale_edge", "sbi")
DEFAULT_SBI_PYTHON = "/work/sbi-venv/bin/python"


def held_out_metrics(post, theta, x, key) -> dict:
    """HPD / TARP max deviation, worst SBC p-value and mean log score on held-out pairs."""
    k1, k2, k3 = jax.random.split(key, 3)
    hpd = diagnostics.expected_coverage(post, theta, x, key=k1, method="hpd")
    tarp = diagnostics.expected_coverage(post, theta, x, key=k2, method="tarp")
    ranks = diagnostics.sbc_ranks(post, theta, x, key=k3, num_samples=1000)
    pv = diagnostics.sbc_uniformity(ranks, 1000)
    lp = np.asarray(post.log_prob(np.asarray(theta)[:, None, :], np.asarray(x)))[:, 0]
    lv = np.asarray(hpd.levels)
    at = {a: float(np.asarray(hpd.coverage)[np.argmin(np.abs(lv - a))]) for a in (0.5, 0.9)}
    return {"hpd": hpd.max_deviation, "tarp": tarp.max_deviation, "sbc_min_p": float(np.min(pv)),
            "log_score": float(np.mean(lp[np.isfinite(lp)])), "hpd50": at[0.5], "hpd90": at[0.9],
            "finite": float(np.mean(np.isfinite(lp)))}


def sbi_metrics(task, bank, held, args) -> tuple[dict, float, int]:
    """Train sbi's NPE on ``bank`` and score it on ``held`` like :func:`held_out_metrics`."""
    from types import SimpleNamespace

    import numpyro.distributions as dist

    from npe_vs_sbi import run_sbi

    logs = np.array([isinstance(c, dist.LogUniform) for c in task.prior.column_distributions()])
    if not all(isinstance(c, (dist.Uniform, dist.LogUniform)) for c in task.prior.column_distributions()):
        raise ValueError(f"task: sbi's runner takes box priors only, {task.name} has {task.prior}")
    low, high = (np.asarray(b, np.float64) for b in task.prior.bounds())
    low, high = (np.where(logs, np.log(np.abs(b) + (b == 0)), b) for b in (low, high))  # LogUniform bounds are > 0

    def to_sbi(t):
        t = np.asarray(t, np.float64)
        return np.where(logs, np.log(np.where(logs, t, 1.0)), t).astype(np.float32)

    flat = lambda a: np.asarray(a, np.float32).reshape(len(a), -1)
    spec = SimpleNamespace(name=task.name, prior_kind="uniform", prior_low=low, prior_high=high)
    out = run_sbi(spec, to_sbi(bank.theta), flat(bank.x), flat(held.x), 1000, args.seed,
                  args.sbi_python, theta_obs=to_sbi(held.theta))
    theta_s = to_sbi(held.theta)
    sbi_prior = bmsbi.Prior.uniform(low.astype(np.float32), high.astype(np.float32))
    k1, _ = jax.random.split(jax.random.key(args.seed + 2))
    hpd = diagnostics.coverage_from_draws(theta_s, out.samples, method="hpd",
                                          log_prob_draws=out.extra["log_prob_samples"],
                                          log_prob_theta=out.extra["log_prob_theta"])
    tarp = diagnostics.coverage_from_draws(theta_s, out.samples, method="tarp", prior=sbi_prior, key=k1)
    ranks = np.sum(out.samples < theta_s[:, None, :], axis=1)
    pv = diagnostics.sbc_uniformity(ranks, out.samples.shape[1])
    lp = out.extra["log_prob_theta"] - np.sum(np.where(logs, theta_s, 0.0), axis=1)  # d log theta / d theta
    lv = np.asarray(hpd.levels)
    at = {a: float(np.asarray(hpd.coverage)[np.argmin(np.abs(lv - a))]) for a in (0.5, 0.9)}
    m = {"hpd": hpd.max_deviation, "tarp": tarp.max_deviation, "sbc_min_p": float(np.min(pv)),
         "log_score": float(np.mean(lp[np.isfinite(lp)])), "hpd50": at[0.5], "hpd90": at[0.9],
         "finite": float(np.mean(np.isfinite(lp)))}
    return m, out.fit_s, out.epochs


def npe_for(contender: str, max_epochs: int | None = None) -> bmsbi.NPE:
    """The NPE a contender names; ``max_epochs`` as :class:`bmsbi.NPE` takes it (``None``: sized from the bank)."""
    return bmsbi.NPE(max_epochs=max_epochs, **npe_settings(contender))


def npe_settings(contender: str) -> dict:
    """The :class:`bmsbi.NPE` arguments that set a contender apart from the default."""
    if contender == "default":
        return {}
    if contender in ("none", "scale", "coverage", "truncated"):
        return {"base_calibration": contender}
    if contender == "unconstrained":
        return {"theta_space": "unconstrained"}
    if contender in ("edge", "edge_none"):
        return {"edge_spline": True, "base_calibration": "none" if contender == "edge_none" else "auto"}
    if contender.startswith("ensemble"):
        size, *extras = contender[len("ensemble"):].split("_")
        return {"ensemble": int(size), "base_calibration": "scale" if "scale" in extras else "auto",
                "edge_spline": "edge" in extras}
    raise ValueError(f"contender: expected one of {CONTENDERS}, got {contender!r}")


def run_task(name: str, args) -> list[dict]:
    task = simulators.get(name)
    work = Path(args.work) / name
    t0 = time.perf_counter()
    n = task.budget if args.num_simulations is None else args.num_simulations
    bank = task.bank(n, jax.random.key(args.seed), progress=False, path=work / f"bank_{n}")
    held = task.bank(args.held_out, jax.random.key(args.seed + 1000), progress=False,
                     path=work / f"held_{args.held_out}")
    print(f"{name}: banks {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for contender in args.contenders:
        if contender == "sbi":
            m, fit_s, epochs = sbi_metrics(task, bank, held, args)
            rows.append({"task": name, "contender": "sbi", "n": n, "fit_s": fit_s, "epochs": epochs,
                         "base_scale": None, **m})
            print(f"{name} sbi: fit {fit_s:.0f} s, HPD {m['hpd']:.3f}, TARP {m['tarp']:.3f}, "
                  f"SBC min p {m['sbc_min_p']:.3g}, log score {m['log_score']:.3f}",
                  file=sys.stderr, flush=True)
            continue
        t0 = time.perf_counter()
        post = npe_for(contender, args.max_epochs).fit(bank, prior=task.prior, key=jax.random.key(args.seed + 1 if args.fit_key is None else args.fit_key),
                                      progress=False)
        fit_s = time.perf_counter() - t0
        m = held_out_metrics(post, held.theta, held.x, jax.random.key(args.seed + 2))
        scale = post.config.get("base_scale")
        rows.append({"task": name, "contender": contender, "n": n, "fit_s": fit_s,
                     "epochs": len(post.history.val_loss) if post.history is not None else 0,
                     "base_scale": scale, **m})
        print(f"{name} {contender}: fit {fit_s:.0f} s, HPD {m['hpd']:.3f}, TARP {m['tarp']:.3f}, "
              f"SBC min p {m['sbc_min_p']:.3g}, log score {m['log_score']:.3f}",
              file=sys.stderr, flush=True)
    return rows


def table(rows, args) -> str:
    head = ("| task | contender | simulations | fit s | HPD max dev | HPD cov. at 0.5 / 0.9 | TARP max dev | "
            "SBC min p (d) | held-out log score | base scale |\n|---|---|---:|---:|---:|---|---:|---|---:|---|")
    out = [head]
    for r in rows:
        d = len(simulators.get(r["task"]).prior.names)
        sc = "-" if r["base_scale"] is None else " ".join(f"{v:.2f}" for v in r["base_scale"])
        out.append(f"| {r['task']} | {r['contender']} | {r['n']} | {r['fit_s']:.0f} | {r['hpd']:.3f} | "
                   f"{r['hpd50']:.3f} / {r['hpd90']:.3f} | {r['tarp']:.3f} | {r['sbc_min_p']:.3g} ({d}) | "
                   f"{r['log_score']:.3f} | {sc} |")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["hopf_node", "jansen_rit", "wilson_cowan", "montbrio"])
    p.add_argument("--num-simulations", type=int, default=None,
                   help="training bank size (default: each task's budget, simulators.Task.budget)")
    p.add_argument("--held-out", type=int, default=1000)
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--max-epochs", type=int, default=None,
                   help="NPE max_epochs for bmsbi's contenders (default: sized from the bank, as NPE does)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-key", type=int, default=None,
                   help="key of the NPE fits (default: seed + 1); the banks and metrics keys stay")
    p.add_argument("--work", default="/tmp/bmsbi-calibration", help="bank folders (reused)")
    p.add_argument("--sbi-python", default=DEFAULT_SBI_PYTHON)
    p.add_argument("--no-append", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rows = [r for name in args.tasks for r in run_task(name, args)]
    cmd = "python benchmarks/calibration.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"`{cmd.strip()}` (jax {jax.__version__}, Python {platform.python_version()}, "
            f"{args.held_out} held-out)\n\n" + table(rows, args))
    print(text)
    if not args.no_append:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n### Calibration run (issue 17)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
