"""Posterior files: identical samples after a reload in a new process; damaged, truncated
or newer files refused; ArviZ export; the generic io helpers; embedding configs."""

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import bmsbi
from bmsbi import io as bio
from bmsbi.embeddings import (CNN1DEmbedding, DeepSetEmbedding, GRUEmbedding, MLPEmbedding,
                              embedding_from_config)
from bmsbi.estimators import NPE
from bmsbi.posterior import SCHEMA_VERSION, load_posterior


@pytest.fixture(scope="module")
def trained():
    prior = bmsbi.Prior({"a": dist.Uniform(-1.0, 1.0), "s": dist.LogNormal(0.0, 0.5)})
    theta = np.asarray(prior.sample(jax.random.key(0), 1500))
    x = np.stack([theta[:, 0] + theta[:, 1], theta[:, 0] * theta[:, 1], theta[:, 1]], 1)
    x = x + 0.1 * np.random.default_rng(0).normal(size=x.shape)
    bank = bmsbi.Bank(theta, x.astype(np.float32), names=prior.names)
    return prior, NPE(hidden=16, num_layers=2, max_epochs=5).fit(
        bank, prior=prior, key=jax.random.key(1), progress=False)


_RELOAD = textwrap.dedent("""
    import sys, json, jax, numpy as np, bmsbi
    post = bmsbi.posterior.load_posterior(sys.argv[1])
    s = post.sample(jax.random.key(7), np.array([0.5, 0.1, 1.0], np.float32), 50)
    lp = post.log_prob(np.asarray(s), np.array([0.5, 0.1, 1.0], np.float32))
    print("RESULT" + json.dumps({"s": np.asarray(s).tolist(), "lp": np.asarray(lp).tolist(),
                                 "names": list(post.names), "epochs": post.history.epochs}))
""")


def test_save_load_in_a_new_process_gives_identical_samples(trained, tmp_path):
    prior, post = trained
    path = str(tmp_path / "post.bmsbi")
    post.save(path)
    proc = subprocess.run([sys.executable, "-c", _RELOAD, path], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][0][6:])
    x_obs = np.array([0.5, 0.1, 1.0], np.float32)
    here = np.asarray(post.sample(jax.random.key(7), x_obs, 50))
    np.testing.assert_array_equal(np.asarray(out["s"], np.float32), here)
    np.testing.assert_allclose(out["lp"], np.asarray(post.log_prob(here, x_obs)), rtol=1e-5)
    assert out["names"] == ["a", "s"] and out["epochs"] == post.history.epochs


def test_loaded_posterior_matches_in_process(trained, tmp_path):
    prior, post = trained
    path = post.save(tmp_path / "p.bmsbi")
    again = load_posterior(path)
    assert again.prior == prior and again.x_shape == post.x_shape
    assert again.config == post.config
    for k in post.stats:
        np.testing.assert_array_equal(again.stats[k], post.stats[k])
    xs = np.zeros((3, 3), np.float32)
    np.testing.assert_array_equal(np.asarray(again.sample(jax.random.key(0), xs, 10)),
                                  np.asarray(post.sample(jax.random.key(0), xs, 10)))


@pytest.mark.parametrize("where", ["signature", "header", "payload", "digest"])
def test_flipped_byte_is_refused(trained, tmp_path, where):
    prior, post = trained
    path = tmp_path / "p.bmsbi"
    post.save(path)
    data = bytearray(path.read_bytes())
    head_len = int.from_bytes(data[8:16], "little")
    pos = {"signature": 2, "header": 16 + head_len // 2, "payload": 16 + head_len + 100,
           "digest": len(data) - 5}[where]
    data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="path: .*(corrupted|checksum|signature|altered)"):
        load_posterior(path)


def test_truncated_file_is_refused(trained, tmp_path):
    prior, post = trained
    path = tmp_path / "p.bmsbi"
    post.save(path)
    data = path.read_bytes()
    for cut in (len(data) - 1, len(data) // 2, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="path: "):
            load_posterior(path)


def test_newer_schema_asks_to_upgrade(trained, tmp_path):
    prior, post = trained
    path = tmp_path / "p.bmsbi"
    post.save(path)
    header, payload = bio.read_file(path)
    for k in ("kind", "schema_version", "bmsbi_version", "payload_size", "payload_sha256"):
        header.pop(k)
    bio.write_file(path, kind="posterior", schema_version=SCHEMA_VERSION + 1, header=header,
                   payload=payload)
    with pytest.raises(ValueError, match="[Uu]pgrade bmsbi"):
        load_posterior(path)
    data = bytearray(path.read_bytes())
    data[5] = bio.CONTAINER_VERSION + 1  # a newer container layout
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="[Uu]pgrade bmsbi"):
        load_posterior(path)


def test_other_files_are_refused(tmp_path):
    path = tmp_path / "x.bmsbi"
    path.write_bytes(b"\x80\x04\x95pickle-like junk")
    with pytest.raises(ValueError, match="not a bmsbi file"):
        load_posterior(path)
    bio.write_file(path, kind="bank", schema_version=1, header={})
    with pytest.raises(ValueError, match="expected a 'posterior'"):
        load_posterior(path)


def test_to_arviz_has_named_posterior_and_observed_data(trained):
    prior, post = trained
    x_obs = np.array([0.5, 0.1, 1.0], np.float32)
    idata = post.to_arviz(jax.random.key(0), x_obs, num_samples=200, num_chains=2)
    assert set(idata.groups()) >= {"posterior", "observed_data"}
    assert set(idata.posterior.data_vars) == {"a", "s"}
    assert idata.posterior["a"].shape == (2, 200)
    assert float(idata.posterior["s"].min()) > 0  # LogNormal support
    np.testing.assert_array_equal(idata.observed_data["x_obs"].values, x_obs)
    with pytest.raises(ValueError, match="x_obs"):
        post.to_arviz(jax.random.key(0), np.zeros((2, 3)), num_samples=10)


def test_pack_arrays_round_trip_and_refusals(tmp_path):
    arrays = {"f": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([1, -2], np.int64),
              "b": np.array([True, False]), "scalar": np.int32(7),
              "transposed": np.arange(6.0).reshape(2, 3).T}
    payload, index = bio.pack_arrays(arrays)
    out = bio.unpack_arrays(payload, index)
    for k, v in arrays.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == v.dtype and out[k].shape == np.shape(v)
    with pytest.raises(ValueError, match="dtype"):
        bio.pack_arrays({"o": np.array([{}], dtype=object)})
    with pytest.raises(ValueError, match="non-finite"):
        bio.write_file(tmp_path / "f", kind="k", schema_version=1, header={"v": float("nan")})
    bad = [dict(index[0], nbytes=10**9)]
    with pytest.raises(ValueError, match="does not fit"):
        bio.unpack_arrays(payload, bad)


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    path = bio.write_file(tmp_path / "sub" / "f.bin", kind="k", schema_version=1,
                          header={"a": [1, 2]}, payload=b"xyz")
    header, payload = bio.read_file(path, kind="k", schema_version=1)
    assert header["a"] == [1, 2] and payload == b"xyz"
    assert sorted(os.listdir(tmp_path / "sub")) == ["f.bin"]


@pytest.mark.parametrize("make, shape", [
    (lambda k: MLPEmbedding((12, 2), out_dim=3, hidden=(8, 8), key=k), (12, 2)),
    (lambda k: CNN1DEmbedding(40, out_dim=3, channels=(4, 4), key=k), (40,)),
    (lambda k: GRUEmbedding((10, 3), out_dim=3, hidden_size=5, stride=2, key=k), (10, 3)),
    (lambda k: DeepSetEmbedding((7, 2), out_dim=3, hidden=(6,), key=k), (7, 2)),
])
def test_embedding_config_rebuilds_the_same_network(make, shape, tmp_path):
    net = make(jax.random.key(0))
    cfg = json.loads(json.dumps(net.config()))
    skeleton = embedding_from_config(cfg)
    path = tmp_path / "w.eqx"
    eqx.tree_serialise_leaves(path, net)
    again = eqx.tree_deserialise_leaves(path, skeleton)
    x = jax.random.normal(jax.random.key(1), shape)
    np.testing.assert_array_equal(net(x), again(x))
    assert net(x).shape == (3,)
    with pytest.raises(ValueError, match="x: .* expects one sample"):
        net(jnp.zeros((2,) + shape))


def test_unknown_embedding_type_is_refused():
    with pytest.raises(ValueError, match="unknown type"):
        embedding_from_config({"type": "os.system", "cmd": "rm -rf /"})


def test_posterior_with_embedding_round_trips(tmp_path):
    prior = bmsbi.Prior.uniform([-1.0], [1.0], names=["mu"])
    theta = np.asarray(prior.sample(jax.random.key(0), 300))
    x = (theta[:, :, None] + 0.3 * np.random.default_rng(0).normal(size=(300, 16, 1))).astype(np.float32)
    net = MLPEmbedding((16, 1), out_dim=2, hidden=(8,), key=jax.random.key(1))
    post = NPE(density_estimator="maf", hidden=8, num_layers=1, embedding=net, max_epochs=2).fit(
        bmsbi.Bank(theta, x, names=["mu"]), prior=prior, key=jax.random.key(2), progress=False)
    path = post.save(tmp_path / "e.bmsbi")
    again = load_posterior(path)
    assert again.config["embedding"]["type"] == "MLPEmbedding"
    np.testing.assert_array_equal(np.asarray(again.sample(jax.random.key(3), x[0], 20)),
                                  np.asarray(post.sample(jax.random.key(3), x[0], 20)))
