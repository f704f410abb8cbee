"""Recordings that know their sampling rate: :class:`Recording` and :func:`read_recording`.

A :class:`Recording` is a ``(time, channels)`` float array with its sampling rate
``fs`` (Hz), optional channel names, a unit and a name. It is validated once, when it
is made, so everything downstream (a posterior's :meth:`~bmsbi.Posterior.infer`, the
``bmsbi infer`` command) can rely on it: finite values, two axes, ``fs > 0``, unique
channel names. Nothing is resampled, cropped or reordered without saying so: every
method that changes the data returns a new recording whose :attr:`Recording.notes`
say what was done.

:func:`read_recording` reads ``.npy``, ``.csv``, ``.npz`` and MATLAB ``.mat`` files
with numpy/scipy, and EDF/BDF, FIF, BrainVision and EEGLAB files through MNE-Python
(the optional extra ``pip install bmsbi[mne]``). Files are data, never code: no
pickle.

Examples
--------
>>> import numpy as np, bmsbi
>>> rec = bmsbi.Recording(np.zeros((1000, 2)), fs=250, channels=["O1", "O2"], name="rest")
>>> rec
Recording('rest', 1000 samples x 2 channels ['O1', 'O2'] at 250 Hz, 4 s)
>>> rec.resample(1000).n_samples, rec.crop(0.0, 2.0).duration
(4000, 2.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np

from ._checks import check_positive_int, real_array

__all__ = ["Recording", "RecordingSpec", "read_recording", "read_csv", "resample_ratio",
           "MAX_RESAMPLE_FACTOR", "MNE_SUFFIXES", "LONG_OPTIONS", "RecordingWarning"]

# resample_poly's filter grows with max(up, down); 1000 covers every pair of rates met
# in practice (250 <-> 1000, 512 -> 250 = 125/256, 44100 -> 1000 = 10/441).
MAX_RESAMPLE_FACTOR = 1000
# What a posterior does with a recording longer than it was trained on (RecordingSpec.conform).
LONG_OPTIONS = ("refuse", "epochs")
# The anti-aliasing filter of Recording.resample: a Kaiser-windowed sinc with 64 taps per
# side per unit of max(up, down) and beta 9 (about 90 dB stop band). scipy's default (10
# taps, beta 5) has a wide transition band that dulls the top of the band, enough to move
# a hopf_node posterior resampled to 1 kHz and back noticeably more than this filter does
# (benchmarks/RESULTS.md, section "Numbers moved out of docstrings").
_FILTER_TAPS_PER_SIDE = 64
_FILTER_BETA = 9.0
# Relative mismatch tolerated between fs_new / fs and its small-integer fraction.
_RATIO_TOLERANCE = 1e-9
# File suffixes read_recording reads through MNE -> the mne.io reader it calls.
MNE_SUFFIXES = {".edf": "read_raw_edf", ".bdf": "read_raw_bdf", ".fif": "read_raw_fif",
                ".fif.gz": "read_raw_fif", ".vhdr": "read_raw_brainvision", ".set": "read_raw_eeglab"}
_NUMPY_SUFFIXES = (".npy", ".csv", ".npz", ".mat")
# FIFF unit codes (mne.io.constants.FIFF.FIFF_UNIT_*) of the channel kinds recordings hold.
_FIFF_UNITS = {107: "V", 112: "T", 201: "T/m", 0: "", -1: ""}


class RecordingWarning(UserWarning):
    """A recording was changed (resampled, split, reordered) or looks suspicious (a flat channel)."""


def _check_fs(fs, arg: str = "fs") -> float:
    if isinstance(fs, (bool, np.bool_)) or not isinstance(fs, (int, float, np.integer, np.floating)):
        raise ValueError(f"{arg}: expected a sampling rate in Hz (a positive number), got {fs!r}")
    value = float(fs)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{arg}: expected a sampling rate in Hz (a positive, finite number), got {fs!r}")
    return value


def resample_ratio(fs_from: float, fs_to: float, *, max_factor: int = MAX_RESAMPLE_FACTOR):
    """``(up, down)``, small integers with ``fs_to / fs_from == up / down``.

    Raises ``ValueError`` naming both rates when the ratio is not (within a relative
    1e-9) a fraction whose terms are at most ``max_factor``: such a pair is not
    resampled by a polyphase filter.

    Examples
    --------
    >>> resample_ratio(1000, 250), resample_ratio(512, 250)
    ((1, 4), (125, 256))
    """
    fs_from, fs_to = _check_fs(fs_from, "fs_from"), _check_fs(fs_to, "fs_to")
    ratio = fs_to / fs_from
    frac = Fraction(ratio).limit_denominator(max_factor)
    if frac.numerator == 0 or frac.numerator > max_factor or \
            abs(float(frac) - ratio) > _RATIO_TOLERANCE * ratio:
        raise ValueError(
            f"fs: cannot resample {fs_from:g} Hz to {fs_to:g} Hz: the ratio {ratio:.9g} is not a "
            f"ratio of integers up to {max_factor}; resample the recording yourself (e.g. "
            f"scipy.signal.resample) to {fs_to:g} Hz and build a Recording at that rate")
    return frac.numerator, frac.denominator


def _as_data(data) -> tuple[np.ndarray, list]:
    """``data`` as a float ``(time, channels)`` array, and notes on conversions made."""
    notes = []
    if isinstance(data, Recording):
        raise ValueError("data: expected an array, got a Recording; use the Recording itself")
    arr = real_array(data, "data", what="a numeric array (time, channels)", allow_bool=False)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"data: expected a 2-D array (time, channels) (or 1-D for one channel), got "
                         f"shape {arr.shape}; for several recordings make one Recording each")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"data: expected at least one sample and one channel, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        notes.append(f"integer data ({arr.dtype}) converted to float64: raw integer units (ADC "
                     "counts?) — scale to physical units if the model expects them")
        arr = arr.astype(np.float64)
    elif arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    arr = np.array(arr, copy=True, order="C")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"data: expected finite values, got {int(bad.sum())} NaN/inf values in channel(s) "
            f"{sorted(set(cols.tolist()))[:10]} between samples {rows.min()} and {rows.max()}; "
            "interpolate or cut the bad stretch first (e.g. rec.crop)")
    arr.flags.writeable = False
    return arr, notes


def _channel_names(channels, arg="channels") -> tuple:
    """``channels`` as a tuple of unique, non-empty names; ``ValueError`` naming ``arg`` otherwise."""
    if isinstance(channels, str) or not hasattr(channels, "__iter__"):
        raise ValueError(f"{arg}: expected a sequence of channel names (str), got {channels!r}")
    names = list(channels)
    bad = [c for c in names if not isinstance(c, (str, np.str_)) or not str(c)]
    if bad:
        raise ValueError(f"{arg}: expected non-empty strings, got {bad[:5]!r}")
    names = tuple(str(c) for c in names)
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ValueError(f"{arg}: expected unique names, got duplicates {dupes}")
    return names


def _as_channels(channels, shape, arg="channels"):
    """Names for the columns of data of ``shape`` (time, channels), or ``None``."""
    if channels is None:
        return None
    names = _channel_names(channels, arg)
    if len(names) != shape[1]:
        hint = ""
        if len(names) == shape[0]:
            hint = f"; the data looks transposed (channels, time): pass data.T, shape {shape[::-1]}"
        raise ValueError(f"{arg}: expected {shape[1]} names (one per column of data (time, channels), "
                         f"shape {shape}), got {len(names)}{hint}")
    return names


def _optional_str(value, arg):
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{arg}: expected a str or None, got {type(value).__name__}")
    return value


def _notes(notes) -> tuple:
    """``notes`` as a tuple of str; a single string is not a list of notes."""
    if isinstance(notes, (list, tuple)) and all(isinstance(n, str) for n in notes):
        return tuple(notes)
    raise ValueError(f"notes: expected a list of str (one note each), got {notes!r:.80}"
                     + ("; for one note pass [note]" if isinstance(notes, str) else ""))


class Recording:
    """A multichannel recording ``(time, channels)`` sampled at ``fs`` Hz.

    Parameters
    ----------
    data : array-like, ``(time, channels)``
        Real numbers, all finite. A 1-D array is one channel. Floats keep their
        precision (float16 becomes float32); integers (raw units such as ADC counts) are
        accepted and converted to float64, which :attr:`notes` records. Complex, boolean,
        object, string and 3-D data, and ragged lists, are refused.
    fs : float
        Sampling rate in Hz (positive, finite).
    channels : sequence of str, optional
        One unique name per column (a single string is refused, even for one channel).
    units : str, optional
        Unit of the values, e.g. ``"V"``, ``"uV"``, ``"a.u."``.
    name : str, optional
        A label (e.g. the file name) used in reports.
    notes : list or tuple of str, optional
        What was already done to the data (carried over by the methods below); a
        single string is refused (pass ``[note]``).

    Attributes
    ----------
    data : numpy array ``(time, channels)``, read-only (a copy of the input)
    fs : float
    channels : tuple of str or None
    units, name : str or None
    notes : tuple of str
        What was done to the data since it was read: conversions, resampling,
        cropping, epoching, channel selection. :meth:`bmsbi.Posterior.infer` reports
        them per recording.

    Raises
    ------
    ValueError
        Naming the argument, what was expected and what came.

    Examples
    --------
    >>> import numpy as np, bmsbi
    >>> rec = bmsbi.Recording(np.arange(6, dtype=np.int16).reshape(3, 2), fs=100.0)
    >>> rec.data.dtype, rec.n_samples, rec.n_channels, rec.duration
    (dtype('float64'), 3, 2, 0.03)
    >>> rec.notes[0][:40]
    'integer data (int16) converted to float6'
    """

    __slots__ = ("data", "fs", "channels", "units", "name", "notes")

    def __init__(self, data, fs, *, channels=None, units=None, name=None, notes=()):
        arr, made = _as_data(data)
        fs = _check_fs(fs)
        names = _as_channels(channels, arr.shape)
        object.__setattr__(self, "data", arr)
        object.__setattr__(self, "fs", fs)
        object.__setattr__(self, "channels", names)
        object.__setattr__(self, "units", _optional_str(units, "units"))
        object.__setattr__(self, "name", _optional_str(name, "name"))
        object.__setattr__(self, "notes", _notes(notes) + tuple(made))

    def __setattr__(self, key, value):
        raise AttributeError("Recording is immutable; make a new one (e.g. rec.resample, rec.crop)")

    # ---------------------------------------------------------------- shape
    @property
    def n_samples(self) -> int:
        """Number of time samples."""
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of channels (columns)."""
        return int(self.data.shape[1])

    @property
    def duration(self) -> float:
        """Length in seconds, ``n_samples / fs``."""
        return self.n_samples / self.fs

    def __repr__(self):
        label = "" if self.name is None else f"{self.name!r}, "
        chans = ""
        if self.channels is not None:
            shown = list(self.channels[:6])
            chans = " " + (repr(shown) if len(self.channels) <= 6 else repr(shown)[:-1] + ", ...]")
        units = "" if self.units is None else f", {self.units}"
        return (f"Recording({label}{self.n_samples} samples x {self.n_channels} channels{chans} at "
                f"{self.fs:g} Hz, {self.duration:g} s{units})")

    def _with(self, data, *, fs=None, channels=..., note=None, name=...):
        notes = self.notes + ((note,) if note else ())
        return Recording(data, self.fs if fs is None else fs,
                         channels=self.channels if channels is ... else channels, units=self.units,
                         name=self.name if name is ... else name, notes=notes)

    # ------------------------------------------------------------ transforms
    def crop(self, start: float = 0.0, stop: float | None = None) -> "Recording":
        """The samples from ``start`` to ``stop`` seconds (half-open, ``stop=None``: the end).

        Examples
        --------
        >>> import numpy as np, bmsbi
        >>> bmsbi.Recording(np.zeros((1000, 1)), 250).crop(1.0, 3.0).n_samples
        500
        """
        for v, arg in ((start, "start"), (stop, "stop")):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                                  or not math.isfinite(v)):
                raise ValueError(f"{arg}: expected a time in seconds, got {v!r}")
        i0 = round(start * self.fs)
        i1 = self.n_samples if stop is None else round(stop * self.fs)
        if not 0 <= i0 < i1 <= self.n_samples:
            raise ValueError(f"start, stop: expected 0 <= start < stop <= {self.duration:g} s (the "
                             f"recording's length), got start={start!r}, stop={stop!r}")
        if i0 == 0 and i1 == self.n_samples:
            return self
        return self._with(self.data[i0:i1],
                          note=f"cropped to {i0 / self.fs:g}-{i1 / self.fs:g} s (samples {i0}-{i1})")

    def epochs(self, n_samples: int) -> list["Recording"]:
        """Consecutive whole epochs of ``n_samples`` samples; a shorter tail is dropped (noted).

        Examples
        --------
        >>> import numpy as np, bmsbi
        >>> eps = bmsbi.Recording(np.zeros((2600, 1)), 250, name="r").epochs(1000)
        >>> len(eps), eps[1].name, eps[1].notes[-1]
        (2, 'r[epoch 1]', 'epoch 1 of 2 (samples 1000-2000, 4 s each); the last 2.4 s (600 samples) dropped')
        """
        n = check_positive_int(n_samples, "n_samples")
        if n > self.n_samples:
            raise ValueError(f"n_samples: expected at most {self.n_samples} (the recording's length, "
                             f"{self.duration:g} s), got {n} ({n / self.fs:g} s)")
        base = "recording" if self.name is None else self.name
        return [self._with(self.data[i * n:(i + 1) * n], name=f"{base}[epoch {i}]", note=note)
                for i, note in enumerate(_epoch_notes(self.n_samples, n, self.fs))]

    def resample(self, fs_new: float) -> "Recording":
        """The recording at ``fs_new`` Hz by an anti-aliased polyphase filter (``scipy.signal.resample_poly``).

        The filter is a Kaiser-windowed sinc (beta 9, 64 taps per side per unit of
        ``max(up, down)``, cut off at the lower rate's Nyquist frequency): sharper than
        scipy's default, so the band below the new Nyquist frequency is kept nearly
        whole. The ratio ``fs_new / fs`` must be a ratio of integers up to
        :data:`MAX_RESAMPLE_FACTOR` (see :func:`resample_ratio`); else ``ValueError``
        naming both rates. The new length is ``ceil(n_samples * up / down)``.

        Examples
        --------
        >>> import numpy as np, bmsbi
        >>> rec = bmsbi.Recording(np.random.default_rng(0).normal(size=(4000, 1)), 1000)
        >>> low = rec.resample(250)
        >>> low.n_samples, low.fs, low.notes[-1]
        (1000, 250.0, 'resampled from 1000 Hz to 250 Hz (scipy.signal.resample_poly, up=1, down=4)')
        """
        fs_new = _check_fs(fs_new, "fs_new")
        if fs_new == self.fs:
            return self
        from scipy.signal import firwin, resample_poly

        up, down = resample_ratio(self.fs, fs_new)
        factor = max(up, down)
        taps = firwin(2 * _FILTER_TAPS_PER_SIDE * factor + 1, 1.0 / factor,
                      window=("kaiser", _FILTER_BETA))
        data = resample_poly(self.data, up, down, axis=0, window=taps)
        return self._with(data.astype(self.data.dtype), fs=fs_new,
                          note=f"resampled from {self.fs:g} Hz to {fs_new:g} Hz "
                               f"(scipy.signal.resample_poly, up={up}, down={down})")

    def pick(self, channels) -> "Recording":
        """The named channels, in the order given; ``ValueError`` listing names not present.

        Examples
        --------
        >>> import numpy as np, bmsbi
        >>> rec = bmsbi.Recording(np.zeros((10, 3)), 100, channels=["a", "b", "c"])
        >>> rec.pick(["c", "a"]).channels
        ('c', 'a')
        """
        want = _channel_names(channels)
        if self.channels is None:
            raise ValueError("channels: this recording has no channel names; pick by column with "
                             "Recording(rec.data[:, cols], rec.fs, ...)")
        missing = [c for c in want if c not in self.channels]
        if missing:
            raise ValueError(f"channels: {missing} not in the recording (it has {list(self.channels)})")
        if want == self.channels:
            return self
        idx = [self.channels.index(c) for c in want]
        if sorted(want) == sorted(self.channels):
            note = f"channels reordered by name to {list(want)}"
        else:
            dropped = [c for c in self.channels if c not in want]
            note = f"channels {list(want)} selected by name; {dropped} left out"
        return self._with(self.data[:, idx], channels=want, note=note)

    def flat_channels(self) -> list:
        """Channels (names, or column indices without names) whose values never change.

        A flat channel usually means a dead or disconnected electrode.
        """
        flat = np.flatnonzero(np.ptp(self.data, axis=0) == 0).tolist()
        return flat if self.channels is None else [self.channels[i] for i in flat]


def _epoch_notes(n_total: int, n: int, fs: float | None) -> list:
    """A note per whole epoch of ``n`` samples in ``n_total``; the tail dropped is named."""
    count, tail = divmod(n_total, n)
    seconds = (lambda k: f"{k / fs:g} s") if fs else (lambda k: f"{k} samples")
    dropped = "" if tail == 0 else f"; the last {seconds(tail)} ({tail} samples) dropped"
    return [f"epoch {i} of {count} (samples {i * n}-{(i + 1) * n}, {seconds(n)} each){dropped}"
            for i in range(count)]


@dataclasses.dataclass(frozen=True)
class RecordingSpec:
    """What a posterior was trained on: ``n_samples`` x ``n_channels`` at ``fs`` Hz.

    ``fs`` and ``channels`` are ``None`` when unknown (a posterior trained with only a
    ``recording_shape``, or read from a file of schema version 2).

    Examples
    --------
    >>> spec = RecordingSpec(n_samples=1000, n_channels=1, fs=250.0)
    >>> spec.duration, spec
    (4.0, RecordingSpec(1000 samples x 1 channels at 250 Hz, 4 s))
    """

    n_samples: int
    n_channels: int
    fs: float | None = None
    channels: tuple | None = None

    def __post_init__(self):
        object.__setattr__(self, "n_samples", check_positive_int(self.n_samples, "n_samples"))
        object.__setattr__(self, "n_channels", check_positive_int(self.n_channels, "n_channels"))
        if self.fs is not None:
            object.__setattr__(self, "fs", _check_fs(self.fs))
        names = _as_channels(self.channels, (0, self.n_channels))
        object.__setattr__(self, "channels", names)

    @property
    def duration(self) -> float | None:
        """Seconds per recording (``None`` when ``fs`` is unknown)."""
        return None if self.fs is None else self.n_samples / self.fs

    def __repr__(self):
        chans = "" if self.channels is None else f" {list(self.channels)}"
        rate = "" if self.fs is None else f" at {self.fs:g} Hz, {self.duration:g} s"
        return f"RecordingSpec({self.n_samples} samples x {self.n_channels} channels{chans}{rate})"

    def to_dict(self) -> dict:
        return {"n_samples": self.n_samples, "n_channels": self.n_channels, "fs": self.fs,
                "channels": None if self.channels is None else list(self.channels)}

    def _length(self, n: int, fs: float | None = None) -> str:
        fs = self.fs if fs is None else fs
        return f"{n} samples" if fs is None else f"{n / fs:g} s ({n} samples at {fs:g} Hz)"

    def conform(self, recording, *, long: str = "refuse", label: str = "recording 0",
                arg: str = "recordings") -> list:
        """Fit one recording to this spec; returns ``[(data (n_samples, n_channels), notes), ...]``.

        ``recording`` is a :class:`Recording` or a plain 2-D array ``(time, channels)``
        taken at this spec's rate (it may hold NaN: callers flag those). The rules, in
        order (every change is added to the notes; ``label`` names the recording in
        errors):

        1. Channel names on both sides: reordered by name; names the spec holds that
           the recording lacks, or names it holds beyond them, are a ``ValueError``
           listing them (pick the channels with ``rec.pick(spec.channels)``).
        2. Channel count: a ``ValueError``; one that suggests the transpose when the
           time axis has the spec's channel count.
        3. Sampling rate: resampled to ``fs`` (:meth:`Recording.resample`); a rate
           pair that is not a ratio of small integers is a ``ValueError`` naming both.
        4. Length: shorter is a ``ValueError`` naming the seconds needed and given;
           longer is refused (``long="refuse"``) naming the options, or split into whole
           epochs (``long="epochs"``, one entry each; a shorter tail is dropped and noted).
        5. A flat (zero-variance) channel — usually a dead or disconnected electrode —
           is noted and warned about (:class:`RecordingWarning`); it is not refused.
        """
        if long not in LONG_OPTIONS:
            raise ValueError(f"long: expected one of {LONG_OPTIONS}, got {long!r}")
        is_rec = isinstance(recording, Recording)
        rec = recording if is_rec else None
        data = recording.data if is_rec else np.asarray(recording)
        notes = list(recording.notes) if is_rec else []
        if data.ndim != 2:
            raise ValueError(f"{arg}: expected {label} as (time, channels), got shape {data.shape}")
        if is_rec and rec.channels is not None and self.channels is not None:
            missing = [c for c in self.channels if c not in rec.channels]
            extra = [c for c in rec.channels if c not in self.channels]
            if missing:
                raise ValueError(f"{arg}: {label} lacks the channels {missing} the posterior was trained on "
                                 f"(trained: {list(self.channels)}; given: {list(rec.channels)})")
            if extra:
                raise ValueError(f"{arg}: {label} has channels {extra} the posterior was not trained on; "
                                 f"select the trained ones with rec.pick({list(self.channels)}) (or "
                                 "read_recording(path, channels=[...]))")
            rec = rec.pick(self.channels)
            data, notes = rec.data, list(rec.notes)
        n_time, n_chan = data.shape
        if n_chan != self.n_channels:
            hint = ""
            if n_time == self.n_channels:
                hint = (f"; it looks transposed (channels, time): pass its transpose, shape "
                        f"{(n_chan, n_time)}" + (" (Recording(rec.data.T, rec.fs, ...))" if is_rec else " (x.T)"))
            raise ValueError(f"{arg}: expected recordings with {self.n_channels} regions (channels) "
                             f"as (time, channels) = ({self.n_samples}, {self.n_channels}), got {label} "
                             f"of shape {data.shape}{hint}")
        if is_rec and rec.channels is None and self.channels is not None:
            notes.append(f"no channel names: its columns taken as the trained channels "
                         f"{list(self.channels)}, in that order")
        fs = self.fs
        if is_rec:
            if self.fs is None:
                notes.append(f"the posterior does not know its trained rate; taken as recorded "
                             f"({rec.fs:g} Hz)")
                fs = rec.fs
            elif rec.fs != self.fs:
                rec = rec.resample(self.fs)
                data, notes = rec.data, list(rec.notes)
                if recording.fs < self.fs:
                    notes.append(f"upsampled: it holds nothing above {recording.fs / 2:g} Hz (its Nyquist "
                                 f"frequency), while the simulations went up to {self.fs / 2:g} Hz")
        n = self.n_samples
        if len(data) < n:
            given = (f"{recording.duration:g} s ({recording.n_samples} samples at {recording.fs:g} Hz)"
                     if is_rec else self._length(len(data), fs))
            raise ValueError(f"{arg}: {label} is too short: the posterior needs {self._length(n)}, "
                             f"got {given}")
        pieces = [(data, notes)]
        if len(data) > n:
            if long == "refuse":
                count, tail = divmod(len(data), n)
                raise ValueError(
                    f"{arg}: {label} is {self._length(len(data), fs)} long, the posterior was trained on "
                    f"{self._length(n)}; pass long='epochs' to split it into {count} whole epochs"
                    + ("" if tail == 0 else f" (dropping the last {self._length(tail, fs)})")
                    + ", or crop it yourself ("
                    + (f"rec.crop(start, start + {n / fs:g}) for a Recording, " if fs else "")
                    + f"x[start:start + {n}] for an array)")
            pieces = [(data[i * n:(i + 1) * n], notes + [note])
                      for i, note in enumerate(_epoch_notes(len(data), n, fs))]
        flat = np.flatnonzero(np.ptp(data, axis=0) == 0)
        if flat.size:
            names = [rec.channels[i] for i in flat] if is_rec and rec.channels else flat.tolist()
            note = (f"channel(s) {names} flat (zero variance): a dead or disconnected electrode? its "
                    "summaries carry no information")
            warnings.warn(f"{arg}: {label}: {note}", RecordingWarning, stacklevel=3)
            pieces = [(d, ns + [note]) for d, ns in pieces]
        return [(d, tuple(ns)) for d, ns in pieces]


# ------------------------------------------------------------------------ reading
def read_recording(path, *, fs=None, channels=None) -> Recording:
    """Read a recording file into a :class:`Recording` ``(time, channels)``.

    Formats, by suffix:

    - ``.npy`` (one array, ``(time, channels)`` or ``(time,)``) and ``.csv`` (rows = time,
      columns = channels, an optional header line of channel names): the file holds no
      rate, so pass ``fs=`` or put a side-car ``.json`` beside it with the same stem
      (``rec.npy`` + ``rec.json`` holding ``{"fs": 250, "channels": [...], "units": "uV"}``).
    - ``.npz``: the array ``data`` (or the file's only array) and optionally ``fs``,
      ``channels`` (an array of str), ``units``, ``name``.
    - MATLAB ``.mat`` (``scipy.io.loadmat``; v7.3 files through ``h5py`` when it is
      installed): the variable ``data`` (or the file's only numeric matrix) and
      optionally ``fs`` and ``channels`` (a cell array or char matrix).
    - EDF/BDF (``.edf``, ``.bdf``), FIF (``.fif``, ``.fif.gz``), BrainVision (``.vhdr``) and
      EEGLAB (``.set``) through MNE-Python (``pip install bmsbi[mne]``): data in SI units
      (V, T), channel names and the rate from the file.

    Parameters
    ----------
    path : str or os.PathLike
    fs : float, optional
        Sampling rate in Hz. Required when the file (and its side-car) holds none; when
        both give one and they differ, ``ValueError``.
    channels : sequence of str, optional
        Names of the columns when the file has none; when the file names its channels,
        the channels to keep, in this order (a name the file lacks is a ``ValueError``
        listing the file's names; the selection is recorded in :attr:`Recording.notes`).

    Returns
    -------
    Recording
        Named after the file.

    Examples
    --------
    >>> import numpy as np, tempfile, os, bmsbi
    >>> path = os.path.join(tempfile.mkdtemp(), "rest.npz")
    >>> np.savez(path, data=np.zeros((500, 2)), fs=250.0, channels=np.array(["O1", "O2"]))
    >>> bmsbi.read_recording(path)
    Recording('rest.npz', 500 samples x 2 channels ['O1', 'O2'] at 250 Hz, 2 s)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path: expected a file path, got {type(path).__name__}")
    p = Path(path)
    if fs is not None:
        fs = _check_fs(fs)
    if not p.exists():
        raise ValueError(f"path: {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"path: {str(p)!r} is a folder, expected a recording file")
    name = p.name.lower()
    suffix = ".fif.gz" if name.endswith(".fif.gz") else p.suffix.lower()
    if suffix in MNE_SUFFIXES:
        data, meta = _read_mne(p, suffix)
    elif suffix in (".npy", ".csv"):
        data, meta = (_read_npy(p) if suffix == ".npy" else read_csv(p)), _sidecar(p)
    elif suffix == ".npz":
        data, meta = _read_npz(p)
    elif suffix == ".mat":
        data, meta = _read_mat(p)
    else:
        known = ", ".join(_NUMPY_SUFFIXES + tuple(MNE_SUFFIXES))
        raise ValueError(f"path: cannot tell the format of {p.name!r}; expected one of {known}")
    if isinstance(data, tuple):  # csv: (array, header names or None)
        data, header = data
        if header is not None and meta.get("channels") is None:
            meta["channels"] = header
    file_fs = meta.get("fs")
    if file_fs is not None:
        file_fs = _check_fs(file_fs, f"fs (in {p.name})")
        if fs is not None and not math.isclose(fs, file_fs, rel_tol=1e-9):
            raise ValueError(f"fs: {p.name} holds {file_fs:g} Hz but fs={fs:g} was given; drop fs= "
                             "(the file's rate is used) or fix the file")
    rate = fs if fs is not None else file_fs
    if rate is None:
        raise ValueError(f"fs: {p.name} holds no sampling rate; pass fs= (Hz) or write a side-car "
                         f"{p.with_suffix('.json').name} holding {{\"fs\": ...}}")
    file_channels = meta.get("channels")
    try:
        if file_channels is None:
            rec = Recording(data, rate, channels=channels, units=meta.get("units"), name=p.name)
        else:
            rec = Recording(data, rate, channels=file_channels, units=meta.get("units"), name=p.name)
            if channels is not None:
                rec = rec.pick(channels)
    except ValueError as err:
        raise ValueError(f"{err} (reading {p.name})") from None
    return rec


def _sidecar(p: Path) -> dict:
    side = p.with_suffix(".json")
    if not side.exists():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"path: cannot read the side-car {side.name} as JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"path: the side-car {side.name} must hold a JSON object like "
                         f"{{\"fs\": 250, \"channels\": [...]}}, got {type(meta).__name__}")
    unknown = sorted(set(meta) - {"fs", "channels", "units", "name"})
    if unknown:
        raise ValueError(f"path: the side-car {side.name} has unknown keys {unknown}; expected fs, "
                         "channels, units, name")
    return meta


def _read_npy(p: Path):
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"path: cannot read {p.name} as a .npy array ({_first_line(err)})") from None


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_csv(path):
    """``(array (rows, columns) float64, header names or None)`` from a CSV of numbers.

    Numbers separated by commas, one row per time step; a first line that is not all
    numbers is taken as column names. ``ValueError`` for ragged or non-numeric rows.
    """
    p = Path(path)
    try:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"path: cannot read {p.name} as a CSV file ({_first_line(err)})") from None
    header = None
    if lines:
        try:
            [float(v) for v in lines[0].split(",")]
        except ValueError:
            header = [v.strip().strip('"') for v in lines[0].split(",")]
            lines = lines[1:]
    if not lines:
        raise ValueError(f"path: {p.name} holds no rows of numbers")
    try:
        rows = [[float(v) for v in ln.split(",")] for ln in lines]
    except ValueError as err:
        raise ValueError(f"path: {p.name} is not a CSV of numbers ({err})") from None
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"path: {p.name} has rows of different lengths {sorted(widths)}; expected one "
                         "column per channel and one row per time step")
    if header is not None and len(header) != len(rows[0]):
        raise ValueError(f"path: {p.name} has {len(header)} names in its header line but "
                         f"{len(rows[0])} columns")
    return np.asarray(rows, dtype=np.float64), header


_META_KEYS = ("fs", "channels", "units", "name")


def _pick_data(arrays: dict, where: str):
    """The ``data`` entry, or the only numeric array that is not metadata."""
    if "data" in arrays:
        return arrays["data"]
    candidates = [k for k, v in arrays.items() if k not in _META_KEYS and not k.startswith("__")
                  and isinstance(v, np.ndarray) and v.dtype.kind in "iufcb" and v.ndim >= 1]
    if len(candidates) != 1:
        raise ValueError(f"path: {where} has no array named 'data' and {len(candidates)} candidate arrays "
                         f"{candidates}; name the recording's array 'data'")
    return arrays[candidates[0]]


def _scalar(value, key, where):
    arr = np.asarray(value)
    if arr.size != 1:
        raise ValueError(f"path: {where} holds {key!r} of shape {arr.shape}, expected one value")
    item = arr.reshape(()).item()
    return item.decode() if isinstance(item, bytes) else item


def _names(value):
    arr = np.asarray(value)
    if arr.dtype == object:  # MATLAB cell array
        return [str(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else "" for v in arr.reshape(-1)]
    if arr.dtype.kind == "U" and arr.ndim == 2 and arr.shape[0] > 1 and (arr.dtype.itemsize // 4) == 1:
        return ["".join(r).strip() for r in arr]  # a char matrix, one name per row
    return [str(v).strip() for v in arr.reshape(-1)]


def _meta_from(arrays: dict, where: str) -> dict:
    meta = {}
    if "fs" in arrays:
        meta["fs"] = _scalar(arrays["fs"], "fs", where)
    for key in ("units", "name"):
        if key in arrays:
            meta[key] = str(_scalar(arrays[key], key, where))
    if "channels" in arrays:
        meta["channels"] = _names(arrays["channels"])
    return meta


def _read_npz(p: Path):
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"path: cannot read {p.name} as a .npz archive without pickle "
                         f"({_first_line(err)})") from None
    return _pick_data(arrays, p.name), _meta_from(arrays, p.name)


def _read_mat(p: Path):
    from scipy.io import loadmat

    with open(p, "rb") as fh:
        head = fh.read(1024)
    try:
        if b"\x89HDF\r\n\x1a\n" in head:  # MATLAB v7.3 = HDF5 (after a 512-byte text header)
            arrays = _read_mat73(p)
        else:
            arrays = loadmat(p, squeeze_me=False)
    except NotImplementedError:  # v7.3 by scipy's reading of the header
        arrays = _read_mat73(p)
    except (ValueError, OSError, TypeError) as err:
        raise ValueError(f"path: cannot read {p.name} as a MATLAB file ({_first_line(err)})") from None
    arrays = {k: v for k, v in arrays.items() if not k.startswith("__")}
    data = _pick_data(arrays, p.name)
    if data.dtype == object:
        raise ValueError(f"path: the data in {p.name} is a cell array or struct; expected a numeric matrix")
    return data, _meta_from(arrays, p.name)


def _read_mat73(p: Path) -> dict:
    try:
        import h5py
    except ImportError:
        raise ValueError(f"path: {p.name} is a MATLAB v7.3 (HDF5) file; install h5py to read it, or "
                         "re-save it in MATLAB with save(..., '-v7')") from None
    out = {}
    with h5py.File(p, "r") as f:
        for key, item in f.items():
            if isinstance(item, h5py.Dataset) and item.dtype.kind in "iuf":
                # MATLAB stores column-major: h5py shows the transpose of the MATLAB matrix
                out[key] = np.asarray(item[()]).T
                if item.attrs.get("MATLAB_class", b"") == b"char":
                    out[key] = np.asarray(["".join(map(chr, row)) for row in out[key].astype(int)])
    return out


def _read_mne(p: Path, suffix: str):
    try:
        import mne
    except ImportError:
        raise ValueError(f"path: reading {suffix} files needs MNE-Python: pip install 'bmsbi[mne]' "
                         "(or pip install mne)") from None
    reader = getattr(mne.io, MNE_SUFFIXES[suffix])
    try:
        raw = reader(p, preload=True, verbose="error")
    except Exception as err:  # MNE raises many types for malformed files
        raise ValueError(f"path: MNE could not read {p.name} ({type(err).__name__}: "
                         f"{_first_line(err)})") from None
    units = sorted({_FIFF_UNITS.get(int(ch["unit"]), f"FIFF unit {int(ch['unit'])}") for ch in raw.info["chs"]})
    meta = {"fs": float(raw.info["sfreq"]), "channels": list(raw.ch_names),
            "units": units[0] if len(units) == 1 else "mixed (" + ", ".join(u or "?" for u in units) + ")"}
    return raw.get_data().T, meta
