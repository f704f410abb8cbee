"""Spline flows side by side: flowjax's ``coupling_flow`` vs bmsbi's ``SplineCouplingStack``.

Both NPE flows are rational-quadratic spline coupling flows started at the same
least-squares linear-Gaussian posterior (``NPE(linear_init=True)``, the default):

* ``nsf``:         :class:`bmsbi.estimators.npe.SplineCouplingStack` (the default flow);
* ``flowjax_nsf``: ``flowjax.flows.coupling_flow`` with
  ``RationalQuadraticSpline(knots=num_bins, interval=tail_bound)``, conditioners' last
  layers zeroed, a :class:`~bmsbi.estimators.npe.ConditionalAffine` map on the data side
  (``build_flow``).

Everything else is ``bmsbi.NPE``'s defaults (5 layers, width 50, depth 2, 10 bins, tail
bound 3, the same trainer), so the comparison is about the flow code. Both run in one
process on the same banks, observations and keys:

* ``two_moons``: sbibm two-moons, 10,000 simulations, observations 1-10, C2ST (sbibm's
  definition, ``bmsbi.diagnostics.c2st``) of ``--num-samples`` posterior draws against as
  many exact reference draws, and the RMS posterior-mean error in reference sds, exactly
  as ``benchmarks/npe_vs_sbi.py`` computes them (same bank seed, observation and
  reference seeds, fit key ``seed + 1``);
* ``gaussian_linear``: sbibm 10-D Gaussian-linear, 10,000 simulations, observations 1-10:
  the largest ``|posterior mean - analytic mean|`` over observations and dimensions in
  analytic posterior sds, and the largest ``|posterior sd / analytic sd - 1|``;
* ``hopf_node``: ``simulators.get("hopf_node")`` (``bmsbi demo``'s task), a bank of
  ``--hopf-train + --hopf-heldout`` simulations (key 0); NPE trains on the first
  ``--hopf-train``, the rest are held out: mean held-out ``log q(theta | x)`` (as served:
  truncated to the prior's box and renormalised), the RMS error of the posterior mean
  against the true ``theta`` in prior sds (mean over the parameters), and the largest
  deviation of HPD and TARP expected coverage from the diagonal
  (``bmsbi.diagnostics.expected_coverage``, 1,000 draws per observation).

Timing: ``fit s`` is the wall time of ``NPE.fit`` (compilation included: what a user
waits for); ``1st epoch s`` is the time to the end of the first epoch (mostly
compilation); ``s/epoch`` is the mean epoch time after the first. Before the first fit
of each problem a one-epoch ``"maf"`` fit pays the process's one-time costs, and the
order of the two flows alternates from one training seed to the next. The machine is
small and shared: read ratios within one run. ``--step-blocks N`` adds a table of the
bare flows' build, compilation, gradient-step and sampling times, the two flows' calls
alternating in ``N`` blocks (medians), which the load of other jobs disturbs less.

    python benchmarks/flows.py --step-blocks 10 --steps-only     # bare-flow timings only
    python benchmarks/flows.py                                   # all three problems, seed 0
    python benchmarks/flows.py --problems two_moons --seeds 0 1  # one problem, two training seeds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import bmsbi  # noqa: E402
from benchmarks import tasks as bt  # noqa: E402
from bmsbi.diagnostics import c2st, expected_coverage  # noqa: E402

FLOWS = ("nsf", "flowjax_nsf")
PROBLEMS = ("two_moons", "gaussian_linear", "hopf_node")


@dataclass
class Row:
    problem: str
    flow: str
    seed: int
    fit_s: float
    first_epoch_s: float
    epoch_s: float
    epochs: int
    best_val: float
    metrics: dict = field(default_factory=dict)


NPE_OPTIONS: dict = {}


def fit(problem, flow, seed, bank, prior):
    """Train NPE with ``flow``; returns ``(posterior, Row)`` with the timings filled in."""
    key_fit, _ = jax.random.split(jax.random.key(seed + 1))
    t0 = time.perf_counter()
    npe = bmsbi.NPE(**{**NPE_OPTIONS, "density_estimator": flow})
    post = npe.fit(bank, prior=prior, key=key_fit, progress=False)
    jax.block_until_ready([leaf for leaf in jax.tree_util.tree_leaves(post.model)
                           if isinstance(leaf, jax.Array)])
    fit_s = time.perf_counter() - t0
    h = post.history
    et = list(h.epoch_time)
    epoch_s = (et[-1] - et[0]) / (len(et) - 1) if len(et) > 1 else float("nan")
    return post, Row(problem, flow, seed, fit_s, float(et[0]), float(epoch_s), int(h.epochs),
                     float(h.best_val_loss))


def warm_up(bank, prior):
    """One short ``"maf"`` fit, so one-time costs of the process (jitting the prior's maps,
    the trainer's own first compilations) fall on neither contender."""
    n = min(len(bank.theta), 1000)
    sub = bmsbi.Bank(np.asarray(bank.theta)[:n], np.asarray(bank.x)[:n], names=bank.names,
                     meta=bank.meta)
    bmsbi.NPE(density_estimator="maf", max_epochs=1).fit(sub, prior=prior, key=jax.random.key(0),
                                                         progress=False)


def order(flows, i):
    """Flows in the given order for the ``i``-th seed, reversed for every other seed."""
    return list(flows) if i % 2 == 0 else list(flows)[::-1]


def task_prior(task):
    if task.prior_kind == "uniform":
        return bmsbi.Prior.uniform(task.prior_low, task.prior_high, names=task.names)
    return bmsbi.Prior({n: dist.Normal(float(loc), float(scale))
                        for n, loc, scale in zip(task.names, task.prior_low, task.prior_high)})


def sbibm_problem(name, args):
    """Bank, observations and references of an sbibm task, as npe_vs_sbi.py makes them."""
    task = bt.get_task(name)
    budget = 10_000
    theta, x = task.simulate_bank(jax.random.fold_in(jax.random.key(0), budget), budget)
    _, x_obs = bt.observations(task, args.num_observations)
    return task, bmsbi.Bank(theta, x, names=task.names), task_prior(task), x_obs


def draws(post, seed, x_obs, n):
    _, key_sample = jax.random.split(jax.random.key(seed + 1))
    keys = jax.random.split(key_sample, len(x_obs))
    return [np.asarray(post.sample(k, xo.astype(np.float32), n), np.float64)
            for k, xo in zip(keys, x_obs)]


def fits(problem, bank, prior, args):
    """Warm up, then ``(posterior, Row)`` of each training seed and flow (order alternating)."""
    warm_up(bank, prior)
    for i, seed in enumerate(args.seeds):
        for flow in order(args.flows, i):
            yield fit(problem, flow, seed, bank, prior)


def done(row, metrics):
    row.metrics = metrics
    report(row)
    return row


def run_two_moons(args):
    task, bank, prior, x_obs = sbibm_problem("two_moons", args)
    refs = [task.reference_posterior(xo, args.num_samples, seed=i + 1) for i, xo in enumerate(x_obs)]
    for post, row in fits("two_moons", bank, prior, args):
        c, err = [], []
        for ref, s in zip(refs, draws(post, row.seed, x_obs, args.num_samples)):
            err.append(float(np.sqrt(np.mean(((s.mean(0) - ref.mean(0)) / ref.std(0)) ** 2))))
            if not args.no_c2st:
                c.append(c2st(ref, s, seed=1))
        yield done(row, {"C2ST": (np.mean(c), np.std(c)) if c else None,
                         "mean err": float(np.mean(err))})


def run_gaussian_linear(args):
    task, bank, prior, x_obs = sbibm_problem("gaussian_linear", args)
    for post, row in fits("gaussian_linear", bank, prior, args):
        mean_err, sd_err = [], []
        for xo, s in zip(x_obs, draws(post, row.seed, x_obs, args.num_samples)):
            mean, cov = bt.gaussian_linear_posterior_moments(xo)
            sd = np.sqrt(np.diag(cov))
            mean_err.append(np.abs(s.mean(0) - mean) / sd)
            sd_err.append(np.abs(s.std(0) / sd - 1))
        yield done(row, {"max |mean err| (sd)": float(np.max(mean_err)),
                         "rms mean err (sd)": float(np.sqrt(np.mean(np.square(mean_err)))),
                         "max |sd ratio - 1|": float(np.max(sd_err))})


def hopf_bank(args):
    import simulators

    n = args.hopf_train + args.hopf_heldout
    path = Path(args.hopf_cache) / f"flows_hopf_node_{n}.npz" if args.hopf_cache else None
    if path is not None and path.exists():
        return simulators.get("hopf_node"), bmsbi.Bank.load(path)
    task = simulators.get("hopf_node")
    t0 = time.perf_counter()
    bank = task.bank(n, jax.random.key(0), progress=False)
    print(f"    hopf_node bank of {n}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if path is not None:
        bank.save(path)
    return task, bank


def run_hopf_node(args):
    task, bank = hopf_bank(args)
    m = args.hopf_train
    theta, x = np.asarray(bank.theta), np.asarray(bank.x)
    train = bmsbi.Bank(theta[:m], x[:m], names=bank.names, meta=bank.meta)
    th, xh = theta[m:], x[m:]
    prior_sd = np.asarray(task.prior.sample(jax.random.key(99), 20_000)).std(0)
    for post, row in fits("hopf_node", train, task.prior, args):
        key = jax.random.key(1000 + row.seed)
        s = np.asarray(post.sample(key, xh.astype(np.float32), 1000), np.float64)
        lp = np.asarray(post.log_prob(th[:, None, :].astype(np.float32), xh.astype(np.float32)))
        rmse = np.sqrt(np.mean((s.mean(1) - th) ** 2, axis=0)) / prior_sd
        hpd = expected_coverage(post, th, xh, key=key, method="hpd")
        tarp = expected_coverage(post, th, xh, key=key, method="tarp")
        yield done(row, {"held-out log q": float(np.mean(lp)),
                         "RMSE / prior sd": float(np.mean(rmse)),
                         "HPD cov max dev": hpd.max_deviation,
                         "TARP cov max dev": tarp.max_deviation})


def step_times(args):
    """Build, compile and per-call times of both flows, interleaved (less exposed to load).

    For each problem's (dim, cond_dim): the time to build the flow (its first build in
    the process), to compile one gradient step of ``-mean log q`` on a batch of 256, and
    then the median over ``--step-blocks`` alternating blocks of 20 gradient steps and of
    20 calls drawing 1,000 samples for one condition.
    """
    import equinox as eqx
    import jax.numpy as jnp
    import paramax

    from bmsbi.estimators.npe import build_flow

    shapes = {"two_moons": (2, 2), "gaussian_linear": (10, 10), "hopf_node": (3, 15)}
    lines = ["| problem (dim, cond) | flow | build s | grad compile s | ms / grad step (batch 256) "
             "| ms / 1,000 samples |", "|---|---|---:|---:|---:|---:|"]
    for problem in args.problems:
        dim, cond_dim = shapes[problem]
        theta = jax.random.normal(jax.random.key(1), (256, dim))
        cond = jax.random.normal(jax.random.key(2), (256, cond_dim))
        fns, res = {}, {}
        for flow in args.flows:
            t0 = time.perf_counter()
            f = build_flow(flow, dim, cond_dim, hidden=50, num_layers=5, num_bins=10, tail_bound=3.0,
                           nn_depth=2, key=jax.random.key(0), conditional_affine=True)
            jax.block_until_ready(jax.tree_util.tree_leaves(eqx.filter(f, eqx.is_array)))
            build = time.perf_counter() - t0

            @eqx.filter_jit
            def grad(f, theta, cond):
                loss = lambda f: -jnp.mean(paramax.unwrap(f).log_prob(theta, cond))  # noqa: E731
                return eqx.filter_value_and_grad(loss)(f)

            @eqx.filter_jit
            def sample(f, c):
                return paramax.unwrap(f).sample(jax.random.key(0), (1000,), condition=c)

            t0 = time.perf_counter()
            jax.block_until_ready(grad(f, theta, cond)[0])
            compile_s = time.perf_counter() - t0
            jax.block_until_ready(sample(f, cond[0]))
            fns[flow] = (f, grad, sample)
            res[flow] = {"build": build, "compile": compile_s, "grad": [], "sample": []}
        for _ in range(args.step_blocks):
            for flow in args.flows:
                f, grad, sample = fns[flow]
                t0 = time.perf_counter()
                for _ in range(20):
                    out = grad(f, theta, cond)
                jax.block_until_ready(out[0])
                res[flow]["grad"].append((time.perf_counter() - t0) / 20)
                t0 = time.perf_counter()
                for _ in range(20):
                    out = sample(f, cond[0])
                jax.block_until_ready(out)
                res[flow]["sample"].append((time.perf_counter() - t0) / 20)
        for flow in args.flows:
            r = res[flow]
            lines.append(f"| {problem} ({dim}, {cond_dim}) | {flow} | {r['build']:.2f} | "
                         f"{r['compile']:.1f} | {1e3 * np.median(r['grad']):.2f} | "
                         f"{1e3 * np.median(r['sample']):.2f} |")
    return "\n".join(lines)


def report(row):
    print(f"[{row.problem}] {row.flow} seed {row.seed}: fit {row.fit_s:.1f} s (1st epoch "
          f"{row.first_epoch_s:.1f} s, {row.epoch_s:.3f} s/epoch, {row.epochs} epochs), best val "
          f"{row.best_val:.3f}, {row.metrics}", file=sys.stderr, flush=True)


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, tuple):
        return f"{v[0]:.3f} ± {v[1]:.3f}"
    return f"{v:.3f}"


def table(rows) -> str:
    out = []
    for problem in PROBLEMS:
        rs = [r for r in rows if r.problem == problem]
        if not rs:
            continue
        names = list(rs[0].metrics)
        out.append(f"| {problem} | seed | fit s | 1st epoch s | s/epoch | epochs | best val loss | "
                   + " | ".join(names) + " |")
        out.append("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(names))
        for r in rs:
            out.append(f"| {r.flow} | {r.seed} | {r.fit_s:.1f} | {r.first_epoch_s:.1f} | "
                       f"{r.epoch_s:.3f} | {r.epochs} | {r.best_val:.3f} | "
                       + " | ".join(fmt(r.metrics[n]) for n in names) + " |")
        base = {r.seed: r for r in rs if r.flow == "nsf"}
        for r in rs:
            if r.flow != "nsf" and r.seed in base:
                b = base[r.seed]
                out.append(f"| {r.flow} / nsf | {r.seed} | {r.fit_s / b.fit_s:.2f} | "
                           f"{r.first_epoch_s / b.first_epoch_s:.2f} | {r.epoch_s / b.epoch_s:.2f} | "
                           f"{r.epochs / b.epochs:.2f} | | " + " | ".join("" for _ in names) + " |")
        out.append("")
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS)
    p.add_argument("--flows", nargs="+", default=list(FLOWS), choices=FLOWS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="training seeds (fit key seed + 1)")
    p.add_argument("--num-observations", type=int, default=10)
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--no-c2st", action="store_true")
    p.add_argument("--npe-options", type=json.loads, default={},
                   help='other bmsbi.NPE settings for both flows as JSON, e.g. \'{"max_epochs": 5}\'')
    p.add_argument("--step-blocks", type=int, default=0,
                   help="also time build, compilation and gradient steps of the bare flows, "
                        "in this many interleaved blocks (0: skip)")
    p.add_argument("--steps-only", action="store_true", help="only the --step-blocks timings")
    p.add_argument("--hopf-train", type=int, default=5000)
    p.add_argument("--hopf-heldout", type=int, default=300)
    p.add_argument("--hopf-cache", default=None,
                   help="folder to keep the simulated hopf_node bank in between runs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    NPE_OPTIONS.update(args.npe_options)
    runners = {"two_moons": run_two_moons, "gaussian_linear": run_gaussian_linear,
               "hopf_node": run_hopf_node}
    rows = [row for name in args.problems for row in runners[name](args)] if not args.steps_only else []
    cmd = "python benchmarks/flows.py " + " ".join(sys.argv[1:] if argv is None else argv)
    env = (f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
           f"Python {platform.python_version()}")
    print(f"`{cmd.strip()}` ({env}; shared machine: read the ratios)\n")
    print(table(rows))
    if args.step_blocks:
        print(step_times(args))


if __name__ == "__main__":
    main()
