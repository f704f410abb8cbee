"""Whole-brain network of noisy Hopf nodes on brainmass's example connectome.

Model: :class:`brainmass.Network` of 8 :class:`brainmass.HopfStep` regions wired by
``brainmass.datasets.load_dataset("example_connectome")`` (weights ``C_ij`` in [0, 1],
Euclidean distances ``d_ij`` of 31-80 mm) with diffusive, delayed coupling on ``x``::

    dz_i/dt = (a + i w_i) z_i - |z_i|^2 z_i + G sum_j C_ij (x_j(t - d_ij / v) - x_i) + sigma xi_i(t)

Each region has its own alpha-band frequency ``f_i`` (evenly spaced over 9-11 Hz,
``w_i = 2 pi f_i / 1000`` rad/ms), the conduction speed is ``v = 10 m/s`` (delays
3-8 ms) and ``xi_i`` is independent white noise on ``x_i`` and ``y_i``. The recording
is ``x`` of all regions (an EEG/MEG source-space-like signal) at 250 Hz.

Parameters (prior)
------------------
=====  ==========================================  ==========  ======================
name   meaning                                     unit        prior
=====  ==========================================  ==========  ======================
G      global coupling (``Network`` ``k``)         1/ms        Uniform(0, 0.1)
a      bifurcation parameter (all regions)         1/ms        Uniform(-0.05, 0.05)
sigma  white-noise intensity                       1/sqrt(ms)  LogUniform(1e-3, 5e-2)
=====  ==========================================  ==========  ======================

Ranges: as in :mod:`simulators.hopf_node` for ``a`` and ``sigma`` (whole-brain Hopf
models work near ``a = 0``, Deco et al. 2017). ``G`` runs from uncoupled regions to
coupling rates ``G sum_j C_ij`` (row sums of ``C`` are about 3.5) of up to 0.35 /ms,
far above the 0.013 rad/ms spread of natural frequencies: through the transition in
which functional connectivity grows with ``G`` (mean FC from 0 to about 0.3 at
``a = -0.01`` and to about 0.6 at ``a = 0.01``).

Simulation: ``dt = 1 ms``, classical Runge-Kutta, 0.5 s transient discarded, 4 s
recorded at 250 Hz: recording ``(1000, 8)``. Measurement noise: std ``1e-3``.

Default summary (73 features): log band power in theta/alpha/beta per region (24),
spectral peak frequency and power per region (16), the functional-connectivity upper
triangle (28) and FCD statistics over 1 s windows every 0.25 s (mean, std, 10/50/90 %
quantiles; 5).

References
----------
Deco, G. et al. (2017). The dynamics of resting fluctuations in the brain: metastability
and its dynamical cortical core. Scientific Reports 7, 3095.
Hansen, E. C. A. et al. (2015). Functional connectivity dynamics: modeling the switching
behavior of the resting state. NeuroImage 105, 525-535.

Examples
--------
>>> import jax
>>> from simulators import hopf_network
>>> hopf_network.task.observe(hopf_network.true_theta, jax.random.key(0)).shape
(1000, 8)
>>> hopf_network.task.simulate(hopf_network.true_theta, jax.random.key(0)).shape
(73,)
"""

from __future__ import annotations

import brainmass
import brainstate
import brainunit as u
import jax
import numpy as np
import numpyro.distributions as dist

import bmsbi
from bmsbi.summaries import FC, FCD, BandPower, SpectralPeak, combine

from ._task import FS, N_TIME, Task, add_measurement_noise, as_float32, white_noise_sigma, record

__all__ = ["task", "prior", "observe", "simulate", "summary", "true_theta", "fs",
           "connectome", "frequencies"]

DT = 1.0  # ms
SPEED = 10.0  # mm/ms (= m/s)
OBS_NOISE = 1e-3

connectome = brainmass.datasets.load_dataset("example_connectome")
N_REGIONS = int(np.asarray(connectome.weights).shape[0])
#: Natural frequency of each region, Hz.
frequencies = np.linspace(9.0, 11.0, N_REGIONS)

fs = FS
prior = bmsbi.Prior({
    "G": dist.Uniform(0.0, 0.1),
    "a": dist.Uniform(-0.05, 0.05),
    "sigma": dist.LogUniform(1e-3, 5e-2),
})
true_theta = (0.03, -0.01, 0.01)
summary = combine(
    BandPower(FS, bands={"theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0)}, nperseg=256),
    SpectralPeak(FS, nperseg=256),
    FC(),
    FCD(FS, window=250, step=63),
)


def _observe(theta, key):
    G, a, sigma = theta[0], theta[1], theta[2]
    k_model, k_obs = jax.random.split(key)
    noise = white_noise_sigma(sigma, DT)
    # Network sizes its delay buffers from dt at construction.
    with brainstate.random.seed_context(k_model), brainstate.environ.context(dt=DT * u.ms):
        node = brainmass.HopfStep(
            N_REGIONS, a=a, w=2.0 * np.pi * frequencies / 1000.0, beta=1.0, method="rk4",
            noise_x=brainmass.GaussianNoise(N_REGIONS, sigma=noise),
            noise_y=brainmass.GaussianNoise(N_REGIONS, sigma=noise))
        net = brainmass.Network(
            node, conn=np.asarray(connectome.weights), distance=connectome.distances,
            speed=SPEED * u.mm / u.ms, coupled_var="x", k=G)
        res = record(net, DT, lambda m: m.node.x.value)
    return add_measurement_noise(as_float32(res["output"]), OBS_NOISE, k_obs)


task = Task(
    name="hopf_network",
    prior=prior,
    observe_fn=_observe,
    summary=summary,
    fs=FS,
    n_time=N_TIME,
    n_regions=N_REGIONS,
    true_theta=true_theta,
    description=(
        "8-region Hopf network (brainmass.Network on the example_connectome, diffusive "
        "coupling on x, delays at 10 m/s, alpha frequencies 9-11 Hz, white noise, rk4, "
        "dt 1 ms); recording x at 250 Hz for 4 s after a 0.5 s transient, measurement "
        "noise std 1e-3. Parameters: global coupling G (1/ms), bifurcation a (1/ms), "
        "noise sigma."),
    units={"G": "1/ms", "a": "1/ms", "sigma": "1/sqrt(ms)", "recording": "a.u."},
    obs_noise=OBS_NOISE,
)
observe = task.observe
simulate = task.simulate
