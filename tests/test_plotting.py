"""bmsbi.plotting: the corner plot (pairplot) and the SBC ECDF band.

pairplot: the grid has the promised shape, every posterior is drawn and named in the
legend, truths sit at the given coordinates, contours enclose the stated mass, and bad
input is refused with the argument named. plot_sbc_ecdf: a calibrated posterior's ranks
stay inside the simultaneous band about 95 % of the time; miscalibrated ones leave it.
"""

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.contour import ContourSet
from matplotlib.path import Path

from bmsbi import Inference
from bmsbi import plotting as P

RNG = np.random.default_rng(0)
A = RNG.normal(size=(3000, 3))
B = RNG.normal(0.5, 0.5, size=(3000, 3))
C = RNG.normal(-0.5, 0.8, size=(3000, 3))


def _visible(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _grid(fig, d):
    return np.array(fig.axes).reshape(d, d)


def _truth_lines(ax):
    return [ln for ln in ax.lines if ln.get_gid() == "truth"]


def _posterior_lines(ax):
    return [ln for ln in ax.lines if ln.get_gid() != "truth"]


# ------------------------------------------------------------------------ pairplot
def test_pairplot_grid_is_lower_triangle_with_names_on_the_outer_axes():
    fig = P.pairplot(A, names=["G", "J", "sigma"])
    assert len(fig.axes) == 9 and len(_visible(fig)) == 6
    ax = _grid(fig, 3)
    assert all(ax[r, c].get_visible() == (c <= r) for r in range(3) for c in range(3))
    assert [a.get_xlabel() for a in ax[2]] == ["G", "J", "sigma"]
    assert [ax[r, 0].get_ylabel() for r in (1, 2)] == ["J", "sigma"]
    # one posterior, no labels, no truths: nothing to explain, no legend
    assert fig.legends == []
    # every panel of a column shares the x range
    for c in range(3):
        assert len({ax[r, c].get_xlim() for r in range(c, 3)}) == 1
    # one parameter: one panel, the legend on it
    (single,) = P.pairplot(A[:, :1], truths=[0.1]).axes
    assert [t.get_text() for t in single.get_legend().get_texts()] == ["posterior", "truth"]


def test_pairplot_overlays_every_posterior_with_a_legend():
    fig = P.pairplot({"NPE": A, "NLE": B, "NRE": C})
    ax = _grid(fig, 3)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["NPE", "NLE", "NRE"]
    for j in range(3):
        assert len(_posterior_lines(ax[j, j])) == 3                    # 1-D KDEs
    for r, c in [(1, 0), (2, 0), (2, 1)]:
        sets = [a for a in ax[r, c].get_children() if isinstance(a, ContourSet)]
        assert len(sets) == 3                                           # one per posterior
        for i, cs in enumerate(sets):                                   # in C0, C1, C2
            np.testing.assert_allclose(cs.get_edgecolor()[0][:3], to_rgb(f"C{i}"))
    hist = P.pairplot([A, B], kind="hist", labels=["first", "second"])
    hx = _grid(hist, 3)
    assert [t.get_text() for t in hist.legends[0].get_texts()] == ["first", "second"]
    assert len(hx[0, 0].patches) == 2 and len(hx[2, 1].collections) == 2   # step hists, meshes


def test_pairplot_marks_truths_at_the_given_coordinates():
    truths = [0.3, -0.2, 1.1]
    fig = P.pairplot([A, B], truths=truths, names=["a", "b", "c"])
    ax = _grid(fig, 3)
    assert fig.legends[0].get_texts()[-1].get_text() == "truth"
    for j in range(3):
        (line,) = _truth_lines(ax[j, j])
        assert np.allclose(line.get_xdata(), truths[j])
    for r, c in [(1, 0), (2, 0), (2, 1)]:
        lines = _truth_lines(ax[r, c])
        vertical = [ln for ln in lines if np.ptp(ln.get_xdata()) == 0 and len(ln.get_xdata()) == 2]
        assert any(np.allclose(ln.get_xdata(), truths[c]) for ln in vertical)
        assert any(np.allclose(ln.get_ydata(), truths[r]) for ln in lines if len(ln.get_ydata()) == 2
                   and np.ptp(ln.get_ydata()) == 0)
        (point,) = [ln for ln in lines if len(ln.get_xdata()) == 1]
        assert (point.get_xdata()[0], point.get_ydata()[0]) == (truths[c], truths[r])
        lo, hi = ax[r, c].get_xlim()
        assert lo < truths[c] < hi
    # NaN: not marked; a dict names the parameters it marks
    part = _grid(P.pairplot(A, truths={"b": 2.5}, names=["a", "b", "c"]), 3)
    assert _truth_lines(part[0, 0]) == [] and np.allclose(_truth_lines(part[1, 1])[0].get_xdata(), 2.5)
    assert _truth_lines(P.pairplot(A, truths=[np.nan, 0, 0]).axes[0]) == []
    # a truth far outside the posterior still shows: the axis range takes it in
    far = _grid(P.pairplot(A, truths=[9.0, 0, 0]), 3)
    assert far[2, 0].get_xlim()[1] > 9.0


def test_pairplot_contours_enclose_the_stated_mass():
    """For a correlated Gaussian the level-g contour holds a fraction g of the draws."""
    rng = np.random.default_rng(1)
    x = rng.multivariate_normal([0, 0], [[1, 0.7], [0.7, 1]], size=20000)
    fig = P.pairplot(x, levels=(0.5, 0.9))
    (cs,) = [a for a in fig.axes[2].get_children() if isinstance(a, ContourSet)]
    held = rng.multivariate_normal([0, 0], [[1, 0.7], [0.7, 1]], size=20000)
    inner, outer = cs.get_paths()[-1], cs.get_paths()[0]   # levels ascend: 0.9 mass first
    assert abs(Path(outer.vertices).contains_points(held).mean() - 0.9) < 0.02
    assert abs(Path(inner.vertices).contains_points(held).mean() - 0.5) < 0.02


def test_pairplot_reads_batches_inference_and_inferencedata(tmp_path):
    import arviz as az

    batch = P.pairplot(np.stack([A, B]))
    assert [t.get_text() for t in batch.legends[0].get_texts()] == ["posterior 0", "posterior 1"]
    res = Inference(samples=np.stack([A, B]), x=np.zeros((2, 1)), ood_score=np.zeros(2),
                    ood_pvalue=np.ones(2), flagged=np.zeros(2, bool), names=("g", "k", "s"),
                    labels=["rest.edf", "task.edf"])
    fig = P.pairplot(res)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["rest.edf", "task.edf"]
    assert fig.axes[-1].get_xlabel() == "s"
    idata = az.from_dict(posterior={"g": A[:, 0].reshape(2, 1500),
                                    "w": A[:, 1:].reshape(2, 1500, 2)})
    fig = P.pairplot({"MCMC": idata, "NPE": B}, path=tmp_path / "pair.png")
    assert [a.get_xlabel() for a in _grid(fig, 3)[2]] == ["g", "w[0]", "w[1]"]
    assert (tmp_path / "pair.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("call, match", [
    (lambda: P.pairplot([A, B[:, :2]]),
     r"samples: expected every posterior to have the d=3 parameters of samples\[0\], got d=2 "
     r"for samples\[1\]"),
    (lambda: P.pairplot(A, truths=[0.0, 1.0]),
     r"truths: expected 3 values \(one per parameter; NaN for none\), got shape \(2,\)"),
    (lambda: P.pairplot(A, truths={"x": 1.0}, names=["a", "b", "c"]), r"truths: .*unknown \['x'\]"),
    (lambda: P.pairplot(A, names=["a", "b"]), r"names: expected 3 names, got 2"),
    (lambda: P.pairplot({"NPE": A, "bad": np.where(RNG.random(A.shape) < 0.01, np.nan, B)}),
     r"samples\['bad'\]: expected finite draws, got \d+ of 3000 rows with NaN or inf"),
    (lambda: P.pairplot(A[:, 0]), r"samples: expected draws of shape \(n >= 2, d\).*got \(3000,\)"),
    (lambda: P.pairplot([A, B], labels=["one"]), r"labels: expected 2 labels \(one per posterior\), got 1"),
    (lambda: P.pairplot(A, kind="scatter"), r"kind: expected 'kde' or 'hist', got 'scatter'"),
    (lambda: P.pairplot(A, levels=(0.5, 1.0)), r"levels: expected credible masses strictly inside"),
    (lambda: P.pairplot(A, levels=["x"]), r"levels: expected credible masses strictly inside"),
    (lambda: P.pairplot(A, bins=0), r"bins: expected a positive int, got 0"),
    (lambda: P.pairplot([[1j, 2], [3, 4]]), r"samples: expected real numbers, got complex"),
    (lambda: P.pairplot({}), r"samples: expected at least one posterior"),
])
def test_pairplot_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_pairplot_refuses_inferencedata_without_posterior():
    import arviz as az

    with pytest.raises(ValueError, match=r"samples: expected an InferenceData with a posterior group"):
        P.pairplot(az.from_dict(prior={"a": A[:, 0].reshape(1, -1)}))


# ---------------------------------------------------------------- SBC ECDF band
def _verdicts(fig):
    """Per panel: True when the curve is drawn as inside the band (blue, not red)."""
    return np.array([ax.lines[0].get_color() == "C0" for ax in _visible(fig)])


def _curve_inside_band(ax):
    """Per step of the plotted curve: does it lie in the plotted band (edges count as in)?

    Curve and band are both steps on the same grid; each step's curve value, nudged a
    hair towards zero, is tested against the band polygon at the step's middle. The
    first step (before the first grid point) is skipped: there both are exactly zero.
    """
    (band,) = ax.collections
    polygon = band.get_paths()[0]
    x, y = ax.lines[0].get_xdata(), ax.lines[0].get_ydata()
    mid = (x[1:-1] + x[2:]) / 2
    return polygon.contains_points(np.column_stack([mid, y[1:-1] * (1 - 1e-9)]))


def test_sbc_band_holds_calibrated_ranks_and_catches_miscalibrated_ones():
    rng = np.random.default_rng(5)
    m, L, d = 100, 99, 100
    # Calibrated: ranks uniform on {0..L}. A simultaneous 95 % band keeps the whole
    # curve of ~95 of 100 parameters (a pointwise band would keep barely half).
    fig = P.plot_sbc_ecdf(rng.integers(0, L + 1, size=(m, d)), L)
    inside = _verdicts(fig)
    assert 0.88 <= inside.mean() <= 1.0, inside.mean()
    for ax, verdict in zip(_visible(fig), inside):    # blue exactly when the curve stays in
        assert _curve_inside_band(ax).all() == verdict
    # Overconfident (too many extreme ranks, U-shaped) and biased (truth mostly above
    # the posterior draws): every parameter leaves the band, and the curve visibly so.
    u_shaped = np.floor(rng.beta(0.6, 0.6, size=(300, 10)) * (L + 1)).astype(int)
    biased = np.floor(rng.beta(1.6, 1.0, size=(300, 10)) * (L + 1)).astype(int)
    for ranks in (u_shaped, biased):
        fig = P.plot_sbc_ecdf(ranks, L)
        assert not _verdicts(fig).any()
        for ax in _visible(fig):
            assert not _curve_inside_band(ax).all()
            assert "p < 0.001" in ax.get_title() or float(ax.get_title().split("= ")[1][:-1]) < 0.05


def test_sbc_band_is_narrower_with_more_simulations():
    """More SBC simulations give a tighter band (about 1/sqrt(m))."""
    rng = np.random.default_rng(6)
    widths = []
    for m in (100, 400):
        ax = P.plot_sbc_ecdf(rng.integers(0, 100, size=(m, 1)), 99).axes[0]
        y = ax.collections[0].get_paths()[0].vertices[:, 1]
        widths.append(y.max() - y.min())
    assert 1.6 < widths[0] / widths[1] < 2.4, widths
