"""Run sbi's NPE on a prepared simulation bank (the `sbi` contender).

Run with the sbi environment's interpreter (see benchmarks/requirements-sbi.txt), not
bmsbi's: it imports torch and sbi only, never jax or bmsbi.

    /work/sbi-venv/bin/python benchmarks/_sbi_runner.py IN.npz OUT.npz

IN.npz holds
    theta (n, d), x (n, d_x)      the simulations, float32
    x_obs (m, d_x)                 observations to sample for
    num_samples ()                 posterior samples per observation
    seed ()                        torch seed
    task ()                        task name (for the log only)
    prior_kind ()                  "uniform" or "normal"
    prior_a (d,), prior_b (d,)     low/high (uniform) or loc/scale (normal)
    torch_threads ()               optional; torch intra-op threads (0: torch's default)
    theta_obs (m, d)               optional; then OUT.npz also holds the posterior's log
                                   density at each draw and at theta_obs[i] given x_obs[i]

OUT.npz holds
    samples (m, num_samples, d), train_s (), sample_s (m,), epochs (),
    torch_threads (), sbi_version (), torch_version ()
    log_prob_samples (m, num_samples), log_prob_theta (m,)   with theta_obs

sbi is used as its documentation shows: ``NPE(prior, density_estimator="nsf")`` with
its defaults (batch 200, lr 5e-4, 10 % validation, stop after 20 epochs without
improvement, gradient-norm clip 5, z-scored theta and x), then
``append_simulations(theta, x).train()``, ``build_posterior()`` and
``posterior.sample((n,), x=x_o)`` (which rejects draws outside the prior's support).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import sbi
import torch
from sbi.inference import NPE
from torch.distributions import Independent, Normal, Uniform


def _prior(kind: str, a: np.ndarray, b: np.ndarray):
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    if kind == "uniform":
        return Independent(Uniform(a, b), 1)
    if kind == "normal":
        return Independent(Normal(a, b), 1)
    raise ValueError(f"prior_kind must be 'uniform' or 'normal'; received {kind!r}.")


def main(path_in: str, path_out: str) -> None:
    data = np.load(path_in)
    seed = int(data["seed"])
    num_samples = int(data["num_samples"])
    torch.manual_seed(seed)
    threads = int(data["torch_threads"]) if "torch_threads" in data else 0
    if threads > 0:
        torch.set_num_threads(threads)
    prior = _prior(str(data["prior_kind"]), data["prior_a"], data["prior_b"])
    theta = torch.as_tensor(data["theta"], dtype=torch.float32)
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    x_obs = torch.as_tensor(data["x_obs"], dtype=torch.float32)

    inference = NPE(prior=prior, density_estimator="nsf", show_progress_bars=False)
    t0 = time.perf_counter()
    estimator = inference.append_simulations(theta, x).train()
    train_s = time.perf_counter() - t0
    epochs = int(inference.summary["epochs_trained"][-1])
    posterior = inference.build_posterior(estimator)

    theta_obs = torch.as_tensor(data["theta_obs"], dtype=torch.float32) if "theta_obs" in data else None
    samples, sample_s, lp_samples, lp_theta = [], [], [], []
    for i, x_o in enumerate(x_obs):
        t0 = time.perf_counter()
        draws = posterior.sample((num_samples,), x=x_o, show_progress_bars=False)
        sample_s.append(time.perf_counter() - t0)
        samples.append(draws.numpy())
        if theta_obs is not None:  # densities of one observation: its normaliser cancels in HPD ranks
            with torch.no_grad():
                lp = posterior.log_prob(torch.cat([draws, theta_obs[i:i + 1]]), x=x_o,
                                        norm_posterior=False)
            lp_samples.append(lp[:-1].numpy())
            lp_theta.append(float(lp[-1]))
    extra = {}
    if theta_obs is not None:
        extra = {"log_prob_samples": np.stack(lp_samples).astype(np.float64),
                 "log_prob_theta": np.asarray(lp_theta, np.float64)}

    np.savez(
        path_out,
        samples=np.stack(samples).astype(np.float32),
        train_s=np.float64(train_s),
        sample_s=np.asarray(sample_s),
        epochs=np.int64(epochs),
        torch_threads=np.int64(torch.get_num_threads()),
        sbi_version=np.str_(sbi.__version__),
        torch_version=np.str_(torch.__version__),
        **extra,
    )
    print(
        f"sbi {sbi.__version__} {str(data['task'])} n={theta.shape[0]}: "
        f"train {train_s:.1f} s ({epochs} epochs), "
        f"sample {np.mean(sample_s):.2f} s per observation, "
        f"{torch.get_num_threads()} torch thread(s)",
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: _sbi_runner.py IN.npz OUT.npz")
    main(sys.argv[1], sys.argv[2])
