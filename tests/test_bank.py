import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import given, settings, strategies as st

import bmsbi

REPO = Path(__file__).resolve().parents[1]


def gauss_sim(theta, key):
    """x = theta + noise, 4 outputs."""
    return jnp.concatenate([theta, theta]) + 0.1 * jax.random.normal(key, (2 * theta.shape[0],))


def nan_sim(theta, key):
    """NaN whenever theta0 > 0.5."""
    x = theta + 0.1 * jax.random.normal(key, theta.shape)
    return jnp.where(theta[0] > 0.5, jnp.nan, x)


PRIOR = bmsbi.Prior.uniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"])


def test_bank_from_gauss_simulator_statistics():
    bank = bmsbi.simulate_bank(gauss_sim, PRIOR, 2000, key=jax.random.key(0), progress=False)
    assert len(bank) == 2000 and bank.x_shape == (4,) and bank.names == ("a", "b")
    resid = bank.x - np.concatenate([bank.theta, bank.theta], axis=1)
    assert abs(resid.std() - 0.1) < 0.005  # the noise the simulator adds
    assert bank.meta["num_invalid"] == 0


def test_brainmass_simulator_in_bank_is_per_simulation_noise():
    import brainmass
    import brainunit as u

    def hopf(theta, key):
        node = brainmass.HopfStep(1, a=theta[0], w=0.3,
                                  noise_x=brainmass.OUProcess(1, sigma=0.05, tau=1.0 * u.ms),
                                  noise_y=brainmass.OUProcess(1, sigma=0.05, tau=1.0 * u.ms))
        return brainmass.Simulator(node, dt=0.1 * u.ms).run(20.0 * u.ms, monitors=["x"], jit=False)["x"][:, 0]

    prior = bmsbi.Prior.uniform([-0.5], [-0.5 + 1e-6], names=["a"])  # ~ fixed theta
    bank = bmsbi.simulate_bank(hopf, prior, 8, key=1, progress=False)
    # Same theta, different keys: outputs differ; same key again: identical.
    assert not np.allclose(bank.x[0], bank.x[1])
    again = bmsbi.simulate_bank(hopf, prior, 8, key=1, progress=False)
    np.testing.assert_array_equal(bank.x, again.x)


@pytest.mark.parametrize("chunk_size", [256, 1024, None])
def test_same_bank_whatever_the_chunk_size(chunk_size):
    ref = bmsbi.simulate_bank(gauss_sim, PRIOR, 2000, key=3, chunk_size=700, progress=False)
    bank = bmsbi.simulate_bank(gauss_sim, PRIOR, 2000, key=3, chunk_size=chunk_size, progress=False)
    np.testing.assert_array_equal(bank.theta, ref.theta)
    np.testing.assert_allclose(bank.x, ref.x, rtol=1e-5, atol=1e-6)
    again = bmsbi.simulate_bank(gauss_sim, PRIOR, 2000, key=3, chunk_size=chunk_size, progress=False)
    np.testing.assert_array_equal(again.x, bank.x)  # bitwise for the same settings


def test_default_chunk_bounds_the_working_memory_not_just_the_output(tmp_path):
    # A summary of 2 numbers from 2**22 noise values per simulation (16 MiB each, like a
    # whole-brain run reduced to a few features): chunks sized by the output alone would take
    # every simulation at once; the default chunk keeps the noise of one chunk near 2 GiB.
    def wide_sim(theta, key):
        z = jax.random.normal(key, (2**22,))
        return jnp.stack([theta[0] + 0.01 * z.mean(), theta[1] + 0.01 * z.std()])

    bank = bmsbi.simulate_bank(wide_sim, PRIOR, 130, key=0, progress=False, path=tmp_path / "wide")
    manifest = json.loads((tmp_path / "wide" / "manifest.json").read_text())
    # 2 GiB over 16-64 MiB of noise and its temporaries per simulation: 32-128, in equal chunks
    assert 2 <= manifest["num_chunks"] <= 5 and manifest["chunk_size"] == -(-130 // manifest["num_chunks"])
    assert len(bank) == 130 and np.all(np.abs(bank.x - bank.theta) < 0.02)
    small = bmsbi.simulate_bank(gauss_sim, PRIOR, 300, key=0, progress=False, path=tmp_path / "small")
    assert json.loads((tmp_path / "small" / "manifest.json").read_text())["chunk_size"] == 300
    big = bmsbi.simulate_bank(gauss_sim, PRIOR, 5000, key=0, progress=False, path=tmp_path / "big")
    assert json.loads((tmp_path / "big" / "manifest.json").read_text())["chunk_size"] == 2500  # not 4096 + 904


def test_four_host_devices_give_the_same_bank(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(REPO / 'tests')!r})
        import jax, numpy as np, bmsbi
        from test_bank import gauss_sim, PRIOR
        assert len(jax.local_devices()) == int(sys.argv[1]), jax.local_devices()
        b = bmsbi.simulate_bank(gauss_sim, PRIOR, 1000, key=3, chunk_size=256, progress=False)
        b.save(sys.argv[2])
    """)
    out = {}
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        p = tmp_path / f"bank{n}.npz"
        subprocess.run([sys.executable, "-c", code, str(n), str(p)], check=True, env=env, timeout=300)
        out[n] = bmsbi.Bank.load(p)
    np.testing.assert_array_equal(out[1].theta, out[4].theta)
    np.testing.assert_allclose(out[1].x, out[4].x, rtol=1e-5, atol=1e-6)


def test_invalid_policies_record_everything():
    dropped = bmsbi.simulate_bank(nan_sim, PRIOR, 400, key=0, progress=False, on_invalid="drop")
    kept = bmsbi.simulate_bank(nan_sim, PRIOR, 400, key=0, progress=False, on_invalid="keep")
    bad = np.flatnonzero(kept.theta[:, 0] > 0.5)
    assert dropped.meta["num_invalid"] == kept.meta["num_invalid"] == bad.size > 0
    assert dropped.meta["invalid_indices"] == bad.tolist() == kept.meta["invalid_indices"]
    assert len(dropped) == 400 - bad.size and len(kept) == 400
    assert np.isfinite(dropped.x).all()
    with pytest.raises(ValueError, match="simulator: .* returned NaN/inf"):
        bmsbi.simulate_bank(nan_sim, PRIOR, 400, key=0, progress=False, on_invalid="raise")


def test_path_resume_refuse_and_load(tmp_path):
    path = tmp_path / "bank"
    ref = bmsbi.simulate_bank(gauss_sim, PRIOR, 1000, key=5, chunk_size=128, progress=False)
    bmsbi.simulate_bank(gauss_sim, PRIOR, 1000, key=5, chunk_size=128, progress=False, path=path)
    chunks = sorted(path.glob("chunk-*.npz"))
    assert len(chunks) == 8
    for c in chunks[3:]:
        c.unlink()  # as if the run had died after three chunks
    with pytest.raises(ValueError, match="incomplete"):
        bmsbi.Bank.load(path)
    resumed = bmsbi.simulate_bank(gauss_sim, PRIOR, 1000, key=5, chunk_size=128, progress=False, path=path)
    np.testing.assert_array_equal(resumed.x, ref.x)
    np.testing.assert_array_equal(bmsbi.Bank.load(path).x, ref.x)
    with pytest.raises(ValueError, match=r"path: .*other arguments \(differs in \['key'\]\)"):
        bmsbi.simulate_bank(gauss_sim, PRIOR, 1000, key=6, chunk_size=128, progress=False, path=path)
    # A corrupted chunk is refused, not silently used.
    raw = bytearray(chunks[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunks[0].write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="path"):
        bmsbi.Bank.load(path)


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    path = tmp_path / "killed"
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import jax, jax.numpy as jnp, bmsbi
        from test_bank import PRIOR
        def slow_sim(theta, key):
            # Enough work per chunk that the kill lands between chunk writes.
            def body(c, _):
                return c * 0.999 + 0.001 * jax.random.normal(jax.random.fold_in(key, 0), (64,)), None
            x, _ = jax.lax.scan(body, jnp.zeros(64) + theta[0], None, length=4000)
            return x[:4]
        bmsbi.simulate_bank(slow_sim, PRIOR, 4096, key=9, chunk_size=256, progress=False, path=sys.argv[1])
    """)
    script = tmp_path / "run.py"
    script.write_text(code)
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    deadline = time.time() + 240
    while time.time() < deadline and len(list(path.glob("chunk-*.npz"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(path.glob("chunk-*.npz")))
    assert 3 <= done < 16, f"kill landed after {done} chunks"
    subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=600)
    resumed = bmsbi.Bank.load(path)
    clean = tmp_path / "clean"
    subprocess.run([sys.executable, str(script), str(clean)], check=True, timeout=600)
    uninterrupted = bmsbi.Bank.load(clean)
    np.testing.assert_array_equal(resumed.theta, uninterrupted.theta)
    np.testing.assert_array_equal(resumed.x, uninterrupted.x)
    assert not list(path.glob(".*.tmp")), "a temporary file was left behind"


def test_bank_save_load_split_concatenate(tmp_path):
    bank = bmsbi.simulate_bank(gauss_sim, PRIOR, 300, key=0, progress=False)
    for p in (tmp_path / "b.npz", tmp_path / "bdir"):
        bank.save(p)
        back = bmsbi.Bank.load(p)
        np.testing.assert_array_equal(back.theta, bank.theta)
        np.testing.assert_array_equal(back.x, bank.x)
        assert back.names == bank.names
    assert bmsbi.Bank.load(tmp_path / "b.npz").meta["num_invalid"] == 0
    a, b = bank.split(0.75, key=1)
    assert (len(a), len(b)) == (225, 75)
    both = bmsbi.Bank.concatenate([a, b])
    assert len(both) == 300
    assert sorted(map(tuple, both.theta)) == sorted(map(tuple, bank.theta))
    with pytest.raises(ValueError, match=r"banks\[1\]"):
        bmsbi.Bank.concatenate([a, bmsbi.Bank(np.zeros((2, 2)), np.zeros((2, 5)))])


def test_file_checks(tmp_path):
    bank = bmsbi.Bank(np.zeros((4, 2)), np.ones((4, 3)))
    p = bank.save(tmp_path / "b.npz")
    raw = bytearray(p.read_bytes())
    idx = raw.find(b"\x00\x00\x80\x3f")  # a float32 1.0 inside x
    raw[idx + 3] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum|readable"):
        bmsbi.Bank.load(p)
    (tmp_path / "trunc.npz").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ValueError, match="path"):
        bmsbi.Bank.load(tmp_path / "trunc.npz")
    with pytest.raises(ValueError, match="no bank"):
        bmsbi.Bank.load(tmp_path / "missing.npz")
    newer = tmp_path / "newer"
    bank.save(newer)
    m = json.loads((newer / "manifest.json").read_text())
    m["schema"] = 99
    (newer / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="upgrade bmsbi"):
        bmsbi.Bank.load(newer)


# ------------------------------------------------------------------ bad input
def int_sim(theta, key):
    return jnp.arange(3)


def tuple_sim(theta, key):
    return theta, theta


def test_bad_simulator_outputs():
    with pytest.raises(ValueError, match="simulator: expected a floating-point output, got dtype int32"):
        bmsbi.simulate_bank(int_sim, PRIOR, 10, key=0, progress=False)
    with pytest.raises(ValueError, match="simulator: expected it to return one array"):
        bmsbi.simulate_bank(tuple_sim, PRIOR, 10, key=0, progress=False)
    with pytest.raises(ValueError, match="simulator: expected a callable"):
        bmsbi.simulate_bank("not a function", PRIOR, 10, key=0, progress=False)


def test_changing_output_shape_is_refused(tmp_path):
    # The simulator was edited between a killed run and its resume: its output shape changed.
    def sim(theta, key):
        return jnp.zeros(3) + theta[0]

    bmsbi.simulate_bank(sim, PRIOR, 10, key=0, progress=False, path=tmp_path / "b")

    def sim(theta, key):  # noqa: F811 - same name, new shape
        return jnp.zeros(4) + theta[0]

    with pytest.raises(ValueError, match=r"path: .*other arguments \(differs in \['x_shape'\]\)"):
        bmsbi.simulate_bank(sim, PRIOR, 10, key=0, progress=False, path=tmp_path / "b")


def unpack3_sim(theta, key):
    a, b, c = theta  # written for a 3-parameter prior
    return jnp.stack([a, b, c])


def test_wrong_theta_dimension_is_reported():
    with pytest.raises(ValueError, match=r"simulator: calling simulator\(theta \(d=2,\), key\) failed"):
        bmsbi.simulate_bank(unpack3_sim, PRIOR, 10, key=0, progress=False)
    bank = bmsbi.Bank(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"names: expected 2 names"):
        bmsbi.Bank(bank.theta, bank.x, names=["a"])
    with pytest.raises(ValueError, match=r"x: expected shape \(n, \*x_shape\) with n=5"):
        bmsbi.Bank(np.zeros((5, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"theta: expected shape \(n, d\)"):
        bmsbi.Bank(np.zeros(5), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="x: expected a floating-point array"):
        bmsbi.Bank(np.zeros((5, 2)), np.zeros((5, 3), dtype=np.int64))


@settings(max_examples=20, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.floats(allow_nan=True), st.text(max_size=3), st.booleans()))
def test_bad_budget_names_the_argument(n):
    with pytest.raises(ValueError, match="num_simulations: expected a positive int, got"):
        bmsbi.simulate_bank(gauss_sim, PRIOR, n, key=0, progress=False)


@pytest.mark.parametrize("prior", [None, 3, [dist.Normal()], "uniform"])
def test_bad_prior_names_the_argument(prior):
    with pytest.raises(ValueError, match=r"prior: expected a bmsbi.Prior or a dict .* got"):
        bmsbi.simulate_bank(gauss_sim, prior, 10, key=0, progress=False)


def test_bad_chunk_size_and_policy():
    with pytest.raises(ValueError, match="chunk_size: expected a positive int, got 0"):
        bmsbi.simulate_bank(gauss_sim, PRIOR, 10, key=0, chunk_size=0, progress=False)
    with pytest.raises(ValueError, match="on_invalid: expected one of"):
        bmsbi.simulate_bank(gauss_sim, PRIOR, 10, key=0, on_invalid="ignore", progress=False)


def test_dict_prior_is_accepted():
    bank = bmsbi.simulate_bank(gauss_sim, {"a": dist.Normal(0.0, 1.0), "b": dist.Normal(0.0, 1.0)}, 16,
                               key=0, progress=False)
    assert bank.names == ("a", "b")


def test_simulate_at_matches_the_bank_machinery():
    theta = np.array([[0.1, -0.2], [0.5, 0.5], [0.0, 0.0]], np.float32)
    x = bmsbi.simulate_at(gauss_sim, theta, key=jax.random.key(0))
    assert x.shape == (3, 4)
    np.testing.assert_allclose(x - np.concatenate([theta, theta], 1), 0.0, atol=0.5)
    again = bmsbi.simulate_at(gauss_sim, theta, key=jax.random.key(0), chunk_size=2)
    np.testing.assert_allclose(again, x, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"theta: expected shape \(n, d\)"):
        bmsbi.simulate_at(gauss_sim, np.zeros(3), key=0)
    with pytest.raises(ValueError, match="theta: 1 rows hold NaN"):
        bmsbi.simulate_at(gauss_sim, np.array([[np.nan, 0.0]]), key=0)
