"""Sparse model discovery: bmsbi (derivative and trajectory methods) vs PySINDy STLSQ.

Systems (``bmsbi.discovery.benchmark_system``): Stuart–Landau, FitzHugh–Nagumo and a
two-population Wilson–Cowan (voltage form, sigmoid library), 4 initial conditions each
(transients included), at 0, 1, 5 and 10 % noise (noise sd = that fraction of each
state's sd). Every method gets the same data and the same candidate library:

- ``pysindy default``: ``ps.SINDy(optimizer=ps.STLSQ(), feature_library=<same terms>)``
  with PySINDy's default differentiation (finite differences) and STLSQ defaults
  (threshold 0.1, alpha 0.05);
- ``pysindy best``: the same with the STLSQ threshold from a small sweep
  (0.01, 0.02, 0.05, 0.1, 0.2, 0.5) that scores best against the TRUE equations (an
  oracle choice, so an upper bound for PySINDy);
- ``bmsbi derivative`` / ``bmsbi trajectory``: ``bmsbi.discovery.fit`` with its
  defaults (``n_bootstrap`` as given on the command line).

Reported: support F1 (nonzero pattern of the coefficient matrix), relative coefficient
error ``‖Ξ̂ − Ξ‖_F / ‖Ξ‖_F`` and wall time (bmsbi times include JAX compilation, which
dominates them).

PySINDy is optional (``pip install pysindy``); without it only bmsbi rows are produced.

Usage::

    python benchmarks/discovery_vs_pysindy.py                 # full grid, prints a table
    python benchmarks/discovery_vs_pysindy.py --append        # ... and appends RESULTS.md
    python benchmarks/discovery_vs_pysindy.py --systems stuart_landau --noise 0.05
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from bmsbi import discovery

SWEEP = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def pysindy_library(system):
    import pysindy as ps

    if system == "wilson_cowan":
        sigmoid = ps.CustomLibrary(library_functions=[lambda x: 1.0 / (1.0 + np.exp(-x))],
                                   function_names=[lambda x: f"S({x})"])
        return ps.PolynomialLibrary(degree=2) + sigmoid
    return ps.PolynomialLibrary(degree=3)


def run_pysindy(data, threshold=None):
    """Coefficients in bmsbi's term order from PySINDy STLSQ (defaults unless threshold)."""
    import pysindy as ps

    opt = ps.STLSQ() if threshold is None else ps.STLSQ(threshold=threshold)
    model = ps.SINDy(optimizer=opt, feature_library=pysindy_library(data.name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(list(data.trajectories), t=data.dt)
    names = [n.replace(" ", "*") for n in model.get_feature_names()]
    coef = np.asarray(model.coefficients()).T  # (n_features, n_states)
    out = np.zeros_like(data.coefficients)
    for j, name in enumerate(names):
        out[data.term_names.index(name)] = coef[j]
    return out


def score(coef, data):
    return discovery.support_f1(coef, data.coefficients), \
        discovery.coefficient_error(coef, data.coefficients)


def bench(systems, noises, n_bootstrap, seed):
    try:
        import pysindy  # noqa: F401
        have_pysindy = True
    except ImportError:
        have_pysindy = False
        print("pysindy not installed: bmsbi rows only (pip install pysindy)", file=sys.stderr)
    rows = []
    for system in systems:
        for noise in noises:
            data = discovery.benchmark_system(system, noise)
            if have_pysindy:
                t = time.perf_counter()
                coef = run_pysindy(data)
                rows.append((system, noise, "pysindy STLSQ default", *score(coef, data),
                             time.perf_counter() - t, ""))
                t = time.perf_counter()
                best = None
                for thr in SWEEP:
                    f1, err = score(run_pysindy(data, thr), data)
                    if best is None or (f1, -err) > (best[0], -best[1]):
                        best = (f1, err, thr)
                rows.append((system, noise, "pysindy STLSQ best (oracle sweep)", best[0], best[1],
                             time.perf_counter() - t, f"threshold {best[2]}"))
            for method in ("derivative", "trajectory"):
                t = time.perf_counter()
                found = discovery.fit(list(data.trajectories), data.dt, library=data.library,
                                      method=method, key=seed, n_bootstrap=n_bootstrap)
                wall = time.perf_counter() - t
                f1, err = score(found.coefficients, data)
                true = data.coefficients != 0
                note = ""
                if n_bootstrap:
                    ip = found.inclusion_probability
                    note = (f"incl. prob. true min {ip[true].min():.2f}, false max "
                            f"{ip[~true].max():.2f}")
                rows.append((system, noise, f"bmsbi {method}", f1, err, wall, note))
            for r in rows[-4 if have_pysindy else -2:]:
                print(f"{r[0]:16s} {100 * r[1]:3.0f}%  {r[2]:34s} F1 {r[3]:.3f}  err {r[4]:.3f}  "
                      f"{r[5]:7.2f}s  {r[6]}", flush=True)
    return rows


def table(rows):
    lines = ["| system | noise | method | support F1 | rel. coef. error | wall time (s) | note |",
             "|---|---|---|---|---|---|---|"]
    for system, noise, method, f1, err, wall, note in rows:
        lines.append(f"| {system} | {100 * noise:g} % | {method} | {f1:.3f} | {err:.3f} | "
                     f"{wall:.2f} | {note} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--systems", nargs="+", default=list(discovery.SYSTEMS))
    parser.add_argument("--noise", nargs="+", type=float, default=list(discovery.NOISE_LEVELS))
    parser.add_argument("--n-bootstrap", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true", help=f"append the table to {RESULTS}")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = bench(args.systems, args.noise, args.n_bootstrap, args.seed)
    text = table(rows)
    print()
    print(text)
    if args.append:
        cmd = "python benchmarks/discovery_vs_pysindy.py " + " ".join(argv or sys.argv[1:])
        try:
            import pysindy
            ps_version = getattr(pysindy, "__version__", "?")
        except ImportError:
            ps_version = "not installed"
        header = (f"\n## Sparse model discovery vs PySINDy ({time.strftime('%Y-%m-%d')})\n\n"
                  f"Command: `{cmd.strip()}` — {platform.processor() or platform.machine()}, "
                  f"Python {platform.python_version()}, pysindy {ps_version}, "
                  f"total {time.perf_counter() - start:.0f} s. Noise sd = fraction of each "
                  f"state's sd; 4 initial conditions with transients; same library for every "
                  f"method; 'best' = oracle threshold from {list(SWEEP)}; bmsbi times include "
                  f"JAX compilation and n_bootstrap={args.n_bootstrap} bootstrap refits "
                  f"(inclusion probabilities).\n\n")
        with open(RESULTS, "a") as fh:
            fh.write(header + text + "\n")
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
