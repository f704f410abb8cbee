"""Wilson-Cowan excitatory-inhibitory population pair: noisy beta/gamma rhythms.

Model (:class:`brainmass.WilsonCowanStep`)::

    tau_E drE/dt = -rE + (1 - rE) F_E(wEE rE - wIE rI + P + n(t))
    tau_I drI/dt = -rI + (1 - rI) F_I(wEI rE - wII rI)
    F_j(x) = 1 / (1 + exp(-a_j (x - theta_j))) - 1 / (1 + exp(a_j theta_j))

with ``n(t)`` an Ornstein-Uhlenbeck input fluctuation (``brainmass.OUProcess``,
correlation time 5 ms, stationary std about ``sigma / sqrt(2)``). Weight names are
brainmass's keyword names: ``wIE`` multiplies ``rI`` in the *excitatory* equation
(inhibition of E by I) and ``wEI`` multiplies ``rE`` in the inhibitory one. The
recording is ``rE`` (fraction of active excitatory cells) at 250 Hz.

Parameters (prior)
------------------
=====  ================================================  =====  ======================
name   meaning                                           unit   prior
=====  ================================================  =====  ======================
wEE    excitatory-to-excitatory weight                   --     Uniform(12, 20)
wIE    inhibitory-to-excitatory weight (``wIE`` kwarg)   --     Uniform(9, 15)
P      external drive to E                               --     Uniform(0, 3)
sigma  OU input noise amplitude                          --     LogUniform(0.01, 0.3)
=====  ================================================  =====  ======================

Ranges: +-25 % around the limit-cycle parameter set of Wilson & Cowan (1972)
(``c1 = 16``, ``c2 = 12``, ``c3 = 15``, ``c4 = 3``, ``a_E = 1.3``, ``theta_E = 4``,
``a_I = 2``, ``theta_I = 3.7``; fixed here except ``c1 = wEE`` and ``c2 = wIE``) and a
drive ``P`` from rest through the oscillatory range (at the standard weights the
population rests below ``P`` of about 1.2 and oscillates above, from about 20 Hz at
``P = 1.25`` to about 43 Hz at ``P = 2``). Time constants ``tau_E = tau_I = 10 ms``.

Simulation: ``dt = 1 ms``, classical Runge-Kutta, 0.5 s transient discarded, 4 s
recorded at 250 Hz: recording ``(1000, 1)``. Measurement noise: std ``5e-4``.

Default summary: :func:`bmsbi.summaries.default_eeg_summary` at 250 Hz (15 features).

References
----------
Wilson, H. R. & Cowan, J. D. (1972). Excitatory and inhibitory interactions in localized
populations of model neurons. Biophys. J. 12, 1-24.

Examples
--------
>>> import jax
>>> from simulators import wilson_cowan
>>> wilson_cowan.task.observe(wilson_cowan.true_theta, jax.random.key(0)).shape
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

from ._task import FS, N_TIME, Task, add_measurement_noise, as_float32, record

__all__ = ["task", "prior", "observe", "simulate", "summary", "true_theta", "fs"]

DT = 1.0  # ms
TAU = 10.0  # ms, both populations
TAU_NOISE = 5.0  # ms, OU correlation time (5 integration steps)
OBS_NOISE = 5e-4

fs = FS
prior = bmsbi.Prior({
    "wEE": dist.Uniform(12.0, 20.0),
    "wIE": dist.Uniform(9.0, 15.0),
    "P": dist.Uniform(0.0, 3.0),
    "sigma": dist.LogUniform(0.01, 0.3),
})
true_theta = (16.0, 12.0, 1.5, 0.05)
summary = default_eeg_summary(FS, nperseg=256)


def _observe(theta, key):
    wEE, wIE, P, sigma = theta[0], theta[1], theta[2], theta[3]
    k_model, k_obs = jax.random.split(key)
    with brainstate.random.seed_context(k_model):
        node = brainmass.WilsonCowanStep(
            1, tau_E=TAU * u.ms, tau_I=TAU * u.ms, a_E=1.3, theta_E=4.0, a_I=2.0, theta_I=3.7,
            wEE=wEE, wIE=wIE, wEI=15.0, wII=3.0, r=1.0, method="rk4",
            noise_E=brainmass.OUProcess(1, mean=P, sigma=sigma, tau=TAU_NOISE * u.ms))
        res = record(node, DT, ["rE"])
    return add_measurement_noise(as_float32(res["rE"]), OBS_NOISE, k_obs)


task = Task(
    name="wilson_cowan",
    prior=prior,
    observe_fn=_observe,
    summary=summary,
    fs=FS,
    n_time=N_TIME,
    n_regions=1,
    true_theta=true_theta,
    description=(
        "Wilson-Cowan E-I pair (brainmass.WilsonCowanStep, tau 10 ms, rk4, dt 1 ms) with "
        "OU input noise on E; recording rE at 250 Hz for 4 s after a 0.5 s transient, "
        "measurement noise std 5e-4. Parameters: weights wEE, wIE, drive P, noise sigma."),
    units={"wEE": "", "wIE": "", "P": "", "sigma": "", "recording": "fraction active"},
    obs_noise=OBS_NOISE,
)
observe = task.observe
simulate = task.simulate
