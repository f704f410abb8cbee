"""``bmsbi demo``: the main job, end to end on an embedded brainmass model.

simulate a bank → train NPE → infer on a held-out synthetic recording → check
calibration (SBC, expected coverage) → write PNG plots, a netCDF InferenceData and a
short text report.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "calibration_checks"]


def _plot_recording_and_posterior(task, recording, samples, true_theta, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = samples.shape[1]
    fig, axes = plt.subplots(1, d + 1, figsize=(3.6 * (d + 1), 3.2))
    t = np.arange(recording.shape[0]) / task.fs
    axes[0].plot(t, recording[:, 0], lw=0.7, color="k")
    axes[0].set(title=f"held-out recording ({task.name})", xlabel="time (s)", ylabel="signal")
    lo, hi = task.prior.bounds()
    for i, name in enumerate(task.prior.names):
        ax = axes[i + 1]
        # Zoom on the posterior (and the true value); the prior's range is written inside.
        q_lo, q_hi = np.quantile(samples[:, i], [0.005, 0.995])
        left, right = min(q_lo, true_theta[i]), max(q_hi, true_theta[i])
        pad = 0.15 * (right - left) or 1e-6
        left, right = max(left - pad, lo[i]), min(right + pad, hi[i])
        ax.hist(samples[:, i], bins=np.linspace(left, right, 50), density=True, color="C0",
                alpha=0.7, label="posterior")
        ax.axvline(true_theta[i], color="C3", lw=2, label="true value")
        ax.set_xlim(left, right)
        ax.text(0.02, 0.97, f"prior: [{lo[i]:.3g}, {hi[i]:.3g}]", transform=ax.transAxes,
                fontsize=7, va="top", color="0.3")
        unit = task.units.get(name, "") if hasattr(task, "units") else ""
        ax.set(title=f"p({name} | recording)", xlabel=f"{name} {unit}".strip(), yticks=[])
    axes[1].legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_history(history, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(history.train_loss, label="train")
    if history.val_loss:
        ax.plot(history.val_loss, label="validation")
        ax.axvline(history.best_epoch, color="k", ls=":", lw=1, label="best epoch")
    ax.set(xlabel="epoch", ylabel="negative log-likelihood", title="NPE training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration_checks(posterior, theta, x, *, key, out, num_samples: int = 200,
                       coverage_samples: int = 1000) -> dict:
    """Calibration of ``posterior`` on simulations ``(theta, x)`` it was not trained on.

    Runs simulation-based calibration (:func:`bmsbi.diagnostics.sbc_ranks` with
    ``num_samples`` draws, and :func:`~bmsbi.diagnostics.sbc_uniformity`), expected
    coverage of the HPD regions (``coverage_samples`` draws) and the posterior z-score
    and shrinkage, and writes ``sbc.png``, ``coverage.png`` and ``zscore_shrinkage.png``
    into the folder ``out``. Shared by ``bmsbi demo`` and ``bmsbi diagnose``.

    Returns
    -------
    dict
        ``num_calibration``, ``sbc_p_values``, ``coverage_max_abs_deviation``,
        ``mean_abs_zscore``, ``mean_shrinkage`` (per parameter) and ``lines`` (the text
        report).
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bmsbi import diagnostics, plotting

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = tuple(posterior.names)
    theta, x = np.asarray(theta), np.asarray(x)
    m = len(theta)
    k_sbc, k_cov, k_z = jax.random.split(key, 3)
    ranks = diagnostics.sbc_ranks(posterior, theta, x, key=k_sbc, num_samples=num_samples)
    sbc_p = np.asarray(diagnostics.sbc_uniformity(ranks, num_samples))
    cov = diagnostics.expected_coverage(posterior, theta, x, key=k_cov, num_samples=coverage_samples)
    zs = diagnostics.zscore_shrinkage(posterior, theta, x, key=k_z, num_samples=max(num_samples, 2))
    for fig in (plotting.plot_sbc_ecdf(ranks, num_samples, names=names, path=out / "sbc.png"),
                plotting.plot_coverage(cov, path=out / "coverage.png"),
                plotting.plot_zscore_shrinkage(zs, path=out / "zscore_shrinkage.png")):
        plt.close(fig)
    abs_z = np.nanmean(np.abs(zs.zscore), axis=0)
    shrink = np.nanmean(zs.shrinkage, axis=0)
    result = {"num_calibration": m, "sbc_p_values": sbc_p.tolist(),
              "coverage_max_abs_deviation": cov.max_deviation,
              "mean_abs_zscore": abs_z.tolist(), "mean_shrinkage": shrink.tolist()}
    result["lines"] = [
        f"calibration on {m} held-out simulations: SBC rank uniformity (chi-square) p-values "
        + ", ".join(f"{nm}={p:.2f}" for nm, p in zip(names, sbc_p))
        + f"; HPD expected coverage max |deviation| {cov.max_deviation:.3f} (a calibrated "
        f"posterior gives about {0.87 / np.sqrt(m):.3f} on {m} simulations by chance)",
        "mean |z-score| / shrinkage per parameter: "
        + ", ".join(f"{nm}={z:.2f}/{s:.2f}" for nm, z, s in zip(names, abs_z, shrink))]
    return result


def _is_task_bank(folder: Path, ref: str) -> bool:
    """Whether ``folder`` holds only a bank's files, of task ``ref``."""
    files = {p.name for p in folder.iterdir()}
    if not files <= {"manifest.json"} | {f for f in files if f.startswith("chunk-") and f.endswith(".npz")}:
        return False
    try:
        return json.loads((folder / "manifest.json").read_text())["meta"]["task"] == ref
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_demo(task_name: str = "hopf_node", out: Path = Path("bmsbi-demo"), num_simulations: int | None = None,
             seed: int = 0, quiet: bool = False) -> dict:
    """Run the end-to-end demo on ``task_name`` and write everything into ``out``.

    Returns the report as a dict (also written as ``report.json`` and ``report.txt``).

    Examples
    --------
    >>> from bmsbi.demo import run_demo
    >>> report = run_demo("hopf_node", out="/tmp/bmsbi-demo", num_simulations=2000, quiet=True)  # doctest: +SKIP
    """
    import jax

    import bmsbi
    import simulators
    from bmsbi.bank import BankMismatchError

    task = simulators.get(task_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = num_simulations or task.budget
    timings = {}
    k_bank, k_fit, k_obs, k_post, k_cal = jax.random.split(jax.random.key(seed), 5)

    t0 = time.perf_counter()
    # task.bank records the summary pipeline, so the posterior takes raw recordings.
    try:
        bank = task.bank(n, k_bank, progress=not quiet, path=out / "bank")
    except BankMismatchError as exc:
        # The demo's bank folder is the demo's own output (like the posterior and plots it
        # overwrites): a bank of this task made with other arguments, e.g. by an older bmsbi,
        # is replaced, loudly. Anything else in that folder is left alone.
        if not _is_task_bank(out / "bank", task.ref):
            raise
        print(f"demo: replacing {out / 'bank'}: it holds a bank made with other arguments "
              f"(differs in {exc.differs})", file=sys.stderr)
        shutil.rmtree(out / "bank")
        bank = task.bank(n, k_bank, progress=not quiet, path=out / "bank")
    timings["simulate"] = time.perf_counter() - t0

    # Hold out 10 % of the bank for calibration checks; train on the rest.
    train, test = bank.split(0.9, key=seed)
    t0 = time.perf_counter()
    posterior = bmsbi.NPE().fit(train, prior=task.prior, key=k_fit, progress=not quiet)
    timings["train"] = time.perf_counter() - t0
    posterior.save(out / "posterior.bmsbi")

    # A held-out synthetic recording at the task's reference parameters.
    true_theta = np.asarray(task.true_theta, dtype=np.float32)
    recording = np.asarray(task.observe(true_theta, k_obs))
    np.save(out / "recording.npy", recording)
    (out / "recording.json").write_text(json.dumps({"fs": task.fs}))  # its rate, for read_recording
    t0 = time.perf_counter()
    rec = bmsbi.Recording(recording, task.fs, name="recording.npy")
    result = posterior.infer(k_post, rec, 10_000)  # raw (time, regions) recording at its rate
    timings["sample_10k"] = time.perf_counter() - t0
    samples, x_obs = result.samples[0], result.x[0]
    _plot_recording_and_posterior(task, recording, samples, true_theta, out / "posterior.png")
    _plot_history(posterior.history, out / "training.png")

    idata = posterior.to_arviz(k_post, x_obs, num_samples=1000, num_chains=4)
    idata.to_netcdf(str(out / "inference_data.nc"))

    t0 = time.perf_counter()
    m = min(len(test), 1000)
    cal = calibration_checks(posterior, test.theta[:m], test.x[:m], key=k_cal, out=out)
    timings["calibration"] = time.perf_counter() - t0

    mean, sd = samples.mean(0), samples.std(0)
    report = {
        "task": task.name, "parameters": list(task.prior.names), "num_simulations": n,
        "num_invalid": bank.meta["num_invalid"], "num_train": len(train), "num_calibration": m,
        "epochs": posterior.history.epochs, "best_val_loss": round(float(posterior.history.best_val_loss), 4),
        "true_theta": true_theta.tolist(), "posterior_mean": mean.tolist(), "posterior_sd": sd.tolist(),
        "z_score": ((mean - true_theta) / sd).tolist(),
        "ood_score": float(result.ood_score[0]), "ood_flagged": bool(result.flagged[0]),
        **{k: v for k, v in cal.items() if k != "lines"},
        "seconds": {k: round(v, 2) for k, v in timings.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"bmsbi demo — task {task.name}: {task.description}",
             f"bank: {n} simulations ({report['num_invalid']} invalid) in {timings['simulate']:.1f} s",
             f"NPE: {report['epochs']} epochs in {timings['train']:.1f} s "
             f"(best validation loss {report['best_val_loss']})",
             f"10,000 posterior samples from the raw recording in {timings['sample_10k'] * 1e3:.0f} ms "
             "(first call: summaries, out-of-distribution check and compilation included)",
             f"held-out recording (recording.npy), out-of-distribution score {report['ood_score']:.2f} "
             f"({'FLAGGED' if report['ood_flagged'] else 'like the simulations'}; > 1 is flagged); "
             "posterior mean ± sd vs true value:"]
    for i, name in enumerate(task.prior.names):
        lines.append(f"  {name:8s} {mean[i]: .4g} ± {sd[i]:.3g}   (true {true_theta[i]:.4g}, "
                     f"z = {report['z_score'][i]:+.2f})")
    lines += cal["lines"]
    lines.append(f"files: {', '.join(sorted(p.name for p in out.iterdir()))}")
    lines.append(f"next: bmsbi infer {out / 'posterior.bmsbi'} {out / 'recording.npy'}  "
                 "(any .npy/.csv recordings of shape (time, regions))")
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report
