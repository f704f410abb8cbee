"""Whole-brain Hopf model of resting-state BOLD on a real connectome (94 AAL2 regions).

Tasks ``hopf_bold_hcp`` and ``hopf_bold_gw`` (:func:`make_task`): one
:class:`brainmass.HopfStep` oscillator per region in a :class:`brainmass.Network`
on the group structural connectome of the dataset (:func:`bmsbi.datasets.load_connectome`),
diffusive coupling on ``x``, time in seconds::

    dz_j/dt = (a + i w_j) z_j - |z_j|^2 z_j + G sum_k C_jk (x_k - x_j) + sigma xi_j(t)

This is the whole-brain Hopf model of Deco et al. (2017), whose ``x_j`` is read
directly as region ``j``'s BOLD signal (a band-passed proxy: no hemodynamic model). We
choose it over brainmass's ``BOLDSignal`` / ``HRFBold`` because it is the model this
literature fits to resting-state FC and FCD with ``G`` and ``a``; a Balloon-Windkessel
stage would need millisecond neural dynamics underneath, at ~100 times the cost per
simulated minute, for a 94-region network simulated for 12-15 minutes per draw.

* ``C`` = the group connectome's weights scaled to a maximum of 0.2, as in Deco et al.
  (2017). Conduction delays are left out: fibre lengths of up to ~0.35 m at ~10 m/s give
  delays below 35 ms, under half of one integration step (90-100 ms).
* ``w_j = 2 pi f_j`` with ``f_j`` the peak frequency of region ``j``'s BOLD spectrum in
  0.01-0.1 Hz, averaged over the dataset's subjects (Welch, linear detrending), as
  Deco et al. (2017) set each node's frequency from the data (they used 0.04-0.07 Hz).
* Integration: Euler-Maruyama at ``dt = TR / 8`` (hcp, 0.09 s) or ``TR / 20`` (gw,
  0.1 s), 60 s transient discarded from zero initial conditions, then ``x`` sampled
  at the TR for the dataset's number of volumes: recording ``(1200, 94)`` for hcp,
  ``(355, 94)`` for gw, channels named by region, in model units.

Parameters (prior)
------------------
=====  ============================  ==========  =====================================
name   meaning                       unit        prior
=====  ============================  ==========  =====================================
G      global coupling               1/s         Uniform(0, 16)
a      bifurcation parameter         1/s         Uniform(-0.25, 0.05)
sigma  white-noise intensity         1/sqrt(s)   LogUniform(0.005, 0.1)
=====  ============================  ==========  =====================================

Deco et al. (2017) scan ``G`` with ``a`` near ``-0.02`` and noise 0.02; Ipiña et al.
(2020) explore ``a`` in about ``[-0.2, 0.2]``. These group connectomes are sparse (mean
row sum of ``C`` well below 1), so the fit of simulated to empirical FC rises until
``G`` is about 10-14 and falls beyond; the range stops at 16, below where the explicit
integrator loses stability (about 25). ``a`` covers the subcritical range (noise-driven
fluctuations, ``a < 0``) where the fits land, and the onset of oscillations. ``sigma`` only matters relative to
``sqrt(|a|)`` (the recording's scale is arbitrary and the summary is scale-free), so
expect a wide posterior for it.

Default summary (:func:`bold_summary`; 111 features) on the linearly detrended signal,
band-passed to 0.01-0.1 Hz (:class:`bmsbi.summaries.BandPassed`, applied the same way
to simulations and to scanner data): FC strength per region (94), FC distribution and
leading eigenvalues (8), FCD statistics over 60 s windows every 10 s (5), and the
regional mean autocorrelation at lags of about 2, 4, 8 and 16 s (4). Chosen by
measurement on the real recordings (``benchmarks/RESULTS.md``), where no variant tried
fits every subject as well as a grid search: real recordings are not simulations of this
model (no hemodynamics, one parameter set for all regions, one group connectome), so
the posterior of a real subject depends on which summaries the model cannot match.

References
----------
Deco, G., Kringelbach, M. L., Jirsa, V. K., Ritter, P. (2017). The dynamics of resting
fluctuations in the brain: metastability and its dynamical cortical core. Scientific
Reports 7, 3095.
Ipiña, I. P. et al. (2020). Modeling regional changes in dynamic stability during sleep
and wakefulness. NeuroImage 215, 116833.

Examples
--------
>>> import simulators
>>> task = simulators.get("hopf_bold_gw")        # doctest: +SKIP  (needs bmsbi[empirical])
>>> task.n_time, task.n_regions, round(task.fs, 3)   # doctest: +SKIP
(355, 94, 0.5)
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import numpyro.distributions as dist

import bmsbi
from bmsbi.summaries import FCD, Autocorrelation, BandPassed, FCStats, FCStrength, combine

from ._task import Task, as_float32, white_noise_sigma

__all__ = ["make_task", "bold_summary", "node_frequencies", "coupling_matrix", "prior",
           "true_theta", "DATASETS", "TRANSIENT_S", "BAND", "C_MAX", "G_MAX", "BUDGET"]

#: Integration steps per TR for each dataset.
DATASETS = {"hcp": 8, "gw": 20}
TRANSIENT_S = 60.0
BAND = (0.01, 0.1)  # Hz: band-pass of the summary and the node-frequency search
C_MAX = 0.2  # largest coupling weight, as in Deco et al. (2017)
G_MAX = 16.0  # 1/s: FC fits peak near G = 10-14 on these connectomes; Euler diverges past ~25
BUDGET = 5000  # default bank size: where the calibration study (benchmarks/RESULTS.md) found the default NPE calibrated

prior = bmsbi.Prior({
    "G": dist.Uniform(0.0, G_MAX),
    "a": dist.Uniform(-0.25, 0.05),
    "sigma": dist.LogUniform(0.005, 0.1),
})
true_theta = (10.0, -0.03, 0.02)


def _dataset(name) -> str:
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {name!r}")
    return name


def bold_summary(fs: float) -> BandPassed:
    """The default summary of a BOLD recording sampled at ``fs`` Hz (see the module docstring)."""
    tr = 1.0 / fs
    lags = tuple(sorted({max(1, round(s / tr)) for s in (2.0, 4.0, 8.0, 16.0)}))
    return BandPassed(fs, BAND[0], BAND[1], combine(
        FCStrength(), FCStats(), FCD(fs, window=max(2, round(60.0 / tr)), step=max(1, round(10.0 / tr))),
        Autocorrelation(lags=lags, average=True)))


def node_frequencies(recordings) -> np.ndarray:
    """Per-region BOLD peak frequency (Hz) in :data:`BAND`, from the mean normalised Welch spectrum.

    Parameters
    ----------
    recordings : list of bmsbi.Recording
        Recordings of one dataset (same ``fs`` and channels).
    """
    import scipy.signal

    fs = recordings[0].fs
    spectra = []
    for rec in recordings:
        x = scipy.signal.detrend(rec.data, axis=0)
        freqs, p = scipy.signal.welch(x, fs=fs, nperseg=min(256, rec.n_samples), axis=0)
        spectra.append(p / p.sum(axis=0, keepdims=True))
    inside = (freqs >= BAND[0]) & (freqs <= BAND[1])
    return freqs[inside][np.argmax(np.mean(spectra, axis=0)[inside], axis=0)]


def coupling_matrix(connectome) -> np.ndarray:
    """``C``: the connectome's weights scaled to a maximum of :data:`C_MAX`, zero diagonal."""
    w = np.array(connectome.weights, dtype=np.float64)
    np.fill_diagonal(w, 0.0)
    return C_MAX * w / w.max()


@functools.lru_cache(maxsize=None)
def make_task(dataset: str) -> Task:
    """The Hopf BOLD task on dataset ``"hcp"`` or ``"gw"`` (needs ``bmsbi[empirical]``).

    Built once per dataset (cached): reads the group connectome and the subjects'
    spectra for the node frequencies.
    """
    import brainmass
    import brainstate
    import brainunit as u

    from bmsbi import datasets

    dataset = _dataset(dataset)
    info = datasets.DATASETS[dataset]
    connectome = datasets.load_connectome(dataset)
    recordings = datasets.load_fmri(dataset)
    tr, n_time, steps = info["tr"], info["volumes"], DATASETS[dataset]
    dt = tr / steps
    n_regions = len(connectome.regions)
    conn = coupling_matrix(connectome)
    omega = 2.0 * np.pi * node_frequencies(recordings)
    no_delay = np.zeros((n_regions, n_regions))
    n_transient = math.ceil(TRANSIENT_S / tr) * steps
    n_steps = n_transient + n_time * steps

    def observe(theta, key):
        G, a, sigma = theta[0], theta[1], theta[2]
        noise = white_noise_sigma(sigma, dt)
        # Model time unit: one second (brainmass's time axis counts seconds here).
        with brainstate.random.seed_context(key), brainstate.environ.context(dt=dt * u.ms), \
                warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="duration .* is not an integer multiple")
            node = brainmass.HopfStep(
                n_regions, a=a, w=omega, beta=1.0, method="euler",
                noise_x=brainmass.GaussianNoise(n_regions, sigma=noise),
                noise_y=brainmass.GaussianNoise(n_regions, sigma=noise))
            net = brainmass.Network(node, conn=conn, distance=no_delay, speed=1.0,
                                    coupled_var="x", k=G)
            # half a step more than needed: brainmass floors duration / dt
            res = brainmass.Simulator(net, dt=dt * u.ms).run(
                (n_steps + 0.5) * dt * u.ms, monitors=lambda m: m.node.x.value, transient=n_transient,
                sample_every=steps, jit=False)
        return as_float32(res["output"])

    fs = 1.0 / tr
    task = Task(
        name=f"hopf_bold_{dataset}",
        prior=prior,
        observe_fn=observe,
        summary=bold_summary(fs),
        fs=fs,
        n_time=n_time,
        n_regions=n_regions,
        true_theta=true_theta,
        description=(
            f"Whole-brain Hopf model (Deco et al. 2017) on the {dataset} group connectome "
            f"({n_regions} AAL2 regions, weights scaled to max {C_MAX}, diffusive coupling on "
            f"x, no delays), node frequencies from the data's BOLD peaks in 0.01-0.1 Hz; "
            f"Euler-Maruyama at dt {dt:g} s, {TRANSIENT_S:g} s transient; x sampled at TR "
            f"{tr:g} s for {n_time} volumes as the BOLD proxy. Parameters: global coupling G "
            f"(1/s), bifurcation a (1/s), noise sigma."),
        units={"G": "1/s", "a": "1/s", "sigma": "1/sqrt(s)", "recording": "a.u."},
        channels=tuple(connectome.regions),
        budget=BUDGET,
    )
    return task
