"""Montbrio-Pazo-Roxin mean field of quadratic integrate-and-fire neurons.

Model (:class:`brainmass.MontbrioPazoRoxinStep`), the exact firing-rate reduction of a
population of QIF neurons with Lorentzian-distributed excitabilities (centre ``eta``,
half-width ``Delta``) and recurrent coupling ``J``; in units of the membrane time
constant ``tau_m`` (``t~ = t / tau_m``, ``r~ = r tau_m``)::

    dr~/dt~ = Delta / pi + 2 r~ v
    dv/dt~  = v^2 + eta + J r~ - (pi r~)^2 + sigma * xi(t~)

with ``xi`` white noise on the mean membrane potential. Depending on
``(eta, J, Delta)`` the population rests in a low-rate state, a high-rate state (a
focus: noise excites damped oscillations) or, in the bistable region, switches
between them under noise. The recording is the population firing rate
``r = r~ / tau_m`` in Hz, with ``tau_m = 10 ms``, sampled at 250 Hz.

brainmass integrates these equations exactly as written when its ``tau`` is 1 ms and
its ``delta`` is ``Delta / tau``; the task therefore runs brainmass with
``tau = 1 ms``, reads its millisecond as one ``tau_m`` and converts time and rate to
physical units at the output.

Parameters (prior)
------------------
=====  =================================================  ==========  ======================
name   meaning                                            unit        prior
=====  =================================================  ==========  ======================
eta    mean excitability (Lorentzian centre)              --          Uniform(-10, 0)
J      recurrent synaptic weight                          --          Uniform(5, 25)
Delta  excitability heterogeneity (Lorentzian HWHM)       --          Uniform(0.5, 2)
sigma  white-noise intensity on ``v``                     1/sqrt(t~)  LogUniform(0.01, 0.3)
=====  =================================================  ==========  ======================

Ranges: the prior covers the low-activity, bistable and high-activity regions of
the phase diagram of Montbrio, Pazo & Roxin (2015, Fig. 1) around the working point of
their figures, ``eta = -5, J = 15, Delta = 1``, with ``Delta`` varied by a factor 4.
``tau_m = 10 ms`` is a typical membrane time constant.

Simulation: ``dt = 0.05 tau_m`` (0.5 ms), classical Runge-Kutta (matches a fine-step
reference over the prior, where exponential Euler misses the high-rate state even at
smaller steps; numbers in ``benchmarks/RESULTS.md``, section "Numbers moved out of
docstrings"), 0.5 s transient discarded, 4 s recorded at 250 Hz: recording
``(1000, 1)`` in Hz. Measurement noise: std 0.01 Hz.

Default summary: :func:`bmsbi.summaries.default_eeg_summary` at 250 Hz (15 features);
the mean firing rate and band powers separate the low and high states.

References
----------
Montbrio, E., Pazo, D. & Roxin, A. (2015). Macroscopic description for networks of
spiking neurons. Phys. Rev. X 5, 021028.

Examples
--------
>>> import jax
>>> from simulators import montbrio
>>> montbrio.task.observe(montbrio.true_theta, jax.random.key(0)).shape
(1000, 1)
"""

from __future__ import annotations

import brainmass
import brainstate
import brainunit as u
import jax
import numpyro.distributions as dist

import bmsbi
from bmsbi.summaries import default_eeg_summary

from ._task import FS, N_TIME, Task, add_measurement_noise, as_float32, white_noise_sigma, record

__all__ = ["task", "prior", "observe", "simulate", "summary", "true_theta", "fs"]

TAU_M = 10.0  # ms: one brainmass millisecond of this model is one membrane time constant
DT = 0.05  # in units of tau_m (0.5 ms)
OBS_NOISE = 0.01  # Hz

fs = FS
prior = bmsbi.Prior({
    "eta": dist.Uniform(-10.0, 0.0),
    "J": dist.Uniform(5.0, 25.0),
    "Delta": dist.Uniform(0.5, 2.0),
    "sigma": dist.LogUniform(0.01, 0.3),
})
true_theta = (-5.0, 15.0, 1.0, 0.1)
summary = default_eeg_summary(FS, nperseg=256)


def _observe(theta, key):
    eta, J, Delta, sigma = theta[0], theta[1], theta[2], theta[3]
    k_model, k_obs = jax.random.split(key)
    model_ms = u.ms  # one tau_m
    with brainstate.random.seed_context(k_model):
        node = brainmass.MontbrioPazoRoxinStep(
            1, tau=1.0 * model_ms, eta=eta, J=J, delta=Delta / model_ms, method="rk4",
            noise_v=brainmass.GaussianNoise(1, sigma=white_noise_sigma(sigma, DT)))
        res = record(node, DT, ["r"], unit_ms=TAU_M)
    r_tilde = res["r"] * model_ms  # dimensionless rate r * tau_m
    rate_hz = as_float32(r_tilde) * (1000.0 / TAU_M)
    return add_measurement_noise(rate_hz, OBS_NOISE, k_obs)


task = Task(
    name="montbrio",
    prior=prior,
    observe_fn=_observe,
    summary=summary,
    fs=FS,
    n_time=N_TIME,
    n_regions=1,
    true_theta=true_theta,
    description=(
        "Montbrio-Pazo-Roxin QIF mean field (brainmass.MontbrioPazoRoxinStep, rk4, "
        "dt 0.05 tau_m, tau_m = 10 ms) with white noise on v; recording the population "
        "rate (Hz) at 250 Hz for 4 s after a 0.5 s transient, measurement noise std "
        "0.01 Hz. Parameters: excitability eta, coupling J, heterogeneity Delta, noise sigma."),
    units={"eta": "", "J": "", "Delta": "", "sigma": "1/sqrt(tau_m)", "recording": "Hz"},
    obs_noise=OBS_NOISE,
)
observe = task.observe
simulate = task.simulate
