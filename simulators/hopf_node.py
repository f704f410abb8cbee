"""Noisy Hopf (Stuart-Landau) node: an EEG-like oscillation at or near a bifurcation.

Model (:class:`brainmass.HopfStep`, time in ms), with ``z = x + i y``::

    dz/dt = (a + i w) z - |z|^2 z + sigma * (xi_x + i xi_y),     w = 2 pi f / 1000

where ``xi`` is white noise. For ``a < 0`` the node is a noisy damped oscillator
(a spectral bump at ``f`` of width about ``|a| / pi`` kHz); for ``a > 0`` it is a
limit cycle of amplitude ``sqrt(a)`` whose phase and amplitude diffuse with ``sigma``.
The recording is ``x`` sampled at 250 Hz plus white measurement noise.

Parameters (prior)
------------------
=======  ==========================  ================  =========================
name     meaning                     unit              prior
=======  ==========================  ================  =========================
a        bifurcation parameter       1/ms              Uniform(-0.05, 0.05)
f        oscillation frequency       Hz                Uniform(4, 40)
sigma    white-noise intensity       1/sqrt(ms)        LogUniform(1e-3, 5e-2)
=======  ==========================  ================  =========================

Ranges: ``a`` straddles the bifurcation at 0, where whole-brain Hopf models find
their working point, slightly below it (Deco et al. 2017); with time in ms,
``|a| <= 0.05 /ms`` keeps the damping time ``1/|a| >= 20 ms``, i.e. a spectral bump
narrower than its centre frequency over the theta-to-gamma range of EEG rhythms,
``f`` in 4-40 Hz. ``sigma`` spans recordings from noise-dominated to cleanly
oscillating.

Simulation: ``dt = 2 ms``, classical Runge-Kutta (``method='rk4'``: it keeps the
limit-cycle amplitude at ``sqrt(a)``, where brainmass's default exponential Euler treats
the rotation explicitly and overestimates it even at smaller steps; numbers in
``benchmarks/RESULTS.md``, section "Numbers moved out of docstrings"),
white noise as Euler-Maruyama increments, 0.5 s transient discarded, 4 s recorded at
250 Hz: recording ``(1000, 1)``. Measurement noise: std ``1e-3``.

Default summary: :func:`bmsbi.summaries.default_eeg_summary` at 250 Hz (moments,
autocorrelation, log band powers, spectral peak): 15 features.

References
----------
Kuznetsov, Y. A. (2004). Elements of Applied Bifurcation Theory. Springer (normal form).
Deco, G. et al. (2017). The dynamics of resting fluctuations in the brain: metastability
and its dynamical cortical core. Scientific Reports 7, 3095.

Examples
--------
>>> import jax, simulators
>>> from simulators import hopf_node
>>> hopf_node.task.observe(hopf_node.true_theta, jax.random.key(0)).shape
(1000, 1)
>>> hopf_node.task.simulate(hopf_node.true_theta, jax.random.key(0)).shape
(15,)
"""

from __future__ import annotations

import math

import brainmass
import brainstate
import jax
import numpyro.distributions as dist

import bmsbi
from bmsbi.summaries import default_eeg_summary

from ._task import FS, N_TIME, Task, add_measurement_noise, as_float32, white_noise_sigma, record

__all__ = ["task", "prior", "observe", "simulate", "summary", "true_theta", "fs"]

DT = 2.0  # ms; rk4 keeps the limit-cycle amplitude accurate at this step (see the module docstring)
OBS_NOISE = 1e-3

fs = FS
prior = bmsbi.Prior({
    "a": dist.Uniform(-0.05, 0.05),
    "f": dist.Uniform(4.0, 40.0),
    "sigma": dist.LogUniform(1e-3, 5e-2),
})
true_theta = (0.02, 10.0, 0.01)
summary = default_eeg_summary(FS, nperseg=256)


def _observe(theta, key):
    a, f, sigma = theta[0], theta[1], theta[2]
    k_model, k_obs = jax.random.split(key)
    noise = white_noise_sigma(sigma, DT)
    with brainstate.random.seed_context(k_model):
        node = brainmass.HopfStep(
            1, a=a, w=2.0 * math.pi * f / 1000.0, beta=1.0, method="rk4",
            noise_x=brainmass.GaussianNoise(1, sigma=noise),
            noise_y=brainmass.GaussianNoise(1, sigma=noise))
        res = record(node, DT, ["x"])
    return add_measurement_noise(as_float32(res["x"]), OBS_NOISE, k_obs)


task = Task(
    name="hopf_node",
    prior=prior,
    observe_fn=_observe,
    summary=summary,
    fs=FS,
    n_time=N_TIME,
    n_regions=1,
    true_theta=true_theta,
    description=(
        "Noisy Hopf normal-form node (brainmass.HopfStep, white noise on x and y, rk4, "
        "dt 2 ms); recording x at 250 Hz for 4 s after a 0.5 s transient, measurement "
        "noise std 1e-3. Parameters: bifurcation a (1/ms), frequency f (Hz), noise sigma."),
    units={"a": "1/ms", "f": "Hz", "sigma": "1/sqrt(ms)", "recording": "a.u."},
    obs_noise=OBS_NOISE,
)
observe = task.observe
simulate = task.simulate
