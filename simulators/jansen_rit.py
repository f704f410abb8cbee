"""Jansen-Rit cortical column: an EEG-like signal with alpha rhythms.

Model (:class:`brainmass.JansenRitStep`): pyramidal cells (``M``) and excitatory (``E``)
and inhibitory (``I``) interneurons, second-order synaptic kernels with gains ``A``
(excitatory) and ``B`` (inhibitory), a sigmoid firing-rate function, local connectivity
``C1..C4 = C * (1, 0.8, 0.25, 0.25)`` and an external input rate ``p(t)`` to the
excitatory interneurons. The observable is brainmass's EEG proxy ``eeg() = E - I`` (the
net postsynaptic potential of the pyramidal cells, mV), sampled at 250 Hz.

The input is ``p(t) = mu + sigma_p * xi(t)`` with ``xi`` white noise; its intensity
``sigma_p = 58 Hz sqrt(ms)`` gives 1-ms averages of ``p`` the standard deviation
(58 Hz) of Jansen & Rit's (1995) input, uniform on 120-320 Hz.

Parameters (prior)
------------------
====  =====================================  =====  ======================
name  meaning                                unit   prior
====  =====================================  =====  ======================
A     excitatory synaptic gain (``Ae``)      mV     Uniform(2.6, 6.5)
B     inhibitory synaptic gain (``Ai``)      mV     Uniform(11, 44)
C     local connectivity constant            --     Uniform(67.5, 270)
mu    mean input firing rate                 Hz     Uniform(120, 320)
====  =====================================  =====  ======================

Ranges: around Jansen & Rit's (1995) standard values ``A = 3.25 mV``, ``B = 22 mV``,
``C = 135`` (David & Friston (2003) vary the gains around the same values), from half
to twice each (``A`` from 2.6 mV, the lower end of the range listed in brainmass's
``JansenRitStep`` documentation), and Jansen & Rit's input range 120-320 Hz for ``mu``. The prior covers
noise-driven fixed points, alpha (8-13 Hz) limit cycles and slower, spike-like
oscillations. Time constants and sigmoid keep their standard values
(``a = 100 /s``, ``b = 50 /s``, ``2 e0 = 5 /s``, ``v0 = 6 mV``, ``r = 0.56 /mV``).

Simulation: ``dt = 1 ms``, classical Runge-Kutta (close to a 0.1 ms reference, where
exponential Euler at the same step is not; numbers in ``benchmarks/RESULTS.md``,
section "Numbers moved out of docstrings"), 0.5 s transient discarded, 4 s recorded
at 250 Hz: recording
``(1000, 1)`` in mV. Measurement noise: std 0.02 mV.

Default summary: :func:`bmsbi.summaries.default_eeg_summary` at 250 Hz (15 features).
Its mean feature is the DC level of ``E - I``, which the model defines but an
AC-coupled EEG amplifier would not record; drop it with :meth:`Task.with_summary` for a
DC-blind analysis.

References
----------
Jansen, B. H. & Rit, V. G. (1995). Electroencephalogram and visual evoked potential
generation in a mathematical model of coupled cortical columns. Biol. Cybern. 73, 357-366.
David, O. & Friston, K. J. (2003). A neural mass model for MEG/EEG: coupling and neuronal
dynamics. NeuroImage 20, 1743-1755.

Examples
--------
>>> import jax
>>> from simulators import jansen_rit
>>> jansen_rit.task.observe(jansen_rit.true_theta, jax.random.key(0)).shape
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

DT = 1.0  # ms
SIGMA_P = 58.0  # Hz sqrt(ms): input noise intensity
OBS_NOISE = 0.02  # mV

fs = FS
prior = bmsbi.Prior({
    "A": dist.Uniform(2.6, 6.5),
    "B": dist.Uniform(11.0, 44.0),
    "C": dist.Uniform(67.5, 270.0),
    "mu": dist.Uniform(120.0, 320.0),
})
true_theta = (3.25, 22.0, 135.0, 220.0)
summary = default_eeg_summary(FS, nperseg=256)


def _observe(theta, key):
    A, B, C, mu = theta[0], theta[1], theta[2], theta[3]
    k_model, k_obs = jax.random.split(key)
    with brainstate.random.seed_context(k_model):
        node = brainmass.JansenRitStep(
            1, Ae=A * u.mV, Ai=B * u.mV, C=C, method="rk4",
            noise_E=brainmass.GaussianNoise(1, mean=mu * u.Hz, sigma=white_noise_sigma(SIGMA_P, DT) * u.Hz))
        res = record(node, DT, lambda m: m.eeg())
    eeg = as_float32(res["output"] / u.mV)
    return add_measurement_noise(eeg, OBS_NOISE, k_obs)


task = Task(
    name="jansen_rit",
    prior=prior,
    observe_fn=_observe,
    summary=summary,
    fs=FS,
    n_time=N_TIME,
    n_regions=1,
    true_theta=true_theta,
    description=(
        "Jansen-Rit column (brainmass.JansenRitStep, rk4, dt 1 ms) driven by white-noise "
        "input p = mu + noise; recording the EEG proxy E - I (mV) at 250 Hz for 4 s after "
        "a 0.5 s transient, measurement noise std 0.02 mV. Parameters: synaptic gains A, "
        "B (mV), connectivity C, mean input mu (Hz)."),
    units={"A": "mV", "B": "mV", "C": "", "mu": "Hz", "recording": "mV"},
    obs_noise=OBS_NOISE,
)
observe = task.observe
simulate = task.simulate
