"""Discovery benchmarks: trajectories with known equations, registered with brainmass.

Three systems, each simulated deterministically (fixed initial conditions, RK4 with five
substeps per sample, NumPy) from several initial conditions that include transients (a
single limit-cycle trajectory makes a polynomial library collinear):

``stuart_landau``
    Hopf normal form, ``dx0/dt = x0 - 2 x1 - x0^3 - x0 x1^2``,
    ``dx1/dt = 2 x0 + x1 - x0^2 x1 - x1^3``; 4 trajectories of 801 samples, ``dt = 0.01``;
    library: cubic polynomials (10 terms).
``fitzhugh_nagumo``
    ``dv/dt = v - v^3/3 - w + 0.5``, ``dw/dt = 0.08 (v + 0.7 - 0.8 w)``; 4 trajectories
    of 801 samples, ``dt = 0.1``; library: cubic polynomials (10 terms).
``wilson_cowan``
    Two-population Wilson–Cowan in its voltage (activity) form with ``S(u) = 1/(1+e^-u)``,
    ``dx0/dt = -x0 + 10 S(x0) - 10 S(x1) - 2``,
    ``dx1/dt = (-x1 + 10 S(x0) - 2 S(x1) - 4) / 2``; 4 trajectories of 601 samples,
    ``dt = 0.05``; library: quadratic polynomials + ``S(x0), S(x1)`` (8 terms).

Noise level: additive Gaussian noise whose sd is ``noise`` times the sd of each state
(pooled over the trajectories of the clean data); ``noise=0.05`` is "5 % noise". The
noise draw is fixed (seed 0) and scaled, so the levels are nested.

Registered names: ``bmsbi_discovery_<system>_noise<pct>`` for ``pct`` in 0, 1, 5, 10
(e.g. ``bmsbi_discovery_stuart_landau_noise5``), each loading a :class:`DiscoveryBenchmark`.

Examples
--------
>>> import brainmass, bmsbi.discovery
>>> data = brainmass.datasets.load_dataset("bmsbi_discovery_stuart_landau_noise1")
>>> len(data.trajectories), data.trajectories[0].shape, data.coefficients.shape
(4, (801, 2), (10, 2))
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .library import Library, polynomial_library, sigmoid_library

__all__ = ["DiscoveryBenchmark", "benchmark_system", "register_datasets", "SYSTEMS",
           "NOISE_LEVELS", "dataset_name"]

# Noise levels of the registered datasets: sd as a fraction of each state's sd.
NOISE_LEVELS = (0.0, 0.01, 0.05, 0.10)


class DiscoveryBenchmark(NamedTuple):
    """A discovery benchmark: noisy trajectories plus the equations that made them.

    Attributes
    ----------
    name : str
    trajectories : tuple of arrays ``(T, n_states)``
        Noisy observations (what a discovery method gets).
    clean : tuple of arrays ``(T, n_states)``
        The same trajectories without noise.
    dt : float
        Sample spacing.
    noise : float
        Noise sd as a fraction of each state's sd.
    library : Library
        A candidate library that contains the true terms.
    coefficients : array ``(n_terms, n_states)``
        True coefficients in ``library`` order (zeros off the support).
    term_names : tuple of str
    description : str
    """

    name: str
    trajectories: tuple
    clean: tuple
    dt: float
    noise: float
    library: Library
    coefficients: np.ndarray
    term_names: tuple
    description: str


def _sig(u):
    return 1.0 / (1.0 + np.exp(-u))


def _sl(x):
    x0, x1 = x[..., 0], x[..., 1]
    r2 = x0 ** 2 + x1 ** 2
    return np.stack([x0 - 2.0 * x1 - r2 * x0, 2.0 * x0 + x1 - r2 * x1], -1)


def _fhn(x):
    v, w = x[..., 0], x[..., 1]
    return np.stack([v - v ** 3 / 3.0 - w + 0.5, 0.08 * (v + 0.7 - 0.8 * w)], -1)


def _wc(x):
    e, i = x[..., 0], x[..., 1]
    return np.stack([-e + 10.0 * _sig(e) - 10.0 * _sig(i) - 2.0,
                     (-i + 10.0 * _sig(e) - 2.0 * _sig(i) - 4.0) / 2.0], -1)


#: name -> (vector field, initial conditions, dt, samples, library, true terms, description)
SYSTEMS = {
    "stuart_landau": dict(
        field=_sl, x0=[[0.05, 0.0], [2.0, 0.5], [-1.2, -1.6], [0.2, -0.6]], dt=0.01, n=801,
        library=lambda: polynomial_library(2, 3),
        terms=[{"x0": 1.0, "x1": -2.0, "x0^3": -1.0, "x0*x1^2": -1.0},
               {"x0": 2.0, "x1": 1.0, "x0^2*x1": -1.0, "x1^3": -1.0}],
        description="Stuart-Landau (Hopf normal form, mu=1, omega=2), 4 initial conditions"),
    "fitzhugh_nagumo": dict(
        field=_fhn, x0=[[-1.0, 1.0], [2.0, 0.0], [0.0, -0.5], [-2.0, 2.0]], dt=0.1, n=801,
        library=lambda: polynomial_library(2, 3),
        terms=[{"1": 0.5, "x0": 1.0, "x1": -1.0, "x0^3": -1.0 / 3.0},
               {"1": 0.056, "x0": 0.08, "x1": -0.064}],
        description="FitzHugh-Nagumo (I=0.5, a=0.7, b=0.8, eps=0.08), 4 initial conditions"),
    "wilson_cowan": dict(
        field=_wc, x0=[[0.0, 0.0], [4.0, -2.0], [-3.0, 1.0], [2.0, 4.0]], dt=0.05, n=601,
        library=lambda: polynomial_library(2, 2) + sigmoid_library(2),
        terms=[{"1": -2.0, "x0": -1.0, "S(x0)": 10.0, "S(x1)": -10.0},
               {"1": -2.0, "x1": -0.5, "S(x0)": 5.0, "S(x1)": -1.0}],
        description="two-population Wilson-Cowan, voltage form (tau_E=1, tau_I=2), "
                    "4 initial conditions"),
}


def dataset_name(system: str, noise: float) -> str:
    """``brainmass.datasets`` name of a benchmark: ``bmsbi_discovery_<system>_noise<pct>``."""
    return f"bmsbi_discovery_{system}_noise{int(round(100 * noise))}"


def _rk4(field, x0, dt, n, substeps=5):
    h = dt / substeps
    x = np.asarray(x0, float)
    out = np.empty((n,) + x.shape)
    out[0] = x
    for i in range(1, n):
        for _ in range(substeps):
            k1 = field(x)
            k2 = field(x + 0.5 * h * k1)
            k3 = field(x + 0.5 * h * k2)
            k4 = field(x + h * k3)
            x = x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        out[i] = x
    return np.swapaxes(out, 0, 1)  # (n_ic, T, n_states)


@functools.lru_cache(maxsize=None)
def _clean(system):
    spec = SYSTEMS[system]
    return _rk4(spec["field"], spec["x0"], spec["dt"], spec["n"])


def benchmark_system(system: str, noise: float = 0.0, *, seed: int = 0) -> DiscoveryBenchmark:
    """Generate a discovery benchmark (deterministic for a given ``seed``).

    Parameters
    ----------
    system : {"stuart_landau", "fitzhugh_nagumo", "wilson_cowan"}
    noise : float, default 0
        Noise sd as a fraction of each state's sd (0.01 = 1 %).
    seed : int, default 0

    Examples
    --------
    >>> from bmsbi.discovery import benchmark_system
    >>> data = benchmark_system("fitzhugh_nagumo", 0.05)
    >>> data.term_names[:3], data.dt
    (('1', 'x0', 'x1'), 0.1)
    """
    if system not in SYSTEMS:
        raise ValueError(f"system: expected one of {sorted(SYSTEMS)}, got {system!r}")
    if not (isinstance(noise, (int, float)) and 0.0 <= noise < 10):
        raise ValueError(f"noise: expected a float in [0, 10) (fraction of each state's sd), "
                         f"got {noise!r}")
    spec = SYSTEMS[system]
    clean = _clean(system).copy()
    sd = clean.reshape(-1, clean.shape[-1]).std(axis=0)
    z = np.random.default_rng(seed).standard_normal(clean.shape)
    noisy = clean + noise * sd * z
    library = spec["library"]()
    names = library.names
    coef = np.zeros((len(names), len(spec["terms"])))
    for k, eq in enumerate(spec["terms"]):
        for term, c in eq.items():
            coef[names.index(term), k] = c
    return DiscoveryBenchmark(
        name=system, trajectories=tuple(noisy), clean=tuple(clean), dt=float(spec["dt"]),
        noise=float(noise), library=library, coefficients=coef, term_names=names,
        description=f"{spec['description']}, {100 * noise:g}% noise")


def register_datasets() -> list:
    """Register every system at every level of :data:`NOISE_LEVELS` with
    ``brainmass.datasets``; names already registered are left alone (safe to call twice).

    Returns the names this call registered.

    Examples
    --------
    >>> from bmsbi.discovery import register_datasets
    >>> register_datasets()   # already done on import
    []
    """
    import brainmass

    known = dict(brainmass.datasets.list_datasets())
    new = []
    for system in SYSTEMS:
        for noise in NOISE_LEVELS:
            name = dataset_name(system, noise)
            if name in known:
                continue

            def load(system=system, noise=noise):
                return benchmark_system(system, noise)

            brainmass.datasets.register_dataset(
                name, load, description=f"bmsbi discovery benchmark: "
                                        f"{SYSTEMS[system]['description']}, {100 * noise:g}% "
                                        f"noise (DiscoveryBenchmark with true coefficients)")
            new.append(name)
    return new
