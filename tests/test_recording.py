"""Recordings that know their sampling rate (issue 13, deliverables 1-2).

bmsbi.Recording / read_recording, the recording spec a posterior stores, and the rules
that fit a recording to it: every malformed recording gets a clear error or a reported
correction, never a silent posterior.
"""

import json
import re
import warnings

import jax
import numpy as np
import pytest
from scipy.signal import resample, resample_poly

import bmsbi
import simulators
from bmsbi import io as bio
from bmsbi.recording import RecordingSpec, resample_ratio
from bmsbi.summaries import Moments

FS = 250.0


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hopf():
    """Hopf-node NPE (1,000 samples x 1 channel at 250 Hz) on 2,000 simulations."""
    task = simulators.get("hopf_node")
    bank = task.bank(2000, jax.random.key(0), progress=False)
    post = bmsbi.NPE(hidden=32, num_layers=3, max_epochs=40).fit(
        bank, prior=task.prior, key=jax.random.key(1), progress=False)
    return task, post


@pytest.fixture(scope="module")
def twochan():
    """Two named channels O1, O2 (500 samples at 100 Hz) whose sds are the parameters."""
    rng = np.random.default_rng(0)
    prior = bmsbi.Prior.uniform([0.5, 0.5], [2.0, 2.0], names=["sd_O1", "sd_O2"])
    theta = np.asarray(prior.sample(jax.random.key(0), 1500))
    recs = rng.normal(size=(len(theta), 500, 2)) * theta[:, None, :]
    stat = Moments(orders=(2,))
    x = np.asarray(stat.batch(recs.astype(np.float32)))
    spec = RecordingSpec(n_samples=500, n_channels=2, fs=100.0, channels=("O1", "O2"))
    post = bmsbi.NPE(hidden=16, num_layers=2, max_epochs=30).fit(
        bmsbi.Bank(theta, x, names=prior.names), prior=prior, key=jax.random.key(1),
        progress=False, summary=stat, recording_shape=spec)
    return post


def _hopf_recording(task, seed=0):
    return np.asarray(task.observe(task.true_theta, jax.random.key(seed)), np.float64)


def _quiet_infer(post, recs, n=200, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bmsbi.OutOfDistributionWarning)
        return post.infer(jax.random.key(0), recs, n, **kw)


# ---------------------------------------------------------------- Recording
def test_recording_validates_and_describes_itself():
    rec = bmsbi.Recording(np.arange(12.0).reshape(6, 2), 2.0, channels=["a", "b"], units="uV", name="r")
    assert rec.data.shape == (6, 2) and rec.fs == 2.0 and rec.channels == ("a", "b")
    assert (rec.n_samples, rec.n_channels, rec.duration) == (6, 2, 3.0)
    assert repr(rec) == "Recording('r', 6 samples x 2 channels ['a', 'b'] at 2 Hz, 3 s, uV)"
    with pytest.raises(ValueError):
        rec.data[0, 0] = 1.0  # read-only
    with pytest.raises(AttributeError):
        rec.fs = 3.0
    one = bmsbi.Recording(np.zeros(10), 5)  # 1-D: one channel
    assert one.data.shape == (10, 1) and one.notes == ()
    assert bmsbi.Recording(np.zeros(4, np.float16), 1).data.dtype == np.float32
    for bad, match in [((np.zeros((3, 2)), float("nan")), "fs: expected a sampling rate"),
                       ((np.zeros((3, 2)), -1), "fs: expected"),
                       ((np.zeros((3, 2)), True), "fs: expected"),
                       ((np.array(["a", "b"]), 1), "data: expected a numeric array"),
                       ((np.ones(3, bool), 1), "data: expected real numbers, got booleans")]:
        with pytest.raises(ValueError, match=match):
            bmsbi.Recording(*bad)
    with pytest.raises(ValueError, match="channels: expected non-empty strings"):
        bmsbi.Recording(np.zeros((3, 2)), 1, channels=["a", 2])
    with pytest.raises(ValueError, match="channels: expected a sequence"):
        bmsbi.Recording(np.zeros((3, 1)), 1, channels="a")
    with pytest.raises(ValueError, match="units: expected a str"):
        bmsbi.Recording(np.zeros((3, 1)), 1, units=3)


def test_crop_epochs_pick_resample_are_noted():
    rng = np.random.default_rng(1)
    rec = bmsbi.Recording(rng.normal(size=(2600, 3)), 250, channels=["a", "b", "c"], name="r")
    part = rec.crop(1.0, 3.0)
    assert part.n_samples == 500 and part.notes == ("cropped to 1-3 s (samples 250-750)",)
    np.testing.assert_array_equal(part.data, rec.data[250:750])
    assert rec.crop() is rec
    with pytest.raises(ValueError, match="start, stop: expected 0 <= start < stop <= 10.4 s"):
        rec.crop(5.0, 20.0)
    eps = rec.epochs(1000)
    assert [e.name for e in eps] == ["r[epoch 0]", "r[epoch 1]"]
    assert "the last 2.4 s (600 samples) dropped" in eps[0].notes[-1]
    np.testing.assert_array_equal(eps[1].data, rec.data[1000:2000])
    with pytest.raises(ValueError, match="n_samples: expected at most 2600"):
        rec.epochs(3000)
    picked = rec.pick(["c", "a"])
    np.testing.assert_array_equal(picked.data, rec.data[:, [2, 0]])
    assert "left out" in picked.notes[-1] and "'b'" in picked.notes[-1]
    assert "reordered" in rec.pick(["b", "c", "a"]).notes[-1]
    with pytest.raises(ValueError, match=r"channels: \['x'\] not in the recording"):
        rec.pick(["a", "x"])
    # resampling: exact ratios only, the signal's content kept below the new Nyquist
    t = np.arange(4000) / 1000.0
    tone = bmsbi.Recording(np.sin(2 * np.pi * 10 * t)[:, None], 1000)
    low = tone.resample(250)
    assert low.n_samples == 1000 and low.fs == 250.0
    np.testing.assert_allclose(low.data[100:-100, 0], np.sin(2 * np.pi * 10 * t[::4])[100:-100], atol=2e-3)
    assert resample_ratio(250, 1000) == (4, 1) and resample_ratio(44100, 1000) == (10, 441)
    with pytest.raises(ValueError, match=r"cannot resample 1000 Hz to 353.553 Hz"):
        tone.resample(250 * np.sqrt(2))
    assert tone.resample(1000.0) is tone


# -------------------------------------------------------------- read_recording
def test_read_npy_csv_need_a_rate_from_the_call_or_a_side_car(tmp_path):
    data = np.random.default_rng(0).normal(size=(100, 2))
    np.save(tmp_path / "a.npy", data)
    with pytest.raises(ValueError, match=r"fs: a.npy holds no sampling rate; pass fs="):
        bmsbi.read_recording(tmp_path / "a.npy")
    rec = bmsbi.read_recording(tmp_path / "a.npy", fs=50, channels=["x", "y"])
    np.testing.assert_array_equal(rec.data, data)
    assert (rec.fs, rec.channels, rec.name) == (50.0, ("x", "y"), "a.npy")
    (tmp_path / "a.json").write_text(json.dumps({"fs": 50, "channels": ["x", "y"], "units": "uV"}))
    rec = bmsbi.read_recording(tmp_path / "a.npy")
    assert (rec.fs, rec.channels, rec.units) == (50.0, ("x", "y"), "uV")
    assert bmsbi.read_recording(tmp_path / "a.npy", channels=["y"]).channels == ("y",)
    with pytest.raises(ValueError, match="fs: a.npy holds 50 Hz but fs=100 was given"):
        bmsbi.read_recording(tmp_path / "a.npy", fs=100)
    (tmp_path / "a.json").write_text(json.dumps({"fs": 50, "rate": 3}))
    with pytest.raises(ValueError, match=r"unknown keys \['rate'\]"):
        bmsbi.read_recording(tmp_path / "a.npy")
    (tmp_path / "b.csv").write_text("O1,O2\n1,2\n3,4\n5,6\n")
    rec = bmsbi.read_recording(tmp_path / "b.csv", fs=10)
    assert rec.channels == ("O1", "O2") and rec.data.tolist() == [[1, 2], [3, 4], [5, 6]]
    (tmp_path / "c.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="rows of different lengths"):
        bmsbi.read_recording(tmp_path / "c.csv", fs=10)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="cannot read obj.npy"):  # no pickle, ever
        bmsbi.read_recording(tmp_path / "obj.npy", fs=1)
    with pytest.raises(ValueError, match="cannot tell the format"):
        bmsbi.read_recording(tmp_path / "a.json")
    with pytest.raises(ValueError, match="does not exist"):
        bmsbi.read_recording(tmp_path / "none.npy", fs=1)


def test_read_npz_and_mat(tmp_path):
    from scipy.io import savemat

    data = np.random.default_rng(0).normal(size=(300, 3))
    np.savez(tmp_path / "r.npz", data=data, fs=200.0, channels=np.array(["a", "b", "c"]), units="V")
    rec = bmsbi.read_recording(tmp_path / "r.npz")
    assert (rec.fs, rec.channels, rec.units) == (200.0, ("a", "b", "c"), "V")
    np.testing.assert_array_equal(rec.data, data)
    np.savez(tmp_path / "only.npz", signal=data)
    assert bmsbi.read_recording(tmp_path / "only.npz", fs=1).n_channels == 3
    np.savez(tmp_path / "two.npz", x=data, y=data)
    with pytest.raises(ValueError, match="no array named 'data' and 2 candidate arrays"):
        bmsbi.read_recording(tmp_path / "two.npz", fs=1)
    savemat(tmp_path / "m.mat", {"data": data, "fs": 200.0, "channels": np.array(["a", "b", "c"], dtype=object)})
    rec = bmsbi.read_recording(tmp_path / "m.mat")
    assert rec.fs == 200.0 and rec.channels == ("a", "b", "c")
    np.testing.assert_allclose(rec.data, data)
    savemat(tmp_path / "tc.mat", {"tc": data[:, :2]})
    assert bmsbi.read_recording(tmp_path / "tc.mat", fs=1.0 / 0.72).data.shape == (300, 2)
    with pytest.raises(ValueError, match="fs: m.mat holds 200 Hz but fs=100 was given"):
        bmsbi.read_recording(tmp_path / "m.mat", fs=100)


def test_read_mat_v73_through_h5py(tmp_path):
    h5py = pytest.importorskip("h5py")
    data = np.random.default_rng(0).normal(size=(50, 2))
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:  # MATLAB v7.3 stores the transpose
        f["data"] = data.T
        f["fs"] = np.array([[128.0]])
    with open(path, "r+b") as fh:  # the text header MATLAB writes in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sun Dec  6 08:00:00 2026 HDF5 schema 1.00 .")
    rec = bmsbi.read_recording(tmp_path / "v73.mat")
    assert rec.fs == 128.0
    np.testing.assert_allclose(rec.data, data)


def _mne_raw(n_channels=3, fs=256.0, seconds=2.0):
    mne = pytest.importorskip("mne")
    rng = np.random.default_rng(0)
    names = [f"EEG{i:03d}" for i in range(n_channels)]
    info = mne.create_info(names, fs, ch_types="eeg")
    data = rng.normal(scale=2e-5, size=(n_channels, int(fs * seconds)))
    return mne, mne.io.RawArray(data, info, verbose="error"), data, names


def test_read_fif_through_mne(tmp_path):
    mne, raw, data, names = _mne_raw()
    raw.save(tmp_path / "r_raw.fif", verbose="error")
    rec = bmsbi.read_recording(tmp_path / "r_raw.fif")
    assert rec.fs == 256.0 and rec.channels == tuple(names) and rec.units == "V"
    np.testing.assert_allclose(rec.data, data.T, rtol=1e-6, atol=1e-12)  # (time, channels)
    picked = bmsbi.read_recording(tmp_path / "r_raw.fif", channels=["EEG002", "EEG000"])
    np.testing.assert_allclose(picked.data, data[[2, 0]].T, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="fs: r_raw.fif holds 256 Hz but fs=100 was given"):
        bmsbi.read_recording(tmp_path / "r_raw.fif", fs=100)
    (tmp_path / "bad.fif").write_bytes(b"not a fif file")
    with pytest.raises(ValueError, match="path: MNE could not read bad.fif"):
        bmsbi.read_recording(tmp_path / "bad.fif")


def _write_brainvision(path, data, names, fs):
    """A BrainVision header/marker/binary triple (float32, multiplexed, 1 uV resolution)."""
    stem = path.with_suffix("")
    chans = "".join(f"Ch{i + 1}={n},,1,µV\n" for i, n in enumerate(names))
    path.write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem.name}.eeg\nMarkerFile={stem.name}.vmrk\nDataFormat=BINARY\n"
        f"DataOrientation=MULTIPLEXED\nNumberOfChannels={len(names)}\n"
        f"SamplingInterval={1e6 / fs:g}\n[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n"
        f"[Channel Infos]\n{chans}", encoding="utf-8")
    stem.with_suffix(".vmrk").write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem.name}.eeg\n[Marker Infos]\n", encoding="utf-8")
    (data.T * 1e6).astype("<f4").tofile(stem.with_suffix(".eeg"))  # (time, channels) in uV


def _write_edf(path, data, names, fs):
    """A one-record-per-second EDF file (16-bit samples over +-100 uV)."""
    n_ch, n = data.shape
    per_record, records = int(fs), n // int(fs)
    lo, hi = -100.0, 100.0  # physical range, uV

    def field(values, width):
        return "".join(str(v)[:width].ljust(width) for v in values)

    head = ("0".ljust(8) + "X X X X".ljust(80) + "Startdate 01-JAN-2020 X X X".ljust(80) + "01.01.20"
            + "00.00.00" + str(256 * (n_ch + 1)).ljust(8) + "".ljust(44) + str(records).ljust(8)
            + "1".ljust(8) + str(n_ch).ljust(4))
    head += (field(names, 16) + field(["AgAgCl"] * n_ch, 80) + field(["uV"] * n_ch, 8)
             + field([lo] * n_ch, 8) + field([hi] * n_ch, 8) + field([-32768] * n_ch, 8)
             + field([32767] * n_ch, 8) + field([""] * n_ch, 80) + field([per_record] * n_ch, 8)
             + field([""] * n_ch, 32))
    digital = np.round((data * 1e6 - lo) / (hi - lo) * 65535 - 32768).clip(-32768, 32767).astype("<i2")
    body = digital[:, :records * per_record].reshape(n_ch, records, per_record).transpose(1, 0, 2)
    path.write_bytes(head.encode("ascii") + body.tobytes())


@pytest.mark.parametrize("suffix", [".vhdr", ".edf"])
def test_read_brainvision_and_edf_through_mne(tmp_path, suffix):
    _, _, data, names = _mne_raw()
    path = tmp_path / f"r{suffix}"
    (_write_brainvision if suffix == ".vhdr" else _write_edf)(path, data, names, 256.0)
    rec = bmsbi.read_recording(path)
    assert rec.fs == 256.0 and rec.channels == tuple(names) and rec.n_samples == data.shape[1]
    assert rec.units == "V" and rec.name == path.name
    step = 1e-6 if suffix == ".vhdr" else 200e-6 / 65535  # float32 in uV / the EDF quantum
    np.testing.assert_allclose(rec.data, data.T, atol=step)


def test_read_eeglab_through_mne(tmp_path):
    mne, raw, data, names = _mne_raw()
    pytest.importorskip("eeglabio")  # mne.export writes EEGLAB files through eeglabio
    path = tmp_path / "r.set"
    mne.export.export_raw(path, raw, overwrite=True, verbose="error")
    rec = bmsbi.read_recording(path)
    assert rec.fs == 256.0 and rec.channels == tuple(names)
    np.testing.assert_allclose(rec.data, data.T, rtol=1e-5, atol=1e-12)


def test_mne_missing_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mne(name, *args, **kwargs):
        if name == "mne" or name.startswith("mne."):
            raise ImportError("No module named 'mne'")
        return real_import(name, *args, **kwargs)

    (tmp_path / "r.edf").write_bytes(b"0" * 256)
    monkeypatch.setattr(builtins, "__import__", no_mne)
    with pytest.raises(ValueError, match=r"pip install 'bmsbi\[mne\]'"):
        bmsbi.read_recording(tmp_path / "r.edf")


# --------------------------------------------------------- the recording spec
def test_posterior_stores_its_recording_spec_and_old_files_still_load(hopf, twochan, tmp_path):
    task, post = hopf
    spec = post.recording_spec
    assert (spec.fs, spec.n_samples, spec.n_channels, spec.channels, spec.duration) == (250.0, 1000, 1, None, 4.0)
    assert twochan.recording_spec.channels == ("O1", "O2") and twochan.recording_spec.fs == 100.0
    path = tmp_path / "p.bmsbi"
    twochan.save(path)
    again = bmsbi.load_posterior(path)
    assert again.recording_spec == twochan.recording_spec
    # a schema-2 file (before rates and names were stored) loads with both unknown
    header, payload = bio.read_file(path)
    for key in ("recording_fs", "recording_channels"):
        header["data"].pop(key)
    for key in ("kind", "schema_version", "bmsbi_version", "payload_size", "payload_sha256"):
        header.pop(key)
    bio.write_file(tmp_path / "old.bmsbi", kind="posterior", schema_version=2, header=header, payload=payload)
    old = bmsbi.load_posterior(tmp_path / "old.bmsbi")
    assert old.recording_spec == RecordingSpec(500, 2) and old.recording_spec.duration is None
    rec = bmsbi.Recording(np.random.default_rng(0).normal(size=(500, 2)), 100.0)
    res = _quiet_infer(old, rec, 20)
    assert "does not know its trained rate" in res.corrections[0][0]


def test_the_same_recording_at_1khz_gives_the_same_posterior(hopf):
    """Acceptance: a 1 kHz version of a 250 Hz task recording; means within 0.2 posterior sd.

    The 1 kHz version is the band-limited (FFT) interpolation of the 250 Hz recording: it
    holds exactly the 250 Hz recording's content, so any difference comes from bmsbi's
    resampling back to 250 Hz.
    """
    task, post = hopf
    for seed in range(3):
        x250 = _hopf_recording(task, seed)
        x1000 = resample(x250, 4 * len(x250), axis=0)
        rec250, rec1000 = bmsbi.Recording(x250, 250.0), bmsbi.Recording(x1000, 1000.0)
        a = _quiet_infer(post, rec250, 2000)
        b = _quiet_infer(post, rec1000, 2000)
        assert a.corrections == [()] and "resampled from 1000 Hz to 250 Hz" in b.corrections[0][0]
        shift = np.abs(b.mean()[0] - a.mean()[0]) / a.samples[0].std(0)
        assert shift.max() < 0.2, (seed, shift)
        # the same array without its rate is refused (4x too long), never read at the wrong rate
        with pytest.raises(ValueError, match="16 s .4000 samples at 250 Hz. long"):
            post.infer(jax.random.key(0), x1000, 10)


def test_long_recording_split_into_epochs_in_infer(hopf):
    task, post = hopf
    x = np.concatenate([_hopf_recording(task, s) for s in (1, 2, 3)])[:2900]  # 11.6 s
    short = _hopf_recording(task, 4)
    res = _quiet_infer(post, [bmsbi.Recording(short, FS, name="a"), bmsbi.Recording(x, FS, name="b")],
                       long="epochs")
    assert res.labels == ["a", "b[epoch 0]", "b[epoch 1]"] and res.source.tolist() == [0, 1, 1]
    assert res.corrections[0] == () and "epoch 1 of 2" in res.corrections[2][-1]
    assert "the last 3.6 s (900 samples) dropped" in res.corrections[1][-1]
    assert "b[epoch 1]: epoch 1 of 2" in res.report()
    direct = _quiet_infer(post, bmsbi.Recording(x[1000:2000], FS), 200)
    np.testing.assert_allclose(res.x[2], direct.x[0], rtol=1e-5)
    assert "b[epoch 0]" in res.table()
    with pytest.raises(ValueError, match="long: expected one of"):
        post.infer(jax.random.key(0), bmsbi.Recording(x, FS), 10, long="crop")
    with pytest.raises(ValueError, match="x_obs: to_arviz takes one observation"):
        post.to_arviz(jax.random.key(0), bmsbi.Recording(x, FS), 10, long="epochs")


def test_sample_log_prob_to_arviz_take_recordings_and_report_changes(hopf):
    task, post = hopf
    x250 = _hopf_recording(task, 7)
    rec = bmsbi.Recording(resample_poly(x250, 2, 1, axis=0), 500.0)
    with pytest.warns(bmsbi.RecordingWarning, match="resampled from 500 Hz to 250 Hz"):
        draws = post.sample(jax.random.key(0), rec, 50)
    assert draws.shape == (50, 3)
    with pytest.warns(bmsbi.RecordingWarning, match="resampled"):
        lp = post.log_prob(draws[:4], rec)
    assert lp.shape == (4,) and np.isfinite(np.asarray(lp)).all()
    with pytest.warns(bmsbi.RecordingWarning, match="resampled"):
        idata = post.to_arviz(jax.random.key(0), rec, 20)
    assert idata.posterior["f"].shape == (1, 20)
    with warnings.catch_warnings(record=True) as caught:  # a Recording at the trained rate: silent
        warnings.simplefilter("always")
        post.sample(jax.random.key(0), bmsbi.Recording(x250, FS), 10)
    assert not [w for w in caught if issubclass(w.category, bmsbi.RecordingWarning)]
    with warnings.catch_warnings(record=True) as caught:  # a plain array: one line, once per call
        warnings.simplefilter("always")
        post.sample(jax.random.key(0), np.stack([x250, x250]), 10)
    plain = [str(w.message) for w in caught if issubclass(w.category, bmsbi.RecordingWarning)]
    assert len(plain) == 1 and "taken to be sampled at 250 Hz" in plain[0]
    observation = np.asarray(task.summary(x250))  # observations (summaries) pass as before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post.sample(jax.random.key(0), observation, 10)
    assert not [w for w in caught if issubclass(w.category, bmsbi.RecordingWarning)]


def test_reordered_channels_give_the_same_posterior(twochan):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(500, 2)) * [0.7, 1.6]
    a = _quiet_infer(twochan, bmsbi.Recording(data, 100.0, channels=["O1", "O2"]), 500)
    b = _quiet_infer(twochan, bmsbi.Recording(data[:, ::-1], 100.0, channels=["O2", "O1"]), 500)
    np.testing.assert_allclose(a.x, b.x, rtol=1e-6)
    np.testing.assert_allclose(a.mean(), b.mean(), rtol=1e-5)
    assert np.abs(a.mean()[0] - [0.7, 1.6]).max() < 0.15
    assert b.corrections[0] == ("channels reordered by name to ['O1', 'O2']",)
    unnamed = _quiet_infer(twochan, bmsbi.Recording(data, 100.0), 500)
    assert unnamed.corrections[0] == ("no channel names: its columns taken as the trained channels "
                                      "['O1', 'O2'], in that order",)


# ------------------------------------------------------ the malformed-input table
def _nan_stretch(x):
    x = x.copy()
    x[200:260] = np.nan
    return x


def _flat(x):
    x = x.copy()
    x[:, 1] = 0.0
    return x


_T = np.arange(1000) / FS
# (id, posterior, make(recording at the trained rate) -> input, long, outcome, pattern)
#   outcome: "error" (ValueError from making or inferring), "corrected" (a correction in the
#   Inference, finite samples), "flagged" (a flagged row with NaN samples)
MALFORMED = [
    ("rate higher (1 kHz), resampled", "hopf", lambda x: bmsbi.Recording(resample_poly(x, 4, 1, axis=0), 1000.0),
     "refuse", "corrected", "resampled from 1000 Hz to 250 Hz"),
    ("rate lower (125 Hz), resampled up", "hopf", lambda x: bmsbi.Recording(resample_poly(x, 1, 2, axis=0), 125.0),
     "refuse", "corrected", "holds nothing above 62.5 Hz"),
    ("rate with an irrational ratio", "hopf", lambda x: bmsbi.Recording(x, 250.0 * np.sqrt(2)),
     "refuse", "error", "cannot resample 353.553 Hz to 250 Hz"),
    ("too short", "hopf", lambda x: bmsbi.Recording(x[:500], FS),
     "refuse", "error", r"too short: the posterior needs 4 s \(1000 samples at 250 Hz\), got 2 s"),
    ("too long, refused", "hopf", lambda x: bmsbi.Recording(np.tile(x, (15, 1)), FS),
     "refuse", "error", r"60 s .* long='epochs' to split it into 15 whole epochs, or .*rec.crop\(start, start \+ 4\)"),
    ("too long, split into epochs", "hopf", lambda x: bmsbi.Recording(np.concatenate([x, x[:700]]), FS),
     "epochs", "corrected", r"epoch 0 of 1 .* the last 2.8 s \(700 samples\) dropped"),
    ("plain array too long", "hopf", lambda x: np.tile(x, (2, 1)),
     "refuse", "error", "recording 0 is 8 s"),
    ("transposed plain array", "hopf", lambda x: x.T,
     "refuse", "error", r"looks transposed \(channels, time\): pass its transpose, shape \(1000, 1\)"),
    ("transposed Recording", "hopf", lambda x: bmsbi.Recording(x.T, FS),
     "refuse", "error", r"looks transposed .*Recording\(rec.data.T"),
    ("wrong channel count", "hopf", lambda x: np.tile(x, (1, 3)),
     "refuse", "error", "expected recordings with 1 regions"),
    ("missing channel", "two", lambda x: bmsbi.Recording(x, 100.0, channels=["O1", "Oz"]),
     "refuse", "error", r"lacks the channels \['O2'\]"),
    ("extra channel", "two", lambda x: bmsbi.Recording(np.c_[x, x[:, :1]], 100.0, channels=["O1", "O2", "Cz"]),
     "refuse", "error", r"has channels \['Cz'\] the posterior was not trained on; select .*rec.pick"),
    ("reordered channels", "two", lambda x: bmsbi.Recording(x[:, ::-1], 100.0, channels=["O2", "O1"]),
     "refuse", "corrected", "channels reordered by name"),
    ("NaN stretch in a Recording", "hopf", lambda x: bmsbi.Recording(_nan_stretch(x), FS),
     "refuse", "error", "data: expected finite values, got 60 NaN/inf values in channel.* between samples 200 and 259"),
    ("NaN stretch in a plain array", "hopf", _nan_stretch, "refuse", "flagged", ""),
    ("flat channel (dead electrode?)", "two", lambda x: bmsbi.Recording(_flat(x), 100.0, channels=["O1", "O2"]),
     "refuse", "corrected", r"channel\(s\) \['O2'\] flat \(zero variance\): a dead or disconnected electrode"),
    ("integer raw units", "hopf", lambda x: bmsbi.Recording((x * 1000).astype(np.int16), FS),
     "refuse", "corrected", r"integer data \(int16\) converted to float64"),
    ("empty", "hopf", lambda x: bmsbi.Recording(x[:0], FS),
     "refuse", "error", r"data: expected at least one sample and one channel, got shape \(0, 1\)"),
    ("3-D Recording", "hopf", lambda x: bmsbi.Recording(x[None], FS),
     "refuse", "error", r"data: expected a 2-D array \(time, channels\)"),
    ("4-D plain array", "hopf", lambda x: x[None, None],
     "refuse", "error", "recordings: expected one recording"),
    ("complex values", "hopf", lambda x: bmsbi.Recording(x + 1j, FS),
     "refuse", "error", "data: expected real numbers, got complex"),
    ("mixed list", "hopf", lambda x: [bmsbi.Recording(x, FS), x],
     "refuse", "error", "a list mixing"),
    ("plain array at the right shape", "hopf", lambda x: x,
     "refuse", "corrected", "a plain array: taken to be sampled at 250 Hz"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_recordings_get_an_error_or_a_reported_correction(case, hopf, twochan):
    _, which, make, long, outcome, pattern = case
    if which == "hopf":
        task, post = hopf
        x = _hopf_recording(task, 11)
    else:
        post = twochan
        x = np.random.default_rng(11).normal(size=(500, 2))
    if outcome == "error":
        with pytest.raises(ValueError, match=pattern):
            post.infer(jax.random.key(0), make(x), 50, long=long)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = post.infer(jax.random.key(0), make(x), 50, long=long)
    if outcome == "flagged":
        assert res.flagged.all() and np.isnan(res.samples).all()
        assert any(issubclass(w.category, bmsbi.OutOfDistributionWarning) for w in caught)
        return
    notes = " | ".join(n for c in res.corrections for n in c)
    assert len(res) >= 1 and all(res.corrections), res.corrections
    assert re.search(pattern, notes), notes
    assert np.isfinite(res.samples).all()


def test_docstring_examples_run():
    import doctest

    from bmsbi import recording

    result = doctest.testmod(recording, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 15 and result.failed == 0
