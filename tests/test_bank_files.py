"""Bank and posterior files under bad input: nothing silently wrong.

A bank folder resumes only with the simulator that began it (a digest of its trace,
or a chunk simulated again when the digest cannot vouch), chunk files are checked
against their place in the bank, a budget that cannot fit is refused up front,
damaged manifests and bad paths give a ``ValueError`` naming the argument (one line
and exit 2 from the CLI), and every file bmsbi writes follows one permission and
leftover policy (see :mod:`bmsbi.io`).
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmsbi
import simulators
from bmsbi import io as bio
from bmsbi.cli import main
from bmsbi.posterior import SCHEMA_VERSION, load_posterior

REPO = Path(__file__).resolve().parents[1]
PRIOR = bmsbi.Prior.uniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"])
W = np.array([1.0, 2.0], np.float32)


def sim(theta, key):
    return theta * W + 0.1 * jax.random.normal(key, (2,))


def _bank(path, simulator=sim, n=40, key=0, **kw):
    return bmsbi.simulate_bank(simulator, PRIOR, n, key=key, chunk_size=10, progress=False, path=path, **kw)


def _edit_manifest(folder, edit):
    p = Path(folder) / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


# ------------------------------------------------------- 1. the simulator's identity
def test_edited_simulator_of_the_same_name_does_not_return_the_old_bank(tmp_path):
    path = tmp_path / "bank"
    first = _bank(path)

    def sim(theta, key):  # noqa: F811 - the module's sim, edited
        return theta * W * 2 + 0.1 * jax.random.normal(key, (2,))
    sim.__qualname__ = "sim"

    with pytest.raises(ValueError, match=r"simulator: computes other values .*use a new path"):
        _bank(path, sim)
    fresh = _bank(tmp_path / "other", sim)
    np.testing.assert_allclose(fresh.x - first.x, first.theta * W, atol=1e-5)  # a new path: the new simulator


def test_another_lambda_or_edited_constant_is_refused_and_a_same_redefinition_resumes(tmp_path):
    path = tmp_path / "bank"
    ref = _bank(path, lambda t, k: t + 1.0)
    with pytest.raises(ValueError, match="simulator: computes other values"):
        _bank(path, lambda t, k: t + 2.0)
    np.testing.assert_array_equal(_bank(path, lambda t, k: t + 1.0).x, ref.x)  # the same code: resumes

    consts = tmp_path / "consts"
    w = np.array([1.0, 2.0], np.float32)
    _bank(consts, lambda t, k: t * w)
    w2 = np.array([1.0, 3.0], np.float32)  # a captured array edited: a constant of the trace
    with pytest.raises(ValueError, match="simulator: computes other values"):
        _bank(consts, lambda t, k: t * w2)


def test_unchanged_fingerprint_resumes_without_simulating_again(tmp_path):
    path = tmp_path / "bank"
    ref = _bank(path)
    code = json.loads((path / "manifest.json").read_text())["fingerprint"]["simulator_code"]
    for c in sorted(path.glob("chunk-*.npz"))[2:]:
        c.unlink()
    np.testing.assert_array_equal(_bank(path).x, ref.x)
    assert json.loads((path / "manifest.json").read_text())["fingerprint"]["simulator_code"] == code


_RESUME = textwrap.dedent("""
    import sys, jax, simulators
    task = simulators.get("hopf_node")
    task.bank(24, jax.random.key(3), chunk_size=8, path=sys.argv[1], progress=False)
""")


def test_brainmass_simulator_fingerprint_is_the_same_in_a_fresh_process_so_resume_works(tmp_path):
    path = tmp_path / "hopf"
    task = simulators.get("hopf_node")
    ref = task.bank(24, jax.random.key(3), chunk_size=8, path=path, progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "chunk-000002.npz").unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", _RESUME, str(path)], check=True, env=env, timeout=300)
    # The digest a fresh process computes equals the stored one: the manifest is untouched.
    assert json.loads((path / "manifest.json").read_text()) == manifest
    resumed = bmsbi.Bank.load(path)
    np.testing.assert_array_equal(resumed.theta, ref.theta)
    np.testing.assert_allclose(resumed.x, ref.x, rtol=1e-5)


def test_old_manifest_without_simulator_code_loads_and_resumes_after_a_check(tmp_path):
    path = tmp_path / "old"
    ref = _bank(path)

    def make_old(m):
        del m["fingerprint"]["simulator_code"], m["bank_id"]
    _edit_manifest(path, make_old)
    for c in path.glob("chunk-*.npz"):  # chunks as older bmsbi wrote them: no bank_id
        with np.load(c) as f:
            arrays = {k: f[k] for k in ("index", "theta", "x", "checksum")}
        np.savez(c, **arrays)
    np.testing.assert_array_equal(bmsbi.Bank.load(path).x, ref.x)
    (path / "chunk-000003.npz").unlink()

    def edited(theta, key):
        return theta * W + 0.2 * jax.random.normal(key, (2,))
    edited.__qualname__ = sim.__qualname__
    with pytest.raises(ValueError, match="checked because the bank predates simulator fingerprints"):
        _bank(path, edited)
    np.testing.assert_array_equal(_bank(path).x, ref.x)  # the same simulator: checked, then resumed
    assert "simulator_code" in json.loads((path / "manifest.json").read_text())["fingerprint"]


def test_host_callback_simulator_is_checked_by_simulating_a_chunk_again(tmp_path):
    def with_callback(scale):
        def cb(theta, key):
            return jax.pure_callback(lambda t: np.asarray(t) * scale, jax.ShapeDtypeStruct((2,), jnp.float32),
                                     theta, vmap_method="sequential")
        return cb

    path = tmp_path / "cb"
    ref = _bank(path, with_callback(2.0))
    np.testing.assert_array_equal(_bank(path, with_callback(2.0)).x, ref.x)
    with pytest.raises(ValueError, match="calls code its trace does not show"):
        _bank(path, with_callback(3.0))  # the trace is identical; the callback is not


# ------------------------------------------------------------------ 2. the budget
def test_budget_beyond_memory_is_refused_at_once_naming_num_simulations():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"num_simulations: 1000000000000000 simulations need about .*PiB of "
                                         r"memory .* is available"):
        bmsbi.simulate_bank(sim, PRIOR, 10**15, key=0, chunk_size=100, progress=False)
    assert time.perf_counter() - t0 < 30


def test_budget_beyond_the_disk_is_refused_naming_num_simulations_and_path(tmp_path, monkeypatch):
    import bmsbi.bank as bank_module

    monkeypatch.setattr(bank_module, "_available_memory", lambda: None)  # only the disk limits
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ValueError, match=r"num_simulations: .* more on disk at path .* is free"):
        bmsbi.simulate_bank(sim, PRIOR, free // 8, key=0, chunk_size=100, progress=False, path=tmp_path / "b")
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------- 5. chunk files
def test_copied_reordered_or_foreign_chunk_files_are_refused(tmp_path):
    path, other = tmp_path / "bank", tmp_path / "other"
    _bank(path)
    _bank(other, key=1)
    c = [path / f"chunk-{i:06d}.npz" for i in range(4)]
    good = [p.read_bytes() for p in c]

    shutil.copy(c[0], c[1])  # a copy: θ rows 0..9 twice
    with pytest.raises(ValueError, match=r"path: chunk .*chunk-000001.npz holds simulations 0..9, but chunk 1 "
                                         r"of this bank holds 10..19"):
        bmsbi.Bank.load(path)
    with pytest.raises(ValueError, match="holds simulations 0..9"):
        _bank(path)  # resuming does not take it either
    c[1].write_bytes(good[1])

    c[1].write_bytes(good[2]), c[2].write_bytes(good[1])  # reordered
    with pytest.raises(ValueError, match="chunk-000001.npz holds simulations 20..29"):
        bmsbi.Bank.load(path)
    c[1].write_bytes(good[1]), c[2].write_bytes(good[2])

    shutil.copy(other / "chunk-000002.npz", c[2])  # the same place in another bank
    with pytest.raises(ValueError, match="chunk-000002.npz belongs to another bank"):
        bmsbi.Bank.load(path)
    c[2].write_bytes(good[2])
    assert len(bmsbi.Bank.load(path)) == 40


# --------------------------------------------------------------- 7. bmsbi simulate --out x.npz
def _one_line(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_simulate_refuses_to_overwrite_an_existing_npz_unless_force(tmp_path, capsys):
    out = tmp_path / "keep.npz"
    assert main(["simulate", "hopf_node", "-n", "8", "--out", str(out), "--quiet"]) == 0
    before = out.read_bytes()
    line = _one_line(capsys, "simulate", "hopf_node", "-n", "9", "--seed", "1", "--out", out, "--quiet")
    assert "--out" in line and "exists" in line and "--force" in line
    assert out.read_bytes() == before
    assert main(["simulate", "hopf_node", "-n", "9", "--seed", "1", "--out", str(out), "--quiet", "--force"]) == 0
    assert len(bmsbi.Bank.load(out)) == 9


# ------------------------------------------------------------ unclear cases
@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("num_simulations"), "lacks 'num_simulations'"),
    (lambda m: m.update(chunk_size="ten"), "invalid 'chunk_size'"),
    (lambda m: m.update(num_chunks=10**13), "num_chunks 10000000000000"),
    (lambda m: m.update(fingerprint=[1]), "'fingerprint' that is not a JSON object"),
])
def test_damaged_manifest_is_a_path_error_and_one_cli_line(tmp_path, capsys, edit, match):
    path = tmp_path / "bank"
    _bank(path)
    _edit_manifest(path, edit)
    with pytest.raises(ValueError, match=f"path: .*{match}"):
        bmsbi.Bank.load(path)
    line = _one_line(capsys, "train", path, "--out", tmp_path / "p.bmsbi")
    assert line.startswith("bmsbi train: error: bank: ") and match.split()[-1].strip("'") in line


@pytest.mark.parametrize("text, match", [
    ("[1, 2]", "not a JSON object"),
    ("{not json", "not valid JSON"),
    ('{"format": "bmsbi.bank"}', "no integer bank schema"),
])
def test_manifest_that_is_not_a_bank_manifest_is_a_path_error(tmp_path, text, match):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=f"path: .*{match}"):
        bmsbi.Bank.load(tmp_path / "b")


def test_npz_with_a_bad_header_or_without_theta_is_a_path_error(tmp_path):
    header = {"format": "bmsbi.bank", "schema": 1, "names": ["a"], "meta": {}, "checksum": ""}
    np.savez(tmp_path / "h.npz", header=np.array("{oops"), theta=np.zeros((2, 1)), x=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="path: .*header.* not valid JSON"):
        bmsbi.Bank.load(tmp_path / "h.npz")
    np.savez(tmp_path / "t.npz", header=np.array(json.dumps(header)), x=np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"path: .*lacks the arrays \['theta'\]"):
        bmsbi.Bank.load(tmp_path / "t.npz")


def test_bank_path_that_is_a_file_or_under_a_file_is_refused_and_a_missing_parent_is_made(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="path: .* is a file, expected a bank folder"):
        _bank(tmp_path / "f")
    with pytest.raises(ValueError, match="path: cannot create the bank folder .* is a file"):
        _bank(tmp_path / "f" / "bank")
    with pytest.raises(ValueError, match="path: expected a folder path"):
        _bank(3)
    assert len(_bank(tmp_path / "new" / "parent" / "bank")) == 40


def test_unwritable_bank_folder_is_a_path_error(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)  # as a read-only folder does (root ignores chmod)
    with pytest.raises(ValueError, match="path: cannot write .*manifest.json.*Permission denied"):
        _bank(tmp_path / "bank")


def test_scalar_output_simulator_is_refused_by_simulate_bank():
    with pytest.raises(ValueError, match=r"simulator: returns a scalar .*jnp.atleast_1d"):
        bmsbi.simulate_bank(lambda t, k: t[0], PRIOR, 10, key=0, progress=False)
    with pytest.raises(ValueError, match="simulator: returns a scalar"):
        bmsbi.simulate_bank(lambda t, k: t[0], PRIOR, 10, key=0, progress=False, trials=3)


@pytest.fixture(scope="module")
def post():
    bank = bmsbi.simulate_bank(sim, PRIOR, 300, key=0, progress=False)
    return bmsbi.NPE(hidden=8, num_layers=1, max_epochs=1).fit(bank, prior=PRIOR, key=jax.random.key(0),
                                                               progress=False)


def test_posterior_save_to_a_folder_or_unwritable_place_is_a_path_error(post, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="path: .* is a folder, expected a file name"):
        post.save(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="path: cannot write .* a parent of it is a file"):
        post.save(tmp_path / "f" / "p.bmsbi")
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(ValueError, match="path: cannot write .*p.bmsbi.*denied"):
        post.save(tmp_path / "p.bmsbi")


def test_load_posterior_of_a_folder_or_missing_file_is_a_path_value_error(tmp_path):
    with pytest.raises(ValueError, match="path: .* is a folder, expected a file"):
        load_posterior(tmp_path)
    with pytest.raises(ValueError, match="path: no such file: .*missing.bmsbi"):
        load_posterior(tmp_path / "missing.bmsbi")


def test_checksum_valid_posterior_file_without_a_prior_is_refused(tmp_path):
    path = bio.write_file(tmp_path / "p.bmsbi", kind="posterior", schema_version=SCHEMA_VERSION,
                          header={"posterior_class": "DirectPosterior"})
    with pytest.raises(ValueError, match="path: .* holds no prior"):
        load_posterior(path)


def test_leftover_temporaries_of_killed_saves_are_removed_by_the_next_save(post, tmp_path):
    target = tmp_path / "p.bmsbi"
    dead = tmp_path / ".p.bmsbi.dead.tmp"
    dead.write_bytes(b"half")
    live = tmp_path / ".p.bmsbi.live.tmp"
    live.write_bytes(b"writing")
    other = tmp_path / ".q.bmsbi.dead.tmp"
    other.write_bytes(b"another file's")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a writer still alive holds its lock
        post.save(target)
        assert not dead.exists() and live.exists() and other.exists()
    finally:
        os.close(fd)
    load_posterior(target)

    folder = tmp_path / "bank"
    _bank(folder)
    (folder / "chunk-000001.npz").unlink()
    (folder / ".chunk-000001.npz.killed.tmp").write_bytes(b"half")
    _bank(folder)
    assert not list(folder.glob(".*.tmp"))


def test_posteriors_and_banks_get_the_same_umask_permissions(post, tmp_path):
    old = os.umask(0o027)
    try:
        files = [Path(post.save(tmp_path / "p.bmsbi")), bmsbi.Bank(np.zeros((2, 1)), np.zeros((2, 1))).save(
            tmp_path / "b.npz")]
        _bank(tmp_path / "bank")
        files += sorted((tmp_path / "bank").iterdir())
    finally:
        os.umask(old)
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o640)}
