"""From what a user passes to a posterior to the observations its network is conditioned on.

A :class:`bmsbi.Posterior` takes observations (``x_shape`` or a batch ``(m, *x_shape)``),
raw recordings (:class:`bmsbi.Recording`, lists of them or plain arrays, through the
summary pipeline it stores) and experiments of iid trials (:class:`bmsbi.Trials`). The
functions here turn any of these into one array ``(m, *x_shape)`` — or ``(m, k,
*x_shape)`` for trials, absent trials NaN — and say where every row came from
(:class:`Prepared`). Each takes the posterior as its first argument and reads only its
public attributes (``x_shape``, ``summary``, ``recording_shape``,
``recording_spec``, ``config``, ``max_trials``, ``sums_trials``, ``ood``,
``x_transform``). Observations that the posterior's ``x_transform`` cannot map (a
value ``<= 0`` in a feature it models in log space) are a ``ValueError`` in
:func:`observations` and :func:`raw_observations` alike.

- :func:`observations`: checked (finite) observations for ``sample``, ``log_prob`` and
  ``map``, warning once about changes made to recordings and (optionally) about
  out-of-distribution ones;
- :func:`raw_observations`: the same without the finiteness check, with provenance,
  for ``infer`` and ``ood_score`` (which flag what is not finite instead);
- :func:`prepare`: raw recordings through the stored summary pipeline
  (``Posterior.summarize``);
- :func:`ood_scores`: the posterior's out-of-distribution scores (median over the
  present trials of an experiment).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import jax
import numpy as np

from ._checks import real_array
from .inference import OutOfDistributionWarning, ood_message
from .recording import LONG_OPTIONS, Recording, RecordingWarning
from .trials import Trials, stack_trials, trial_mask

__all__ = ["Prepared", "observations", "raw_observations", "prepare", "ood_scores", "finite_rows"]


class Prepared(NamedTuple):
    """Observations made from what the user passed, with where each row came from.

    ``x`` is ``(m, *x_shape)`` float32 (``(m, k, *x_shape)`` for trials), possibly not
    finite; ``batched`` whether the input was a batch; ``sources`` the index of the
    input recording of each row; ``labels`` a label per row; ``corrections`` per row
    what was done to its data; ``made`` the changes this call made (for warnings).
    """

    x: np.ndarray            # (m, *x_shape) float32, possibly non-finite
    batched: bool
    sources: np.ndarray      # (m,) index of the input recording of each row
    labels: list             # (m,) str
    corrections: list        # (m,) tuple of str: what was done to each row's data
    made: list               # changes this call made, "recording i: ..." (for warnings)


def _is_trials_input(data) -> bool:
    """A :class:`Trials` or a list of them (a list mixing them with other things is refused)."""
    if isinstance(data, Trials):
        return True
    if isinstance(data, (list, tuple)) and any(isinstance(d, Trials) for d in data):
        if not all(isinstance(d, Trials) for d in data):
            kinds = sorted({type(d).__name__ for d in data})
            raise ValueError(f"x_obs: expected a list of bmsbi.Trials (one per experiment), got a list "
                             f"mixing {kinds}; wrap each experiment in bmsbi.Trials")
        return True
    return False


def _checked_input(data, arg: str):
    """Trials and recordings as given; anything else a real numeric array (ragged, complex,
    object or text input is a ``ValueError`` naming ``arg``)."""
    if _is_trials_input(data) or _is_recording_input(data):
        return data
    return real_array(data, arg, what="a numeric array (observations, or raw recordings with a "
                                      "stored summary pipeline)")


def _is_recording_input(data) -> bool:
    """A :class:`bmsbi.Recording` or a list holding one."""
    return isinstance(data, Recording) or (
        isinstance(data, (list, tuple)) and any(isinstance(r, Recording) for r in data))


def _check_observations(post, x_obs, arg="x_obs"):
    """``(x (m, *x_shape) float32, batched)``; ValueError naming ``arg`` otherwise."""
    x = np.asarray(real_array(x_obs, arg), np.float32)
    if x.shape == post.x_shape:
        batched, x = False, x[None]
    elif x.ndim == len(post.x_shape) + 1 and x.shape[1:] == post.x_shape and x.shape[0] > 0:
        batched = True
    else:
        raise ValueError(
            f"{arg}: expected shape {post.x_shape} (one observation) or (m, "
            f"{', '.join(map(str, post.x_shape))}) (a batch), got {x.shape}")
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{arg}: {int(bad.sum())} of {len(x)} observations hold NaN or inf; "
                         "posteriors are defined for finite observations only")
    return x, batched


def _pads_trials(post) -> bool:
    """Every observation goes in as ``(K, *x_shape)`` (an NPE trained with trials)."""
    return not post.sums_trials and post.config.get("trials") is not None


def _is_observation_shape(post, shape) -> bool:
    """``shape`` is one observation or a batch of them."""
    n = len(post.x_shape)
    return tuple(shape) == post.x_shape or (len(shape) == n + 1 and tuple(shape[1:]) == post.x_shape)


def prepare(post, recordings, arg: str, long: str) -> Prepared:
    """Summaries of raw recordings with their provenance (sources, labels, corrections).

    What :meth:`bmsbi.Posterior.summarize` does: recordings are fitted to
    ``post.recording_spec`` (``long`` as there) and passed through ``post.summary``;
    a ``ValueError`` naming ``arg`` when no pipeline is stored or a recording does not fit.
    """
    if long not in LONG_OPTIONS:
        raise ValueError(f"long: expected one of {LONG_OPTIONS}, got {long!r}")
    if post.summary is None:
        raise ValueError(
            f"{arg}: this posterior has no stored summary pipeline, so it takes observations of "
            f"shape {post.x_shape} (or a batch of them); train with NPE().fit(bank, ..., "
            "summary=stat) or on a bank from simulators.Task.bank to accept raw recordings")
    spec = post.recording_spec
    items, batched, plain = _recording_items(post, recordings, arg)
    rows, sources, labels, corrections, made = [], [], [], [], []
    for i, (item, label) in enumerate(items):
        where = f"recording {i}" + (f" ({label!r})" if label != str(i) else "")
        if spec is None:  # nothing known to check against
            pieces = [(np.asarray(getattr(item, "data", item)), tuple(getattr(item, "notes", ())))]
        else:
            pieces = spec.conform(item, long=long, label=where, arg=arg)
        known = len(getattr(item, "notes", ()))
        for k, (data, notes) in enumerate(pieces):
            if plain and spec is not None and spec.fs is not None:
                notes = (f"a plain array: taken to be sampled at {spec.fs:g} Hz (the trained rate)",) + notes
            rows.append(data)
            sources.append(i)
            labels.append(label if len(pieces) == 1 else f"{label}[epoch {k}]")
            corrections.append(tuple(notes))
            made += [f"{where}: {n}" for n in notes[known:] if not n.startswith("a plain array")]
    if plain and spec is not None and spec.fs is not None:
        warnings.warn(f"{arg}: a plain array is taken to be sampled at {spec.fs:g} Hz, the rate the "
                      "posterior was trained on; pass bmsbi.Recording(data, fs) to have its rate "
                      "checked (and resampled)", RecordingWarning, stacklevel=4)
    shapes = sorted({np.shape(r) for r in rows})
    if len(shapes) > 1:
        raise ValueError(f"{arg}: all recordings must have the same shape to be summarised together "
                         f"(this posterior knows no recording shape to fit them to); got {shapes}")
    r = np.stack([np.asarray(d, np.float32) for d in rows])
    batched = batched or len(rows) > len(items)
    expected = "(time, regions)" if spec is None else f"{post.recording_shape} (time, regions)"
    try:
        size = post.summary.output_size(r.shape[1], r.shape[2])
    except ValueError as err:
        raise ValueError(f"{arg}: recordings of shape {r.shape[1:]} do not fit the stored summary "
                         f"({err})") from None
    if size != math.prod(post.x_shape):
        raise ValueError(f"{arg}: recordings of shape {r.shape[1:]} give {size} features, the posterior "
                         f"was trained on {post.x_shape}; expected recordings {expected}")
    x = np.asarray(post.summary.batch(r), np.float32).reshape((len(r),) + post.x_shape)
    return Prepared(x, batched, np.asarray(sources, np.int64), labels, corrections, made)


def _recording_items(post, recordings, arg):
    """``([(Recording or 2-D array, label), ...], batched, plain)`` from what the user passed."""
    if isinstance(recordings, Recording):
        return [(recordings, recordings.name or "0")], False, False
    if isinstance(recordings, (list, tuple)) and any(isinstance(r, Recording) for r in recordings):
        if not all(isinstance(r, Recording) for r in recordings):
            kinds = sorted({type(r).__name__ for r in recordings})
            raise ValueError(f"{arg}: expected a list of bmsbi.Recording or one array, got a list "
                             f"mixing {kinds}; wrap every array in bmsbi.Recording(data, fs)")
        return [(r, r.name or str(i)) for i, r in enumerate(recordings)], True, False
    r = np.asarray(real_array(recordings, arg, what="a bmsbi.Recording, a list of them or a numeric "
                              "array"), np.float32)
    batched = r.ndim == 3
    r = r[:, None] if r.ndim == 1 else r
    r = r[None] if r.ndim == 2 else r
    expected = ("(time, regions)" if post.recording_shape is None
                else f"{post.recording_shape} (time, regions)")
    if r.ndim != 3 or 0 in r.shape:
        raise ValueError(f"{arg}: expected one recording {expected} or a batch (m, time, regions), "
                         f"got shape {np.shape(recordings)}")
    return [(a, str(i)) for i, a in enumerate(r)], batched, True


def observations(post, data, *, warn_ood: bool, arg="x_obs", long: str = "refuse"):
    """``(x, batched)``: finite observations for ``post``'s network from anything it takes.

    ``data``: observations, raw recordings (with a stored summary pipeline) or trials;
    ``x`` is ``(m, *x_shape)``, or ``(m, k, *x_shape)`` for trials (absent ones NaN).
    Changes made to recordings are one :class:`bmsbi.RecordingWarning`; with
    ``warn_ood``, out-of-distribution rows one :class:`OutOfDistributionWarning`.
    Anything not finite, of the wrong shape or kind is a ``ValueError`` naming ``arg``.
    """
    data = _checked_input(data, arg)
    if _is_trials_input(data) or _is_trial_batch(post, data):
        x, batched = _trial_observations(post, data, arg, long, warn_ood=warn_ood)
    else:
        x, batched = _single_observations(post, data, warn_ood=warn_ood, arg=arg, long=long)
        x = _pad_trials(post, x[:, None]) if _pads_trials(post) else x
    return x, batched


def _single_observations(post, data, *, warn_ood: bool, arg="x_obs", long: str = "refuse"):
    """Checked observations from observations or (with a summary) raw recordings.

    Changes made to recordings (resampling, reordering, epochs) are reported in one
    :class:`bmsbi.RecordingWarning`.
    """
    if post.summary is None or not (_is_recording_input(data) or
                                    not _is_observation_shape(post, np.shape(data))):
        if _is_recording_input(data):
            prepare(post, data, arg, long)  # raises: no summary pipeline
        x, batched = _check_observations(post, data, arg)
        post.x_transform.check(x, arg)
        return x, batched
    prepared = prepare(post, data, arg, long)
    x, batched = prepared.x, prepared.batched
    post.x_transform.check(x, arg)
    if prepared.made:
        warnings.warn(f"{arg}: " + "; ".join(prepared.made), RecordingWarning, stacklevel=3)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        raise ValueError(f"{arg}: the summaries of {int(bad.sum())} of {len(x)} recordings hold NaN "
                         "or inf (flat or non-finite signal?); posterior.infer flags them instead")
    if warn_ood and post.ood is not None:
        flagged = ood_scores(post, x) > 1.0
        if flagged.any():
            warnings.warn(ood_message(flagged, post.ood), OutOfDistributionWarning, stacklevel=3)
    return x, batched


def _pad_trials(post, x):
    """``(m, k, *x_shape)`` padded with absent (NaN) trials to the trained ``K``."""
    k_max = post.max_trials
    if x.shape[1] > k_max:
        raise ValueError(f"x_obs: {x.shape[1]} trials per experiment, but this posterior was trained "
                         f"on at most {k_max} (NPE on a bank with trials={k_max})")
    return stack_trials(list(x), k_max, post.x_shape)


def _is_trial_batch(post, data) -> bool:
    """A plain array ``(m, k, *x_shape)``: ``m`` experiments of ``k`` trials (posteriors trained
    on trials only; a bank's ``x`` has this shape)."""
    if post.config.get("trials") is None or _is_recording_input(data) or isinstance(data, Trials):
        return False
    shape = np.shape(data) if isinstance(data, (np.ndarray, jax.Array, list, tuple)) else ()
    n = len(post.x_shape)
    if len(shape) != n + 2 or tuple(shape[2:]) != post.x_shape:
        return False
    return post.summary is None or post.recording_shape is None or \
        tuple(shape[1:]) != tuple(post.recording_shape)


def _trial_prepared(post, data, arg: str, long: str, *, strict: bool) -> Prepared:
    """Experiments of iid trials as ``(m, k_pad, *x_shape)``, absent trials NaN.

    ``strict``: a trial that is not finite is a ``ValueError``; otherwise every row of
    its experiment becomes NaN (``infer`` then reports the experiment as not finite).
    """
    if _is_trial_batch(post, data):
        arr = np.asarray(data, np.float32)
        items, batched = [Trials(a) for a in arr], True
    elif isinstance(data, Trials):
        items, batched = [data], False
    else:
        items, batched = list(data), True
    cap = post.max_trials
    rows, labels, corrections, made = [], [], [], []
    for i, t in enumerate(items):
        where = f"{arg}[{i}]" if batched else arg
        inner = t.data
        p = _single_raw_observations(post, inner, where, "epochs" if isinstance(inner, Recording) else long)
        x, k = p.x, len(p.x)
        if cap is None and k > 1:
            raise ValueError(
                f"{where}: {k} iid trials, but this posterior was trained without trials; train NPE on "
                "a bank simulated with simulate_bank(..., trials=K), or use NLE / NRE (any number of "
                "trials); a batch of separate experiments is a plain (m, ...) array")
        if cap is not None and k > cap:
            raise ValueError(
                f"{where}: {k} iid trials, but this posterior was trained on at most {cap} trials per "
                f"experiment; simulate a bank with trials >= {k}, pass at most {cap} trials, or use "
                "NLE / NRE (any number of trials)")
        bad = ~np.isfinite(x.reshape(k, -1)).all(axis=1)
        if bad.any():
            if strict:
                raise ValueError(f"{where}: trials {np.flatnonzero(bad)[:10].tolist()} of {k} hold NaN or "
                                 "inf (flat or non-finite signal?); posterior.infer flags them instead")
            x = np.full_like(x, np.nan)
        rows.append(x)
        labels.append(t.name or str(i))
        corrections.append(tuple(dict.fromkeys(c for cs in p.corrections for c in cs)))
        made += p.made
    if cap is None:  # one trial each, through a posterior without trials
        x = np.stack([r[0] for r in rows])
    else:
        # NLE / NRE: padded to a power of two, so that k = 5, 6, 7, 8 share one compilation
        width = cap if _pads_trials(post) else 1 << (max(len(r) for r in rows) - 1).bit_length()
        x = stack_trials(rows, width, post.x_shape)
    return Prepared(x, batched, np.arange(len(rows)), labels, corrections, made)


def _trial_observations(post, data, arg, long, *, warn_ood: bool):
    """Finite experiments of trials and ``batched``, warning as :func:`observations` does."""
    prepared = _trial_prepared(post, data, arg, long, strict=True)
    post.x_transform.check(prepared.x, arg)
    if prepared.made:
        warnings.warn(f"{arg}: " + "; ".join(prepared.made), RecordingWarning, stacklevel=4)
    if warn_ood and post.ood is not None:
        flagged = ood_scores(post, prepared.x) > 1.0
        if flagged.any():
            warnings.warn(ood_message(flagged, post.ood), OutOfDistributionWarning, stacklevel=4)
    return prepared.x, prepared.batched


def finite_rows(post, x) -> np.ndarray:
    """Bool ``(m,)``: which rows of ``x`` are finite (trials: at least one present, none part-finite)."""
    if x.ndim == len(post.x_shape) + 2:
        return trial_mask(x, len(post.x_shape)).any(axis=1)
    return np.isfinite(x.reshape(len(x), -1)).all(axis=1) & post.x_transform.mappable(x)


def ood_scores(post, x, pvalue: bool = False):
    """``post.ood`` scores (or p-values) of prepared observations ``x``, ``(m,)``.

    ``x`` as the user gave it: it goes through ``post.x_transform`` (the reference holds
    the training observations as the network saw them). For trials, the median over
    each experiment's present trials (an experiment with none scores ``inf``, p-value
    0). ``post.ood`` must not be ``None``.
    """
    raw = np.asarray(x)
    x = post.x_transform.apply(raw)
    fn = post.ood.pvalue if pvalue else post.ood.score
    if x.ndim == len(post.x_shape) + 1:
        ok = post.x_transform.mappable(raw)  # a value the transform cannot map: unlike anything simulated
        out = np.full(len(x), 0.0 if pvalue else np.inf)
        if ok.any():
            out[ok] = fn(x[ok])
        return out
    m, k = x.shape[:2]
    present = trial_mask(x, len(post.x_shape))
    per = np.full((m, k), np.nan)
    if present.any():
        per[present] = fn(x[present])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an experiment with no present trial
        out = np.nanmedian(per, axis=1)
    return np.where(present.any(axis=1), out, 0.0 if pvalue else np.inf)


def raw_observations(post, data, arg="x_obs", long: str = "refuse") -> Prepared:
    """:class:`Prepared` observations (not checked for finiteness) from observations,
    raw recordings or trials: what ``infer`` and ``ood_score`` flag rather than refuse
    (non-finite rows, and rows with a value ``<= 0`` where ``post.x_transform`` takes the log,
    with an :class:`OutOfDistributionWarning` naming the feature)."""
    data = _checked_input(data, arg)
    if _is_trials_input(data) or _is_trial_batch(post, data):
        p = _trial_prepared(post, data, arg, long, strict=False)
    else:
        p = _single_raw_observations(post, data, arg, long)
        p = p._replace(x=_pad_trials(post, p.x[:, None])) if _pads_trials(post) else p
    message = post.x_transform.problem(p.x, arg)
    if message is not None:  # like a non-finite summary: such rows are flagged, not sampled
        warnings.warn(message + "; these rows are flagged as unlike the simulations",
                      OutOfDistributionWarning, stacklevel=3)
    return p


def _single_raw_observations(post, data, arg="x_obs", long: str = "refuse") -> Prepared:
    """:func:`raw_observations` for input without trials."""
    if post.summary is None or not (_is_recording_input(data) or
                                    not _is_observation_shape(post, np.shape(data))):
        if _is_recording_input(data):
            prepare(post, data, arg, long)  # raises: no summary pipeline
        x = np.asarray(real_array(data, arg), np.float32)
        if x.shape == post.x_shape:
            x, batched = x[None], False
        elif _is_observation_shape(post, x.shape) and len(x) > 0:
            batched = True
        else:
            raise ValueError(f"{arg}: expected shape {post.x_shape} (one observation) or (m, "
                             f"{', '.join(map(str, post.x_shape))}) (a batch), got {x.shape}")
        m = len(x)
        return Prepared(x, batched, np.arange(m), [str(i) for i in range(m)], [()] * m, [])
    return prepare(post, data, arg, long)
