"""``bmsbi demo``: the main job, end to end on an embedded brainmass model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo"]


def _plot_bank(bank, task, recording, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = bank.dim
    fig, axes = plt.subplots(1, d + 1, figsize=(4 * (d + 1), 3.4))
    t = np.arange(recording.shape[0]) / task.fs
    axes[0].plot(t, recording[:, 0], lw=0.8)
    axes[0].set(title=f"{task.name}: synthetic recording", xlabel="time (s)", ylabel="signal")
    # How the first summary feature depends on each parameter: identifiability at a glance.
    feat = bank.x.reshape(len(bank), -1)[:, 0]
    for i, name in enumerate(bank.names):
        axes[i + 1].scatter(bank.theta[:, i], feat, s=2, alpha=0.3)
        axes[i + 1].set(xlabel=name, ylabel="summary[0]", title=f"summary[0] vs {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_demo(task_name: str = "hopf_node", out: Path = Path("bmsbi-demo"), num_simulations: int | None = None,
             seed: int = 0, quiet: bool = False) -> dict:
    """Simulate a bank for ``task_name``, plot it and write a report into ``out``.

    Returns the report as a dict (also written as ``report.json`` / ``report.txt``).
    """
    import jax

    import bmsbi
    import simulators

    task = simulators.get(task_name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = num_simulations or 5000
    t0 = time.perf_counter()
    key_bank, key_obs = jax.random.split(jax.random.key(seed))
    bank = bmsbi.simulate_bank(task.simulator, task.prior, n, key=key_bank, progress=not quiet,
                               path=out / "bank")
    t_bank = time.perf_counter() - t0
    recording = np.asarray(task.observe(np.asarray(task.true_theta, dtype=np.float32), key_obs))
    _plot_bank(bank, task, recording, out / "bank.png")
    report = {"task": task.name, "parameters": list(task.prior.names), "num_simulations": n,
              "num_invalid": bank.meta["num_invalid"], "bank_seconds": round(t_bank, 2),
              "simulations_per_second": round(n / t_bank, 1), "x_shape": list(bank.x_shape),
              "true_theta": np.asarray(task.true_theta).tolist()}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    lines = [f"bmsbi demo: task {task.name}"] + [f"  {k}: {v}" for k, v in report.items()]
    (out / "report.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/bank.png, {out}/report.txt and the bank in {out}/bank")
    return report
