"""Truncated sequential neural posterior estimation (TSNPE) for one observation.

:class:`SequentialNPE` spends a simulation budget where one observation ``x_obs`` needs
it (Deistler et al. 2022). Round 1 simulates from the prior. Each later round draws
``theta`` from the prior restricted to the current posterior's ``(1 - epsilon)``
highest-posterior-density (HPD) region: the threshold is the ``epsilon``-quantile of
``log q(theta | x_obs)`` over posterior draws, and prior draws whose posterior density
lies above it are kept (rejection; sampling-importance-resampling from the posterior
when the region is too small a part of the prior for rejection). Every round's
simulations are pooled and :class:`bmsbi.NPE` is trained on all of them with its plain
loss — no proposal correction: inside the truncated region the pooled proposal is
proportional to the prior, so the estimate stays the posterior. With
``warm_start=True`` each round's training continues from the previous round's network
(as the ``sbi`` package does by default), with each round's validation rows held out in
every later round.

The result is an ordinary :class:`bmsbi.Posterior` (NPE's), accurate for ``x_obs`` and
observations like it, no longer amortized over the whole prior predictive.

References
----------
.. [1] Deistler, M., Goncalves, P. J., Macke, J. H. (2022). Truncated proposals for
   scalable and hassle-free simulation-based inference. NeurIPS.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import jax
import numpy as np

from . import io as bio
from ._checks import as_key, check_positive_int, folder_path, real_array
from .bank import Bank, simulate_at, simulate_bank
from .estimators.npe import NPE
from .posterior import Posterior, load_posterior
from .prior import as_prior

__all__ = ["SequentialNPE", "sample_truncated_prior"]

# Fewest simulations a round may have: NPE holds out a tenth for validation, the
# out-of-distribution reference needs 100 rows, and the HPD threshold is read off the
# posterior trained on them.
MIN_SIMULATIONS_PER_ROUND = 100
# Bank meta entries a task writes (simulators.Task.bank) that every round's bank carries,
# so the posterior keeps the task's summary pipeline and recording spec.
_TASK_META = ("task", "summary", "recording_shape", "fs", "prior", "channels")
_MANIFEST = "sequential.json"
_FORMAT = "bmsbi.sequential"


def _check_fraction(value, arg: str, low_open: float, high_open: float) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(value) and low_open < value < high_open
    if not ok:
        raise ValueError(f"{arg}: expected a float in ({low_open:g}, {high_open:g}), got {value!r}")
    return float(value)


def hpd_threshold(posterior: Posterior, x_obs, *, key, epsilon: float, num_samples: int) -> float | None:
    """The ``epsilon``-quantile of ``log q(theta | x_obs)`` over ``num_samples`` posterior draws.

    Parameters above it form the posterior's ``(1 - epsilon)`` HPD region. ``None``, with a
    warning, when the sampler had to clip draws to the prior's box
    (:meth:`bmsbi.Posterior.clipped`): that happens only when under about 1 % of the flow's
    mass lies inside the box at ``x_obs``, the draws are then not posterior samples, and
    the region read from them would be an artefact.
    """
    with warnings.catch_warnings():  # the sampler's own warning about clipped draws: said below
        warnings.filterwarnings("ignore", message=".*lie exactly on the prior's bounds")
        draws = np.asarray(posterior.sample(key, x_obs, num_samples))
    clipped = posterior.clipped(draws)
    if clipped.any():
        warnings.warn(
            f"the round's posterior put nearly all its mass outside the prior's box at x_obs "
            f"({int(clipped.sum())} of {num_samples} draws were clipped to the box: an observation far from "
            f"this round's simulations?); its HPD region cannot be read from them, so the next round "
            f"draws from the whole prior", stacklevel=3)
        return None
    lp = np.asarray(posterior.log_prob(draws, x_obs), np.float64)
    lp = lp[np.isfinite(lp)]
    if lp.size == 0:
        raise ValueError("x_obs: the posterior gives no finite density to its own draws for this observation")
    return float(np.quantile(lp, epsilon))


def sample_truncated_prior(posterior: Posterior, prior, x_obs, num_samples: int, *, key,
                           epsilon: float = 1e-4, batch_size: int = 10_000,
                           min_acceptance: float = 1e-3) -> tuple[np.ndarray, dict]:
    """Draws from ``prior`` restricted to the ``(1 - epsilon)`` HPD region of ``posterior`` at ``x_obs``.

    The region's threshold is the ``epsilon``-quantile of the posterior log density over
    ``batch_size`` posterior draws. Prior draws are then kept when their posterior log
    density lies above it (rejection, in batches of ``batch_size``). When the kept
    fraction shows that ``num_samples`` would take more than
    ``num_samples / min_acceptance`` prior draws (one batch is always tried, and
    draws in hand are kept when it fills ``num_samples``), it switches to
    sampling-importance-resampling: posterior draws inside the region weighted by
    ``prior / posterior`` (bounded there, since the posterior density is at least the
    threshold), resampled with replacement, and warns.

    Parameters
    ----------
    posterior : bmsbi.Posterior
        A normalised posterior (NPE's).
    prior : bmsbi.Prior or dict
    x_obs : array, ``posterior.x_shape``
        One observation.
    num_samples : int
    key : jax PRNG key or int
    epsilon : float in (0, 1), default 1e-4
        Posterior mass left outside the region (the paper's default).
    batch_size : int, default 10,000
        Posterior draws for the threshold, and prior draws per rejection batch.
    min_acceptance : float in (0, 1), default 1e-3
        Below this kept fraction rejection gives way to sampling-importance-resampling.

    Returns
    -------
    theta : numpy.ndarray ``(num_samples, d)``, float32
    info : dict
        ``threshold`` (the log-density threshold; ``None`` when the posterior's draws
        were clipped to the prior's box, see :func:`hpd_threshold`), ``method``
        (``"rejection"``, ``"sir"``, or ``"prior"``: the whole prior, when there was no
        region to read), ``candidates`` (prior or posterior draws evaluated),
        ``acceptance_rate`` (the kept fraction of prior draws) and
        ``truncated_prior_fraction`` (an estimate of the prior mass of the region:
        the kept fraction under rejection, the mean importance weight under SIR).

    Examples
    --------
    >>> import jax, numpy as np, bmsbi
    >>> from bmsbi.sequential import sample_truncated_prior
    >>> prior = bmsbi.Prior.uniform([-3., -3.], [3., 3.])
    >>> theta = np.asarray(prior.sample(jax.random.key(0), 1000))
    >>> x = theta + 0.3 * np.random.default_rng(0).normal(size=theta.shape)
    >>> post = bmsbi.NPE(max_epochs=30).fit(bmsbi.Bank(theta, x.astype("float32")), prior=prior,
    ...                                     key=1, progress=False)
    >>> draws, info = sample_truncated_prior(post, prior, np.zeros(2, "float32"), 200, key=2)
    >>> draws.shape, info["method"], info["truncated_prior_fraction"] < 0.5
    ((200, 2), 'rejection', True)
    """
    prior = as_prior(prior)
    n = check_positive_int(num_samples, "num_samples")
    batch = check_positive_int(batch_size, "batch_size")
    epsilon = _check_fraction(epsilon, "epsilon", 0.0, 1.0)
    min_acceptance = _check_fraction(min_acceptance, "min_acceptance", 0.0, 1.0)
    if not isinstance(posterior, Posterior) or not posterior.normalized:
        raise ValueError(f"posterior: expected a normalised bmsbi.Posterior (NPE's), got {type(posterior).__name__}")
    key = as_key(key)
    thr = hpd_threshold(posterior, x_obs, key=jax.random.fold_in(key, 0), epsilon=epsilon, num_samples=batch)
    if thr is None:  # every posterior draw clipped to the box: no region to truncate to
        theta = np.asarray(prior.sample(jax.random.fold_in(key, 2), n), np.float32)
        return theta, {"threshold": None, "method": "prior", "candidates": n, "acceptance_rate": 1.0,
                       "truncated_prior_fraction": 1.0}

    kept, tried, b = [], 0, 0
    budget = n / min_acceptance
    while sum(len(k) for k in kept) < n:
        cand = np.asarray(prior.sample(jax.random.fold_in(key, 2 + 2 * b), batch), np.float32)
        lp = np.asarray(posterior.log_prob(cand, x_obs))
        kept.append(cand[lp >= thr])
        tried, b = tried + batch, b + 1
        accepted = sum(len(k) for k in kept)
        # Give up on rejection when even an optimistic rate cannot fill the rest within the budget.
        optimistic = (accepted + 2.0 * math.sqrt(accepted) + 3.0) / tried
        if accepted < n and (tried >= budget or optimistic * (budget - tried) < n - accepted):
            break
    accepted = sum(len(k) for k in kept)
    rate = accepted / tried
    if accepted >= n:
        theta = np.concatenate(kept)[:n]
        return theta, {"threshold": thr, "method": "rejection", "candidates": int(tried),
                       "acceptance_rate": rate, "truncated_prior_fraction": rate}

    # Sampling-importance-resampling from the posterior, restricted to the region.
    draws, weights = [], []
    m = max(10 * n, batch)
    for j in range(math.ceil(m / batch)):
        with warnings.catch_warnings():  # clipped draws get weight 0 below; hpd_threshold said how many
            warnings.filterwarnings("ignore", message=".*lie exactly on the prior's bounds")
            th = np.asarray(posterior.sample(jax.random.fold_in(key, 3 + 2 * j), x_obs, batch), np.float32)
        lq = np.asarray(posterior.log_prob(th, x_obs), np.float64)
        lp = np.asarray(prior.log_prob(th), np.float64)
        inside = (lq >= thr) & np.isfinite(lp) & ~posterior.clipped(th)
        w = np.where(inside, np.exp(lp - np.where(np.isfinite(lq), lq, 0.0)), 0.0)
        draws.append(th)
        weights.append(w)
    th, w = np.concatenate(draws), np.concatenate(weights)
    if not np.any(w > 0):
        raise ValueError("x_obs: no posterior draw lies in the posterior's HPD region with positive prior "
                         "density; the posterior does not fit this observation")
    pick = np.random.default_rng(np.asarray(jax.random.key_data(jax.random.fold_in(key, 1))).ravel().tolist())
    idx = pick.choice(len(th), size=n, replace=True, p=w / w.sum())
    ess = float(w.sum() ** 2 / np.sum(w ** 2))
    warnings.warn(
        f"the truncated prior holds about {100 * rate:.3g} % of the prior ({accepted} of {tried} prior "
        f"draws kept), below min_acceptance={min_acceptance:g}; drew it by sampling-importance-"
        f"resampling from the posterior instead (effective sample size {ess:.0f} of {len(th)} draws)",
        stacklevel=2)
    return th[idx], {"threshold": thr, "method": "sir", "candidates": int(tried + len(th)),
                     "acceptance_rate": rate, "truncated_prior_fraction": float(w.mean()),
                     "effective_sample_size": ess}


def _x_shape_of(simulator, dim: int, key):
    """The simulator's output shape from a trace (nothing runs), or ``None`` when it cannot be traced here."""
    try:
        import brainstate

        with brainstate.random.seed_context(key):
            out = jax.eval_shape(simulator, jax.ShapeDtypeStruct((dim,), np.float32), key)
        return tuple(out.shape)
    except Exception:  # simulate_bank reports a broken simulator with its own message
        return None


def _is_task(obj) -> bool:
    """A ``simulators.Task`` (duck-typed: bmsbi does not import ``simulators``)."""
    return all(hasattr(obj, a) for a in ("bank", "prior", "simulator", "summary", "n_time", "n_regions"))


@dataclasses.dataclass
class SequentialNPE:
    """Truncated sequential NPE (TSNPE): a posterior for one observation from rounds of simulations.

    Round 1 simulates ``simulations_per_round`` draws from the prior and trains
    :class:`bmsbi.NPE` on them. Each later round draws ``simulations_per_round``
    parameters from the prior restricted to the current posterior's
    ``(1 - epsilon)`` HPD region at ``x_obs`` (:func:`sample_truncated_prior`),
    simulates them and trains NPE again, from scratch (or, with ``warm_start``, from
    the previous round's network), on every round's simulations pooled, with NPE's
    plain loss. See the module docstring and ``docs/sequential.md``.

    Parameters
    ----------
    rounds : int, default 4
        Rounds of simulation and training (>= 1; 1 is plain NPE).
    simulations_per_round : int, default 1000
        Simulations per round (at least 100).
    epsilon : float in (0, 1), default 1e-4
        Posterior mass left outside the truncated region (Deistler et al.'s default).
    npe : bmsbi.NPE, optional
        The estimator trained each round (its settings). Default ``bmsbi.NPE(ensemble=3)``:
        three networks per round, their mixture the round's posterior — on two-moons
        (5 x 1,000, 5 observations) it brought TSNPE from a mean C2ST above the amortized
        10k NPE's to below it, at three times the training per round and no more
        simulations (``benchmarks/RESULTS.md``, "TSNPE with an ensemble per round"); with
        ``warm_start=True``, ``bmsbi.NPE()`` (a warm start continues one network).
    threshold_samples : int, default 10,000
        Posterior draws that set the HPD threshold; also the batch of prior draws tested.
    min_acceptance : float in (0, 1), default 1e-3
        Below this fraction of prior draws kept, the truncated prior is drawn by
        sampling-importance-resampling instead of rejection (with a warning).
    warm_start : bool, default False
        ``True``: each round after the first trains from the previous round's network,
        its standardisation and ``x_transform`` (``NPE.fit(init=...)``) instead of fresh
        weights, and a ``validation_fraction`` of each round's simulations, drawn once,
        stays held out in every later round (the earlier networks never trained on
        them); it needs a spline flow (``"nsf"``, the default, or ``"flowjax_nsf"``).
        ``False``: every round trains from scratch on a fresh random split. Not the
        default: on two-moons (5 x 1,000, 5 observations) it trained about a third
        faster but no closer (mean C2ST 0.549 against 0.546 from scratch), and on one
        real fMRI subject with 4 x 125 simulations it did not rescue a poor first round
        (``benchmarks/RESULTS.md``, "TSNPE with a warm start on two-moons" and "TSNPE
        on one real fMRI subject").

    Attributes
    ----------
    rounds_info : list of dict
        After :meth:`fit`, one entry per round: ``round``, ``simulations`` (valid
        simulations added), ``num_invalid``, ``pooled`` (simulations trained on),
        ``method`` (``"prior"``, ``"rejection"`` or ``"sir"``), ``acceptance_rate``,
        ``truncated_prior_fraction`` (estimated prior mass of the region the round drew
        from; 1 for round 1), ``threshold``, ``candidates``, ``epochs`` (of that
        round's training; ``None`` for a round whose posterior a resumed run did not
        need) and ``resumed`` (its bank was read back from ``path``). The
        returned posterior holds the same list as JSON text in
        ``posterior.training["sequential_rounds"]`` (saved with it).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, bmsbi
    >>> prior = bmsbi.Prior.uniform([-3., -3.], [3., 3.], names=["a", "b"])
    >>> sim = lambda theta, key: theta + 0.2 * jax.random.normal(key, (2,))
    >>> seq = bmsbi.SequentialNPE(rounds=2, simulations_per_round=300, npe=bmsbi.NPE(max_epochs=30))
    >>> post = seq.fit(sim, prior, jnp.array([0.5, -1.0]), key=0, progress=False)
    >>> post.sample(jax.random.key(1), jnp.array([0.5, -1.0]), 100).shape
    (100, 2)
    >>> [r["method"] for r in seq.rounds_info], seq.rounds_info[1]["truncated_prior_fraction"] < 0.2
    (['prior', 'rejection'], True)
    """

    rounds: int = 4
    simulations_per_round: int = 1000
    epsilon: float = 1e-4
    npe: NPE | None = None
    threshold_samples: int = 10_000
    min_acceptance: float = 1e-3
    warm_start: bool = False

    def __post_init__(self):
        check_positive_int(self.rounds, "rounds")
        n = self.simulations_per_round
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < MIN_SIMULATIONS_PER_ROUND:
            raise ValueError(f"simulations_per_round: expected an int >= {MIN_SIMULATIONS_PER_ROUND}, got {n!r}")
        _check_fraction(self.epsilon, "epsilon", 0.0, 1.0)
        _check_fraction(self.min_acceptance, "min_acceptance", 0.0, 1.0)
        check_positive_int(self.threshold_samples, "threshold_samples")
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise ValueError(f"warm_start: expected a bool, got {self.warm_start!r}")
        if self.npe is None:
            self.npe = NPE() if self.warm_start else NPE(ensemble=3)
        elif not isinstance(self.npe, NPE):
            raise ValueError(f"npe: expected a bmsbi.NPE (its settings), got {type(self.npe).__name__}")
        if self.warm_start and self.npe.ensemble > 1:
            raise ValueError(f"warm_start: continues one network, got npe with ensemble={self.npe.ensemble}; "
                             f"pass warm_start=False or an NPE with ensemble=1")
        if self.warm_start and self.npe.flow_family() not in ("nsf", "flowjax_nsf"):
            raise ValueError(f"warm_start: needs a spline flow ('nsf' or 'flowjax_nsf'), got npe with "
                             f"density_estimator={self.npe.density_estimator!r}; pass warm_start=False")
        self.rounds_info: list[dict] = []

    # ------------------------------------------------------------------ fit
    def fit(self, simulator, prior, x_obs, *, key, path=None, progress: bool = True) -> Posterior:
        """Run the rounds for the observation ``x_obs`` and return the last round's posterior.

        Parameters
        ----------
        simulator : callable or simulators.Task
            ``simulator(theta (d,), key) -> x``, as :func:`bmsbi.simulate_bank` takes it;
            or a task (``simulators.get(name)``), whose simulator, summary and recording
            shape are used as :meth:`simulators.Task.bank` and ``bmsbi train`` use them.
        prior : bmsbi.Prior, dict or None
            The prior; ``None`` (or the task's own prior) with a task.
        x_obs : array of the simulator's output shape
            ONE observation (for a task: its summary, ``task.simulate``'s shape).
        key : jax PRNG key or int
            Round ``r`` (1-based) uses ``fold_in(key, r)``; the same key gives the same run.
        path : str or Path, optional
            Folder keeping every round: ``round_1`` (a :func:`bmsbi.simulate_bank` folder),
            ``round_r`` (:meth:`bmsbi.Bank.save` folders), ``posterior_r.bmsbi`` (each
            round's posterior) and ``sequential.json`` (the settings). Called again with
            the same settings and key — also with more ``rounds`` — it reads back the
            rounds already done instead of simulating them again, and their
            truncations are those of the uninterrupted run. Other settings in the same
            folder are refused.
        progress : bool, default True
            One line per round on stderr, and the bars of :func:`bmsbi.simulate_bank`
            and of the training engine.

        Returns
        -------
        bmsbi.Posterior
            NPE's posterior trained on all rounds (save/load, ``to_arviz`` and the
            diagnostics work as for any); ``rounds_info`` is filled.

        Raises
        ------
        ValueError
            Naming the argument: a simulator that is not callable, a prior that differs
            from a task's, ``x_obs`` that is not one finite observation of the
            simulator's output shape, a ``path`` holding a run with other settings.
        """
        key = as_key(key)
        task = simulator if _is_task(simulator) else None
        if task is not None:
            if prior is not None and as_prior(prior) != task.prior:
                raise ValueError(f"prior: expected None or the task's own prior ({task.prior!r}), got "
                                 f"{as_prior(prior)!r}; for another prior pass task.simulator as the simulator")
            prior, sim = task.prior, task.simulator
            x_shape = (task.summary.output_size(task.n_time, task.n_regions),)
        else:
            if not callable(simulator):
                raise ValueError(f"simulator: expected a callable simulator(theta, key) -> x or a "
                                 f"simulators.Task, got {type(simulator).__name__}")
            if prior is None:
                raise ValueError("prior: expected a bmsbi.Prior (or a dict of numpyro distributions), got None")
            prior, sim = as_prior(prior), simulator
            x_shape = _x_shape_of(sim, prior.dim, key)
        x_obs = self._check_x_obs(x_obs, x_shape)
        folder = self._open_folder(path, sim, prior, x_obs, key)

        n = int(self.simulations_per_round)
        banks: list[Bank] = []
        posteriors: dict[int, Posterior] = {}
        self.rounds_info = []

        def posterior_after(r: int) -> Posterior:
            """The posterior trained on rounds 1..r: read back from ``path``, or trained (and saved)."""
            if r in posteriors:
                return posteriors[r]
            file = None if folder is None else folder / f"posterior_{r}.bmsbi"
            if file is not None and file.exists():
                post = load_posterior(file)
                done = json.loads(post.training.get("sequential_rounds", "[]"))
                self.rounds_info[r - 1]["epochs"] = done[r - 1].get("epochs") if len(done) >= r else None
            else:
                pooled = self._pooled(banks[:r])
                warm = {}
                if self.warm_start:
                    warm["validation_rows"] = self._validation_rows(banks[:r], key)
                    if r > 1:
                        warm["init"] = posterior_after(r - 1)
                post = self.npe.fit(pooled, prior=prior, key=jax.random.fold_in(jax.random.fold_in(key, r), 2),
                                    progress=progress, **warm)
                self.rounds_info[r - 1]["epochs"] = None if post.history is None else int(post.history.epochs)
                post.training["sequential_rounds"] = json.dumps(self.rounds_info[:r])
                if file is not None:
                    post.save(file)
            posteriors[r] = post
            return post

        for r in range(1, int(self.rounds) + 1):
            k_round = jax.random.fold_in(key, r)
            bank = self._read_round(folder, r)
            resumed = bank is not None
            if bank is None and r == 1:
                resumed = folder is not None and (folder / "round_1" / "manifest.json").exists()
                kw = dict(key=jax.random.fold_in(k_round, 0), progress=progress,
                          path=None if folder is None else folder / "round_1")
                if task is not None:
                    bank = task.bank(n, **kw)
                else:
                    bank = simulate_bank(sim, prior, n, **kw)
                info = {"method": "prior", "acceptance_rate": 1.0, "truncated_prior_fraction": 1.0,
                        "threshold": None, "candidates": n}
                bank.meta["sequential"] = info
                if bank.x_shape != x_obs.shape:
                    raise ValueError(f"x_obs: expected one observation of the simulator's output shape "
                                     f"{bank.x_shape}, got shape {x_obs.shape}")
            elif bank is None:
                theta, info = sample_truncated_prior(
                    posterior_after(r - 1), prior, x_obs, n, key=jax.random.fold_in(k_round, 1),
                    epsilon=self.epsilon, batch_size=self.threshold_samples, min_acceptance=self.min_acceptance)
                x = simulate_at(sim, theta, key=jax.random.fold_in(k_round, 0))
                ok = np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)
                meta = {k: banks[0].meta[k] for k in _TASK_META if k in banks[0].meta}
                meta.update(num_simulations=n, num_invalid=int((~ok).sum()), round=r, sequential=info)
                bank = Bank(theta[ok], x[ok], prior.names, meta)
                if folder is not None:
                    self._write_round(folder, r, bank)
            info = dict(bank.meta.get("sequential") or {})
            banks.append(bank)
            entry = {"round": r, "simulations": len(bank), "num_invalid": int(bank.meta.get("num_invalid", 0)),
                     "pooled": sum(len(b) for b in banks), "resumed": resumed, **info, "epochs": None}
            self.rounds_info.append(entry)
            if progress:
                frac = entry.get("truncated_prior_fraction")
                where = "the prior" if r == 1 else (f"the truncated prior ({entry['method']}, "
                                                    f"{100 * frac:.3g} % of the prior)")
                print(f"SequentialNPE round {r}/{self.rounds}: {entry['simulations']} simulations from "
                      f"{where}{', read back' if resumed else ''}; training on {entry['pooled']}",
                      file=sys.stderr, flush=True)

        post = posterior_after(int(self.rounds))
        post.training["sequential_rounds"] = json.dumps(self.rounds_info)
        return post

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _check_x_obs(x_obs, x_shape):
        arr = np.asarray(real_array(x_obs, "x_obs", what="one observation (an array of the simulator's "
                                                         "output shape)"), np.float32)
        if x_shape is not None and arr.shape != tuple(x_shape):
            more = " (a batch of observations? SequentialNPE fits ONE observation)" \
                if arr.ndim > len(x_shape) else ""
            raise ValueError(f"x_obs: expected one observation of the simulator's output shape {tuple(x_shape)}, "
                             f"got shape {arr.shape}{more}")
        if arr.ndim == 0:
            raise ValueError("x_obs: expected one observation (an array of the simulator's output shape), "
                             "got a scalar")
        if not np.isfinite(arr).all():
            raise ValueError("x_obs: holds NaN or inf; expected a finite observation")
        return arr

    def _validation_rows(self, banks, key) -> np.ndarray:
        """Rows of the pooled ``banks`` held out: a ``validation_fraction`` of each round's, drawn once per round."""
        rows, start = [], 0
        for r, bank in enumerate(banks, start=1):
            n = len(bank)
            m = int(round(self.npe.validation_fraction * n))
            seed = np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.fold_in(key, r), 3))).ravel().tolist()
            rows.append(start + np.sort(np.random.default_rng(seed).permutation(n)[:m]))
            start += n
        return np.concatenate(rows).astype(np.int64)

    @staticmethod
    def _pooled(banks) -> Bank:
        first = banks[0]
        meta = {k: first.meta[k] for k in _TASK_META if k in first.meta}
        meta["sequential_rounds"] = len(banks)
        return Bank(np.concatenate([b.theta for b in banks]), np.concatenate([b.x for b in banks]),
                    first.names, meta)

    def _settings(self, sim, prior, x_obs, key) -> dict:
        name = f"{getattr(sim, '__module__', '?')}.{getattr(sim, '__qualname__', type(sim).__qualname__)}"
        return {"simulations_per_round": int(self.simulations_per_round), "epsilon": float(self.epsilon),
                "threshold_samples": int(self.threshold_samples), "min_acceptance": float(self.min_acceptance),
                "warm_start": bool(self.warm_start),
                "npe": {**self.npe.config(), **self.npe.training_config()}, "simulator": name,
                "prior": prior.to_dict(), "x_obs": x_obs.reshape(-1).tolist(), "x_shape": list(x_obs.shape),
                "key": np.asarray(jax.random.key_data(key)).ravel().tolist()}

    def _open_folder(self, path, sim, prior, x_obs, key):
        folder = folder_path(path, "folder for the rounds")
        if folder is None:
            return None
        settings = json.loads(json.dumps(self._settings(sim, prior, x_obs, key)))
        manifest = folder / _MANIFEST
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"path: cannot read {manifest} ({exc})") from None
            if not isinstance(old, dict) or old.get("format") != _FORMAT:
                raise ValueError(f"path: {manifest} is not a bmsbi SequentialNPE manifest")
            differs = sorted(k for k in set(settings) | set(old.get("settings", {}))
                             if settings.get(k) != old.get("settings", {}).get(k))
            if differs:
                raise ValueError(f"path: {folder} holds a SequentialNPE run with other settings (differs in "
                                 f"{differs}); use a new path, or the original settings to resume")
        else:
            if folder.exists() and any(folder.iterdir()):
                raise ValueError(f"path: {folder} exists, is not empty and holds no SequentialNPE run; "
                                 "choose a new folder")
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"format": _FORMAT, "settings": settings}, indent=1)
            bio.atomic_write(manifest, lambda f: f.write(text.encode()))
        return folder

    @staticmethod
    def _read_round(folder, r: int):
        """Round ``r``'s bank from ``folder`` (``None`` when absent; round 1 resumes through simulate_bank)."""
        if folder is None or r == 1:
            return None
        p = folder / f"round_{r}"
        return Bank.load(p) if (p / "manifest.json").exists() else None

    @staticmethod
    def _write_round(folder: Path, r: int, bank: Bank) -> None:
        """Write round ``r``'s bank under a temporary name, then rename it into place (all or nothing)."""
        tmp = folder / f".round_{r}.tmp"
        if tmp.exists():  # left by a run killed while writing
            shutil.rmtree(tmp)
        bank.save(tmp)
        final = folder / f"round_{r}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
