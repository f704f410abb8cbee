"""Simulation-bank throughput: bmsbi's bank vs a per-θ Python loop vs a hand-written kernel.

One run, same model and simulation budget, side by side:

(a) ``bmsbi.simulate_bank(sim, prior, N, key=..., progress=False)`` — end to end (a first call
    and a repeat call with the same arguments), and its compiled chunk function in steady state
    (what ``simulate_bank`` executes per chunk, host transfer included). Trace+lower and XLA
    compile times are reported separately.
(b) a Python loop calling ``brainmass.Simulator(model).run(...)`` once per θ with the default
    ``jit=True`` (what a user of sbi's ``simulate_for_sbi`` writes), on a small subset of θ,
    extrapolated per simulation.
(c) hand-written ``jax.lax.scan`` + ``jax.vmap`` kernels of the same equations and integrator
    (``benchmarks/hopf_kernel.py``): ``blocked`` draws the normals 100 steps at a time, ``pregen``
    all of a simulation at once, ``split`` like brainstate (one key split per draw; it reproduces
    brainmass's output to float rounding); for the network also the coupling as a matrix product.
    The fastest of them is the speed limit.

Models: the single Hopf node (``HopfStep(1)`` + ``OUProcess`` on x and y; θ = a, w, sigma) and
the 8-region network (``brainmass.Network`` on ``example_connectome``, diffusive coupling on x,
global coupling G; θ = a, w, sigma, G), 2000 steps of dt = 0.1 ms, monitor x; and ``bold``, the
94-region whole-brain Hopf BOLD task ``simulators.get("hopf_bold_hcp")`` (real HCP connectome,
θ = G, a, sigma): the bank runs the task's raw simulator ``task.observe_fn`` (recording
(1200, 94): 10,272 Euler-Maruyama steps of 0.09 s, x kept every 8 steps after a 60 s transient),
the kernel is ``hopf_bold_kernel`` with the normals of one TR drawn at once and the coupling as a
matrix product. Its output statistics are checked against the bank's (paired by θ, other noise),
and the kernel with brainstate's random stream must reproduce the bank to float rounding.
``--profile`` for ``bold`` times the four kernel variants (RNG pattern × coupling form) and the
summary-composed ``task.simulator`` beside the bank on a smaller batch.

``--profile`` adds the breakdown of the brainmass-vs-kernel gap: step-body HLO op counts,
RNG-pattern variants, and what bmsbi can set without touching brainmass (chunk size, PRNG
implementation, ``sample_every``, XLA flags), each timed side by side.

The machine is shared and small: every number is the best of ``--repeats`` interleaved runs,
and ratios (not absolute rates) are what to compare.

    python benchmarks/bank_throughput.py                       # both models, table + RESULTS.md
    python benchmarks/bank_throughput.py --models node --profile --no-append
    python benchmarks/bank_throughput.py --models bold --profile   # needs bmsbi[empirical]; ~10 min
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

STEPS = 2000
DT_MS = 0.1
DEFAULT_N = {"node": 2000, "network": 500, "bold": 128}
DEFAULT_LOOP_SIMS = {"node": 20, "network": 20, "bold": 3}
BOLD_TASK = "hopf_bold_hcp"
BOLD_PROFILE_N = 32  # batch of the bold --profile variants (four kernels, two banks, interleaved)


# --------------------------------------------------------------------------- models
def _lazy():
    import brainmass
    import brainstate
    import brainunit as u
    import jax
    import jax.numpy as jnp
    import numpy as np
    return brainmass, brainstate, u, jax, jnp, np


def connectome():
    brainmass, *_ , np = _lazy()
    return np.asarray(brainmass.datasets.load_dataset("example_connectome").weights, dtype=np.float32)


def make_node_simulator(sample_every=None):
    brainmass, brainstate, u, jax, jnp, np = _lazy()
    dt = DT_MS * u.ms

    def hopf_node(theta, key):
        a, w, sigma = theta[0], theta[1], theta[2]
        node = brainmass.HopfStep(1, a=a, w=w,
                                  noise_x=brainmass.OUProcess(1, sigma=sigma),
                                  noise_y=brainmass.OUProcess(1, sigma=sigma))
        res = brainmass.Simulator(node, dt=dt).run(STEPS * dt, monitors=["x"], jit=False,
                                                   sample_every=sample_every)
        return res["x"][:, 0]

    return hopf_node


def make_network_simulator(sample_every=None):
    brainmass, brainstate, u, jax, jnp, np = _lazy()
    dt = DT_MS * u.ms
    W = connectome()
    n = W.shape[0]

    def hopf_network(theta, key):
        a, w, sigma, G = theta[0], theta[1], theta[2], theta[3]
        node = brainmass.HopfStep(n, a=a, w=w,
                                  noise_x=brainmass.OUProcess(n, sigma=sigma),
                                  noise_y=brainmass.OUProcess(n, sigma=sigma))
        # Network sizes its delay buffer from dt at construction, and its zero-delay matrix
        # must stay concrete inside a traced function (else TracerBoolConversionError in
        # Delay.register_delay); theta-dependent values stay traced.
        with brainstate.environ.context(dt=dt), jax.ensure_compile_time_eval():
            net = brainmass.Network(node, conn=W, coupled_var="x", k=G)
        res = brainmass.Simulator(net, dt=dt).run(STEPS * dt, monitors={"x": lambda m: m.node.x.value},
                                                  jit=False, sample_every=sample_every)
        return res["x"]

    return hopf_network


def loop_one(model, theta):
    """What a per-θ user loop does: build the model from floats, ``Simulator.run`` (jit=True)."""
    brainmass, brainstate, u, jax, jnp, np = _lazy()
    dt = DT_MS * u.ms
    th = [float(v) for v in theta]
    if model == "node":
        node = brainmass.HopfStep(1, a=th[0], w=th[1], noise_x=brainmass.OUProcess(1, sigma=th[2]),
                                  noise_y=brainmass.OUProcess(1, sigma=th[2]))
        res = brainmass.Simulator(node, dt=dt).run(STEPS * dt, monitors=["x"])
        return np.asarray(res["x"][:, 0])
    n = connectome().shape[0]
    node = brainmass.HopfStep(n, a=th[0], w=th[1], noise_x=brainmass.OUProcess(n, sigma=th[2]),
                              noise_y=brainmass.OUProcess(n, sigma=th[2]))
    with brainstate.environ.context(dt=dt):
        net = brainmass.Network(node, conn=connectome(), coupled_var="x", k=th[3])
    res = brainmass.Simulator(net, dt=dt).run(STEPS * dt, monitors={"x": lambda m: m.node.x.value})
    return np.asarray(res["x"])


def prior_for(model):
    import bmsbi
    low, high, names = [-0.5, 0.1, 0.01], [0.5, 0.6, 0.1], ["a", "w", "sigma"]
    if model == "network":
        low, high, names = low + [0.0], high + [2.0], names + ["G"]
    return bmsbi.Prior.uniform(low, high, names=names)


def simulator_for(model, sample_every=None):
    return (make_node_simulator if model == "node" else make_network_simulator)(sample_every)


def kernel_for(model, noise="blocked", unroll=1, coupling="elementwise"):
    """``jit(vmap(kernel))(theta (n, d), keys (n,))``."""
    import functools

    import jax
    from benchmarks.hopf_kernel import hopf_network_kernel, hopf_node_kernel
    kern = (hopf_node_kernel if model == "node" else
            functools.partial(hopf_network_kernel, conn=connectome(), coupling=coupling))

    def one(th, k):
        return kern(th, k, steps=STEPS, dt=DT_MS, noise=noise, unroll=unroll)

    return jax.jit(jax.vmap(one))


def bank_keys(key, n):
    """The per-simulation keys ``simulate_bank`` hands to the simulator (see bmsbi.bank)."""
    import jax
    _, k_sim = jax.random.split(key)
    return jax.vmap(lambda i: jax.random.fold_in(k_sim, i))(jax.numpy.arange(n))


def bank_chunk_fn(sim, prior, key):
    """What ``simulate_bank`` runs per chunk, as ``f(index) -> (theta, x)``, plus ``lower(index)``.

    Private API on purpose: its warm time is the bank's steady-state cost. theta is drawn as the bank
    draws it (``prior.sample(fold_in(k_theta, i), 1)[0]``, vmapped, moved to the host), then
    ``bmsbi.bank._build_sim_fn`` maps the simulator. Handles ``_build_sim_fn(simulator, k_sim)``
    (key baked into the trace) and ``_build_sim_fn(simulator)`` taking the key as an argument.
    """
    import inspect

    import jax
    import numpy as np
    from bmsbi.bank import _build_sim_fn
    k_theta, k_sim = jax.random.split(key)
    theta_of = jax.jit(jax.vmap(lambda i: prior.sample(jax.random.fold_in(k_theta, i), 1)[0]))
    if len(inspect.signature(_build_sim_fn).parameters) == 2:
        fn = _build_sim_fn(sim, k_sim)[0]
        extra = ()
    else:
        fn = _build_sim_fn(sim)[0]
        extra = (k_sim,)

    def chunk(idx):
        theta = np.asarray(theta_of(idx))
        return theta, fn(theta, idx, *extra)

    return chunk, (lambda idx: fn.lower(np.asarray(theta_of(idx)), idx, *extra))


# --------------------------------------------------------------------------- timing
def best_of(fns: dict, repeats: int) -> dict:
    """Best wall time of each zero-arg callable, interleaved round-robin (noisy shared CPU)."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def blocked(f, *args):
    import jax
    return lambda: jax.block_until_ready(f(*args))


def chunked_runner(fn, n, cs):
    """Run ``fn`` over ``n`` indices in chunks of ``cs`` with host transfer, as simulate_bank does
    (the index array split over all local devices when there are several; theta is then moved by
    jit to match)."""
    import jax
    import numpy as np
    devices = jax.local_devices()
    put = lambda a: a  # noqa: E731
    if len(devices) > 1:
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        sharding = NamedSharding(Mesh(np.array(devices), ("sims",)), PartitionSpec("sims"))
        put = lambda a: jax.device_put(a, sharding)  # noqa: E731

    def run():
        for c in range((n + cs - 1) // cs):
            jax.device_get(fn(put(np.arange(c * cs, (c + 1) * cs, dtype=np.int32))))
    return run


# --------------------------------------------------------------------------- statistics
def agreement(x_ref, x_new):
    """Paired test that two batches (same θ row by row, independent noise) have the same statistics.

    Per simulation (stationary second half of the run, averaged over nodes): ``d_var = log var_new -
    log var_ref`` and, per frequency bin below 500 Hz, ``d_psd = log PSD_new - log PSD_ref`` (Welch,
    4 Hann segments). Returns the mean of ``d_var`` with its z-score (mean / standard error), the
    median over bins of ``|mean d_psd|`` and the largest bin z-score: with equal statistics the
    means sit near 0 and the z-scores are those of a standard normal (max over ~12 bins: below ~3).
    """
    import numpy as np

    def per_sim(x):
        x = np.asarray(x, np.float64)
        x = x.reshape(x.shape[0], x.shape[1], -1)[:, x.shape[1] // 2:]  # (n, t, nodes)
        x = x - x.mean(axis=1, keepdims=True)
        var = x.var(axis=1).mean(axis=1)
        seg = x.shape[1] // 4
        segs = np.stack([x[:, i * seg:(i + 1) * seg] for i in range(4)], 1) * np.hanning(seg)[:, None]
        psd = (np.abs(np.fft.rfft(segs, axis=2)) ** 2).mean(axis=(1, 3))  # (n, freqs)
        f = np.fft.rfftfreq(seg, d=DT_MS * 1e-3)
        return np.log(var), np.log(psd[:, (f > 0) & (f < 500)])

    v0, p0 = per_sim(x_ref)
    v1, p1 = per_sim(x_new)
    n = v0.shape[0]
    dv, dp = v1 - v0, p1 - p0
    z = lambda d: d.mean(axis=0) / (d.std(axis=0, ddof=1) / np.sqrt(n))  # noqa: E731
    return {"dlogvar": float(dv.mean()), "dlogvar_z": float(z(dv)),
            "dlogpsd_median": float(np.median(np.abs(dp.mean(axis=0)))),
            "dlogpsd_max_z": float(np.abs(z(dp)).max()), "psd_bins": int(dp.shape[1])}


# --------------------------------------------------------------------------- HLO
def _hlo_ops(text):
    """Per-computation opcode lists of an optimized HLO module."""
    comps, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            cur = m.group(1)
            comps[cur] = []
            continue
        if line.strip() == "}":
            cur = None
            continue
        if cur and "=" in line:
            comps[cur].append(line.strip())
    return comps


def _opcode(ins):
    rest = re.sub(r"^(?:ROOT\s+)?%?[\w.\-]+\s*=\s*", "", ins)
    if rest.startswith("("):
        depth = 0
        for j, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        rest = rest[j + 1:].lstrip()
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else rest
    m = re.match(r"([\w\-]+)\(", rest)
    return m.group(1) if m else "?"


def step_body_counts(hlo_text):
    """Op counts of the time-step loop body (the largest while body) of an optimized HLO module."""
    comps = _hlo_ops(hlo_text)
    best = None
    for ins in (i for c in comps.values() for i in c):
        if _opcode(ins) != "while":
            continue
        body = re.search(r"body=%?([\w.\-]+)", ins).group(1)
        deep, seen, stack = Counter(), set(), [body]
        while stack:
            b = stack.pop()
            if b in seen or b not in comps:
                continue
            seen.add(b)
            for x in comps[b]:
                deep[_opcode(x)] += 1
                stack += re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", x)
        top = Counter(_opcode(x) for x in comps[body])
        row = {"top_level_ops": sum(top.values()), "fusions": top["fusion"], "nested_whiles": deep["while"],
               "copies": top["copy"], "all_ops": sum(deep.values()),
               "elementwise_math": sum(deep[k] for k in ("add", "subtract", "multiply", "divide", "negate",
                                                         "exponential-minus-one", "abs", "select", "compare")),
               "rng_bit_ops": sum(deep[k] for k in ("xor", "shift-left", "shift-right-logical", "or"))}
        if best is None or row["all_ops"] > best["all_ops"]:
            best = row
    return best


# --------------------------------------------------------------------------- contenders
BLOCKED = "hand kernel, noise drawn 100 steps at a time"
PREGEN = "hand kernel, whole-run noise drawn up front"
SPLIT = "hand kernel, brainstate's RNG pattern (same stream)"
MATMUL = "hand kernel, noise in blocks, coupling as matmul"


def kernel_set(model):
    ks = {BLOCKED: kernel_for(model, "blocked"), PREGEN: kernel_for(model, "pregen"),
          SPLIT: kernel_for(model, "split")}
    if model == "network":
        ks[MATMUL] = kernel_for(model, "blocked", coupling="matmul")
    return ks


def measure_model(model, n, repeats, loop_sims, seed=0):
    import bmsbi
    import jax
    import numpy as np

    sim = simulator_for(model)
    prior = prior_for(model)
    key = jax.random.key(seed)
    out = {"model": model, "n": n}

    # (a) bank end to end: a first call, then a repeat call with identical arguments.
    t = time.perf_counter()
    bank = bmsbi.simulate_bank(sim, prior, n, key=key, progress=False)
    out["bank_first_call_s"] = time.perf_counter() - t
    t = time.perf_counter()
    bank = bmsbi.simulate_bank(sim, prior, n, key=key, progress=False)
    out["bank_repeat_call_s"] = time.perf_counter() - t
    cs = bank.meta["chunk_size"]
    out["chunk_size"] = cs

    # (a') the compiled chunk function in steady state; trace+lower and XLA compile timed apart.
    fn, lower = bank_chunk_fn(sim, prior, key)
    idx = np.arange(cs, dtype=np.int32)
    t = time.perf_counter()
    lowered = lower(idx)
    out["bank_trace_lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    out["bank_xla_compile_s"] = time.perf_counter() - t
    del compiled
    chunked_runner(fn, n, cs)()  # warm (compiles through the normal path)

    # (c) kernels on the bank's own theta and keys.
    theta = jax.numpy.asarray(bank.theta)
    keys = bank_keys(key, n)
    kernels = kernel_set(model)
    out["kernel_first_call_s"] = {}
    for name, f in kernels.items():
        t = time.perf_counter()
        jax.block_until_ready(f(theta, keys))
        out["kernel_first_call_s"][name] = time.perf_counter() - t

    best = best_of({"bank": chunked_runner(fn, n, cs), **{k: blocked(f, theta, keys) for k, f in kernels.items()}},
                   repeats)
    out["bank_s"] = best.pop("bank")
    out["kernel_s"] = best

    # (b) Python loop over θ with Simulator.run(jit=True): compiles once per θ.
    m = min(loop_sims, n)
    t = time.perf_counter()
    for i in range(m):
        loop_one(model, bank.theta[i])
    out["loop_s_per_sim"] = (time.perf_counter() - t) / m
    out["loop_sims"] = m

    # agreement: split kernel = same random stream as brainmass; pregen = statistically equal.
    xs = np.asarray(kernels[SPLIT](theta, keys))
    out["split_max_abs_diff"] = float(np.abs(xs - bank.x).max())
    out["split_median_abs_diff"] = float(np.median(np.abs(xs - bank.x).max(axis=tuple(range(1, xs.ndim)))))
    out["x_max_abs"] = float(np.abs(bank.x).max())
    out.update(agreement(bank.x, np.asarray(kernels[BLOCKED](theta, bank_keys(jax.random.key(seed + 1), n)))))
    return out


def table(results):
    rows = ["| model | contender | sims/s | ratio to bmsbi bank |", "|---|---|---:|---:|"]
    for r in results:
        n = r["n"]
        ref = n / r["bank_s"]

        def row(name, rate):
            rows.append(f"| {r['model']} | {name} | {rate:,.1f} | {rate / ref:.3g}× |")

        row(f"bmsbi bank, compiled chunk (steady state, chunk {r['chunk_size']})", ref)
        row("bmsbi `simulate_bank` first call (incl. trace+compile)", n / r["bank_first_call_s"])
        row("bmsbi `simulate_bank` repeat call, same args", n / r["bank_repeat_call_s"])
        row(f"per-θ Python loop, `Simulator.run(jit=True)` ({r['loop_sims']} θ)", 1 / r["loop_s_per_sim"])
        fastest = min(r["kernel_s"], key=r["kernel_s"].get)
        for name, t in r["kernel_s"].items():
            row(name + (" **(speed limit)**" if name == fastest else ""), n / t)
    return "\n".join(rows)


def notes(results):
    lines = []
    for r in results:
        lines.append(
            f"- {r['model']} (N={r['n']}): bank trace+lower {r['bank_trace_lower_s']:.2f} s, XLA compile "
            f"{r['bank_xla_compile_s']:.2f} s; kernel first calls (incl. compile) "
            + ", ".join(f"{k.replace('hand kernel, ', '')} {v:.2f} s" for k, v in r["kernel_first_call_s"].items())
            + f". Agreement: brainstate-RNG-pattern kernel vs bank (same θ, same keys): max |Δx| "
            f"{r['split_max_abs_diff']:.1e}, median over simulations {r['split_median_abs_diff']:.1e} "
            f"(|x| ≤ {r['x_max_abs']:.2f}; float32 rounding grown over {STEPS} steps); "
            f"block-noise kernel (other keys) vs bank, paired by θ: mean Δ log variance "
            f"{r['dlogvar']:+.3f} (z = {r['dlogvar_z']:+.1f}), median |mean Δ log PSD| over "
            f"{r['psd_bins']} bins < 500 Hz {r['dlogpsd_median']:.3f}, largest bin |z| {r['dlogpsd_max_z']:.1f}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- profile
def _child_rate(model, n, repeats, variant):
    """Steady-state rate of the bank chunk function under one process-wide setting (child process)."""
    import bmsbi  # noqa: F401
    import jax
    import numpy as np

    if variant == "threefry_unrolled":
        # Diagnostic only: JAX lowers threefry on CPU with a rolled 5-iteration loop; use its
        # unrolled (GPU/TPU default) lowering instead to price that loop.
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf
        mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_lowering_rule, platform="cpu")
    sim, prior = simulator_for(model), prior_for(model)
    fn, _ = bank_chunk_fn(sim, prior, jax.random.key(0))
    run = chunked_runner(fn, n, n)
    run()
    if os.environ.get("BANK_THROUGHPUT_SAVE"):
        np.save(os.environ["BANK_THROUGHPUT_SAVE"], np.asarray(fn(np.arange(n, dtype=np.int32))[1]))
    kb, ks = kernel_for(model, "blocked"), kernel_for(model, "split")
    theta = prior.sample(jax.random.key(1), n)
    keys = bank_keys(jax.random.key(0), n)
    jax.block_until_ready((kb(theta, keys), ks(theta, keys)))
    best = best_of({"bank": run, "kernel": blocked(kb, theta, keys), "kernel_split": blocked(ks, theta, keys)},
                   repeats)
    print(json.dumps({"bank_rate": n / best["bank"], "kernel_rate": n / best["kernel"],
                      "kernel_split_rate": n / best["kernel_split"]}))


def run_child(model, n, repeats, variant, xla_flags=""):
    env = dict(os.environ)
    if xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
    cmd = [sys.executable, __file__, "--_child", variant, "--models", model, "--num-simulations", str(n),
           "--repeats", str(repeats)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:160]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def profile(model, n, repeats):
    """Where the brainmass-vs-kernel gap comes from, and what bmsbi can set (all side by side)."""
    import bmsbi  # noqa: F401
    import brainstate
    import jax
    import numpy as np

    prior = prior_for(model)
    key = jax.random.key(0)
    theta = prior.sample(jax.random.key(1), n)
    keys = bank_keys(key, n)
    idx = np.arange(n, dtype=np.int32)
    sections = []

    # 1. HLO of the step body.
    fn, lower = bank_chunk_fn(simulator_for(model), prior, key)
    kb, kp, ks = kernel_for(model, "blocked"), kernel_for(model, "pregen"), kernel_for(model, "split")
    hlo = {"brainmass via bank": step_body_counts(lower(idx).compile().as_text()),
           "kernel, brainstate RNG pattern": step_body_counts(ks.lower(theta, keys).compile().as_text()),
           "kernel, whole-run noise up front": step_body_counts(kp.lower(theta, keys).compile().as_text())}
    cols = list(next(iter(hlo.values())))
    rows = ["| step body of | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    rows += [f"| {k} | " + " | ".join(str(v[c]) for c in cols) + " |" for k, v in hlo.items()]
    sections.append(("Optimized-HLO op counts of one time step (the scan/for_loop body, fused "
                     "computations and nested loops included; the block-noise kernel is left out: its "
                     "largest loop body is a 100-step block)", "\n".join(rows)))

    # 2. Runtime variants, interleaved.
    sim0 = simulator_for(model)

    def brainstate_fn(sim):
        def one(th, k):
            with brainstate.random.seed_context(k):
                return sim(th, k)
        return brainstate.transform.jit(brainstate.transform.vmap(one))

    variants = {
        "bank chunk fn (brainmass)": chunked_runner(fn, n, n),
        "brainmass, jit(vmap) on (θ, keys) (no prior sampling)": blocked(brainstate_fn(sim0), theta, keys),
        "kernel, brainstate RNG pattern (same stream, same HLO shape)": blocked(ks, theta, keys),
        "kernel, noise drawn in blocks of 100 steps": blocked(kb, theta, keys),
        "kernel, whole-run noise drawn up front": blocked(kp, theta, keys),
    }
    if model == "network":
        variants["kernel, noise in blocks, coupling as matmul"] = blocked(
            kernel_for(model, "blocked", coupling="matmul"), theta, keys)
    nodes = 1 if model == "node" else connectome().shape[0]
    draw_only = jax.jit(jax.vmap(lambda k: jax.random.normal(k, (STEPS, 2, nodes))))
    variants["normal draws alone (STEPS×2×nodes per sim)"] = blocked(draw_only, keys)
    variants["kernel, noise in blocks, scan unroll=4"] = blocked(kernel_for(model, "blocked", unroll=4), theta, keys)
    # What bmsbi can choose without touching brainmass:
    for cs in sorted({max(1, n // 8), max(1, n // 4), max(1, n // 2)}):
        fcs, _ = bank_chunk_fn(sim0, prior, key)
        variants[f"bank chunk fn, chunk_size={cs}"] = chunked_runner(fcs, n, cs)
    f10, _ = bank_chunk_fn(simulator_for(model, sample_every=10), prior, key)
    variants["bank chunk fn, Simulator sample_every=10"] = chunked_runner(f10, n, n)
    for impl in ("rbg", "unsafe_rbg"):
        kimpl = jax.random.key(0, impl=impl)
        try:
            fi, _ = bank_chunk_fn(sim0, prior, kimpl)
            variants[f"bank chunk fn, key impl={impl}"] = chunked_runner(fi, n, n)
        except Exception as exc:  # pragma: no cover - report, don't fail
            print(f"key impl {impl}: {type(exc).__name__}: {exc}", file=sys.stderr)
    for name, v in variants.items():  # warm / compile
        v()
    best = best_of(variants, repeats)
    ref = best["bank chunk fn (brainmass)"]
    rows = ["| variant | sims/s | ratio to bank chunk fn |", "|---|---:|---:|"]
    rows += [f"| {k} | {n / v:,.0f} | {ref / v:.2f}× |" for k, v in best.items()]
    sections.append((f"Runtime variants ({model}, N={n}, best of {repeats}, interleaved)", "\n".join(rows)))

    # 3. Process-wide settings (separate processes; each prints bank and kernel rate so the
    #    bank/kernel ratio is measured side by side within the process).
    hoist = "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold="
    settings = [("default", "plain", ""),
                ("threefry unrolled lowering (diagnostic: patches a JAX-internal lowering)",
                 "threefry_unrolled", ""),
                ("XLA_FLAGS=--xla_cpu_use_thunk_runtime=false (old-runtime opt-out)", "plain",
                 "--xla_cpu_use_thunk_runtime=false"),
                (f"XLA_FLAGS={hoist}1000000", "plain", hoist + "1000000"),
                (f"XLA_FLAGS={hoist}1000000000", "plain", hoist + "1000000000"),
                (f"XLA_FLAGS=--xla_force_host_platform_device_count={os.cpu_count()} (bank shards each chunk over "
                 "the CPU devices; kernels stay on one)", "plain",
                 f"--xla_force_host_platform_device_count={os.cpu_count()}"),
                (f"XLA_FLAGS={hoist}1000000000 --xla_force_host_platform_device_count={os.cpu_count()} "
                 "(bank shards each chunk over the CPU devices; kernels stay on one)", "plain",
                 f"{hoist}1000000000 --xla_force_host_platform_device_count={os.cpu_count()}")]
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    child, saved = {}, {}
    for i, (label, variant, flags) in enumerate(settings):
        saved[label] = tmp / f"bank_throughput_{os.getpid()}_{i}.npy"
        os.environ["BANK_THROUGHPUT_SAVE"] = str(saved[label])
        try:
            child[label] = run_child(model, n, repeats, variant, flags)
        finally:
            del os.environ["BANK_THROUGHPUT_SAVE"]
    x_default = np.load(saved["default"]) if saved["default"].exists() else None
    rows = ["| setting | bank sims/s | kernel (noise in blocks) sims/s | kernel (brainstate RNG) sims/s | "
            "bank / faster kernel | bank max abs Δx vs default |", "|---|---:|---:|---:|---:|---:|"]
    for label, v in child.items():
        if "error" in v:
            rows.append(f"| {label} | failed: {v['error']} | | | | |")
            continue
        dx = "n/a"
        if x_default is not None and saved[label].exists():
            dx = f"{float(np.abs(np.load(saved[label]) - x_default).max()):.1e}"
        rows.append(f"| {label} | {v['bank_rate']:,.0f} | {v['kernel_rate']:,.0f} | {v['kernel_split_rate']:,.0f} | "
                    f"{v['bank_rate'] / max(v['kernel_rate'], v['kernel_split_rate']):.2f} | {dx} |")
    for p in saved.values():
        if p.exists():
            p.unlink()
    sections.append((f"Process-wide settings ({model}, N={n}; one process each, bank and kernels "
                     "interleaved inside it)", "\n".join(rows)))
    return sections


# --------------------------------------------------------------------------- bold (94 regions)
def bold_setup():
    """The ``hopf_bold_hcp`` task and the constants its simulator closes over, rebuilt from the
    public helpers of ``simulators.hopf_bold`` exactly as ``make_task`` builds them."""
    import math

    import numpy as np
    import simulators
    from bmsbi import datasets
    from simulators import hopf_bold

    task = simulators.get(BOLD_TASK)
    name = BOLD_TASK.rsplit("_", 1)[1]
    tr, steps = datasets.DATASETS[name]["tr"], hopf_bold.DATASETS[name]
    n_transient = math.ceil(hopf_bold.TRANSIENT_S / tr) * steps
    return {"task": task, "dt": tr / steps, "steps": steps, "n_transient": n_transient,
            "n_steps": n_transient + task.n_time * steps,
            "conn": hopf_bold.coupling_matrix(datasets.load_connectome(name)).astype(np.float32),
            "omega": (2.0 * np.pi * hopf_bold.node_frequencies(datasets.load_fmri(name))).astype(np.float32)}


def bold_kernel(setup, noise="blocked", coupling="matmul"):
    """``jit(vmap(hopf_bold_kernel))(theta (n, 3), keys (n,)) -> x (n, n_time, N)``."""
    import functools

    import jax
    from benchmarks.hopf_kernel import hopf_bold_kernel
    return jax.jit(jax.vmap(functools.partial(
        hopf_bold_kernel, conn=setup["conn"], omega=setup["omega"], dt=setup["dt"],
        n_transient=setup["n_transient"], n_time=setup["task"].n_time, sample_every=setup["steps"],
        noise=noise, coupling=coupling)))


def loop_one_bold(setup, theta, seed):
    """The per-θ user loop for the BOLD task: build the brainmass network from floats, run
    ``Simulator.run(..., jit=True)`` (the same model, integrator and protocol as the task)."""
    import warnings

    import brainmass
    import brainstate
    import brainunit as u
    import jax
    import numpy as np
    from simulators._task import white_noise_sigma

    G, a, sigma = (float(v) for v in theta)
    n, dt = setup["conn"].shape[0], setup["dt"]
    noise = white_noise_sigma(sigma, dt)
    with brainstate.random.seed_context(jax.random.key(seed)), brainstate.environ.context(dt=dt * u.ms), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="duration .* is not an integer multiple")
        node = brainmass.HopfStep(n, a=a, w=setup["omega"], beta=1.0, method="euler",
                                  noise_x=brainmass.GaussianNoise(n, sigma=noise),
                                  noise_y=brainmass.GaussianNoise(n, sigma=noise))
        net = brainmass.Network(node, conn=setup["conn"], distance=np.zeros((n, n)), speed=1.0,
                                coupled_var="x", k=G)
        res = brainmass.Simulator(net, dt=dt * u.ms).run(
            (setup["n_steps"] + 0.5) * dt * u.ms, monitors=lambda m: m.node.x.value,
            transient=setup["n_transient"], sample_every=setup["steps"])
    return np.asarray(res["output"])


def bold_stats(x):
    """Per simulation: mean functional connectivity (off-diagonal Pearson correlation between
    regions) and the log variance of each region, over the whole recording ``(n, time, N)``."""
    import numpy as np
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    var = (x * x).mean(axis=1)  # (n, N)
    z = x / np.sqrt(var)[:, None, :]
    fc = np.einsum("ntj,ntk->njk", z, z) / x.shape[1]
    n_reg = x.shape[2]
    off = ~np.eye(n_reg, dtype=bool)
    return fc[:, off].mean(axis=1), np.log(var)


def bold_agreement(x_ref, x_new):
    """Paired by θ (independent noise): mean FC and per-region log variance of ``x_new`` vs ``x_ref``.

    Differences per simulation ``d = stat_new - stat_ref``; z = mean(d) / standard error. With
    equal statistics the z-scores are standard normal: |z| of the 94 regions stays below ~3.3.
    """
    import numpy as np
    fc0, lv0 = bold_stats(x_ref)
    fc1, lv1 = bold_stats(x_new)
    n = fc0.shape[0]
    z = lambda d: d.mean(axis=0) / (d.std(axis=0, ddof=1) / np.sqrt(n))  # noqa: E731
    dfc, dlv = fc1 - fc0, lv1 - lv0
    return {"fc_ref": float(fc0.mean()), "fc_new": float(fc1.mean()), "dfc": float(dfc.mean()),
            "dfc_z": float(z(dfc)), "dlogvar": float(dlv.mean()), "dlogvar_z": float(z(dlv.mean(axis=1))),
            "dlogvar_region_median": float(np.median(np.abs(dlv.mean(axis=0)))),
            "dlogvar_region_max_z": float(np.abs(z(dlv)).max()), "regions": int(dlv.shape[1])}


BOLD_LIMIT = "hand kernel, normals of one TR drawn at once, coupling as matmul"
BOLD_SPLIT = "hand kernel, brainstate's RNG pattern + brainmass's elementwise coupling (same stream)"
BOLD_SPLIT_MATMUL = "hand kernel, brainstate's RNG pattern, coupling as matmul"
BOLD_BLOCKED_ELEMENTWISE = "hand kernel, normals of one TR drawn at once, elementwise coupling"
BOLD_SAME_STREAM_N = 16  # simulations checked against the bank with the same random stream


def measure_bold(n, repeats, loop_sims, seed=0):
    import bmsbi
    import jax
    import numpy as np

    setup = bold_setup()
    task = setup["task"]
    sim, prior = task.observe_fn, task.prior
    key = jax.random.key(seed)
    out = {"model": "bold", "n": n, **{k: setup[k] for k in ("dt", "steps", "n_transient", "n_steps")}}

    # (a) bank end to end (NaN rows kept so θ stays aligned with the bank's keys).
    t = time.perf_counter()
    bank = bmsbi.simulate_bank(sim, prior, n, key=key, progress=False, on_invalid="keep")
    out["bank_first_call_s"] = time.perf_counter() - t
    t = time.perf_counter()
    bank = bmsbi.simulate_bank(sim, prior, n, key=key, progress=False, on_invalid="keep")
    out["bank_repeat_call_s"] = time.perf_counter() - t
    cs = bank.meta["chunk_size"]
    out["chunk_size"] = cs
    out["num_invalid"] = int((~np.isfinite(bank.x)).any(axis=(1, 2)).sum())

    # (a') compiled chunk in steady state: simulate_bank's compiled function, reused (bmsbi caches
    # it by simulator, so compiling it again here would only hit the cache); trace+lower timed.
    fn, lower = bank_chunk_fn(sim, prior, key)
    t = time.perf_counter()
    lower(np.arange(cs, dtype=np.int32))
    out["bank_trace_lower_s"] = time.perf_counter() - t

    # (c) the speed-limit kernel on the bank's own θ and keys.
    theta = jax.numpy.asarray(bank.theta)
    keys = bank_keys(key, n)
    limit = bold_kernel(setup, "blocked", "matmul")
    t = time.perf_counter()
    jax.block_until_ready(limit(theta, keys))
    out["kernel_first_call_s"] = {BOLD_LIMIT: time.perf_counter() - t}
    best = best_of({"bank": chunked_runner(fn, n, cs), BOLD_LIMIT: blocked(limit, theta, keys)}, repeats)
    out["bank_s"] = best.pop("bank")
    out["kernel_s"] = best

    # (b) per-θ Python loop with Simulator.run(jit=True): one trace+compile per θ.
    m = min(loop_sims, n)
    t = time.perf_counter()
    for i in range(m):
        loop_one_bold(setup, bank.theta[i], i)
    out["loop_s_per_sim"] = (time.perf_counter() - t) / m
    out["loop_sims"] = m

    # Agreement. Same stream: the kernel with brainstate's RNG pattern and coupling form must
    # reproduce the bank to float rounding (this checks equations, constants and sampling).
    k = min(BOLD_SAME_STREAM_N, n)
    xs = np.asarray(bold_kernel(setup, "split", "elementwise")(theta[:k], keys[:k]))
    out["same_stream_n"] = k
    out["split_max_abs_diff"] = float(np.abs(xs - bank.x[:k]).max())
    out["x_max_abs"] = float(np.abs(bank.x).max())
    # Statistics: the speed-limit kernel with other keys vs the bank, paired by θ.
    finite = np.isfinite(bank.x).all(axis=(1, 2))
    x_new = np.asarray(limit(theta, bank_keys(jax.random.key(seed + 1), n)))
    finite &= np.isfinite(x_new).all(axis=(1, 2))
    out.update(bold_agreement(bank.x[finite], x_new[finite]))
    out["agreement_n"] = int(finite.sum())
    return out


def notes_bold(r):
    rate = lambda s: r["n"] / s  # noqa: E731
    bank = rate(r["bank_s"])
    limit = rate(r["kernel_s"][BOLD_LIMIT])
    loop = 1.0 / r["loop_s_per_sim"]
    return (
        f"- bold (N={r['n']}; bank of `{BOLD_TASK}`'s raw simulator `task.observe_fn`, recording (1200, 94), "
        f"no summary; {r['num_invalid']} non-finite): ratios bmsbi bank / per-θ loop "
        f"{bank / loop:,.0f}×, first `simulate_bank` call / loop {rate(r['bank_first_call_s']) / loop:,.0f}×, "
        f"kernel / bmsbi bank {limit / bank:.2f}×. Bank trace+lower {r['bank_trace_lower_s']:.2f} s, first "
        f"call − repeat call {r['bank_first_call_s'] - r['bank_repeat_call_s']:.1f} s (trace + XLA compile); "
        f"kernel first call (incl. compile) "
        f"{r['kernel_first_call_s'][BOLD_LIMIT]:.2f} s; loop {r['loop_s_per_sim']:.1f} s per θ "
        f"(trace+compile+run).\n"
        f"- bold agreement: kernel with brainstate's RNG pattern and elementwise coupling vs bank "
        f"(same θ, same keys, {r['same_stream_n']} simulations): max |Δx| {r['split_max_abs_diff']:.1e} "
        f"(|x| ≤ {r['x_max_abs']:.2f}). Speed-limit kernel (other keys) vs bank, paired by θ "
        f"({r['agreement_n']} simulations): mean FC {r['fc_new']:.4f} vs {r['fc_ref']:.4f} "
        f"(Δ {r['dfc']:+.4f}, z = {r['dfc_z']:+.1f}); log variance Δ {r['dlogvar']:+.4f} averaged over "
        f"regions (z = {r['dlogvar_z']:+.1f}), per region median |mean Δ| {r['dlogvar_region_median']:.3f}, "
        f"largest |z| of {r['regions']} regions {r['dlogvar_region_max_z']:.1f} "
        f"({'within noise' if max(abs(r['dfc_z']), abs(r['dlogvar_z'])) < 3 and r['dlogvar_region_max_z'] < 4 else 'NOT within noise'}).")


def profile_bold(n, repeats):
    """The bold gap split into RNG pattern × coupling form, and the summary's cost (interleaved)."""
    import jax
    import numpy as np

    setup = bold_setup()
    task = setup["task"]
    key = jax.random.key(0)
    fn, _ = bank_chunk_fn(task.observe_fn, task.prior, key)
    fs, _ = bank_chunk_fn(task.simulator, task.prior, key)
    theta = task.prior.sample(jax.random.key(1), n)
    keys = bank_keys(key, n)
    variants = {"bank chunk fn, `task.observe_fn` (raw recording)": chunked_runner(fn, n, n),
                "bank chunk fn, `task.simulator` (observe + 111-feature summary)": chunked_runner(fs, n, n)}
    for name, noise, coupling in [(BOLD_SPLIT, "split", "elementwise"), (BOLD_SPLIT_MATMUL, "split", "matmul"),
                                  (BOLD_BLOCKED_ELEMENTWISE, "blocked", "elementwise"),
                                  (BOLD_LIMIT, "blocked", "matmul")]:
        variants[name] = blocked(bold_kernel(setup, noise, coupling), theta, keys)
    for v in variants.values():  # warm / compile
        v()
    best = best_of(variants, repeats)
    ref = best["bank chunk fn, `task.observe_fn` (raw recording)"]
    rows = ["| variant | sims/s | ratio to bank chunk fn |", "|---|---:|---:|"]
    rows += [f"| {k} | {n / v:,.1f} | {ref / v:.2f}× |" for k, v in best.items()]
    return [(f"Runtime variants (bold, N={n}, best of {repeats}, interleaved)", "\n".join(rows))]


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="node,network", help="comma list of: node, network, bold")
    ap.add_argument("--num-simulations", type=int, default=None,
                    help=f"simulations per model (default {DEFAULT_N})")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is kept")
    ap.add_argument("--loop-sims", type=int, default=None,
                    help=f"θ run by the per-θ Python loop (default {DEFAULT_LOOP_SIMS})")
    ap.add_argument("--profile", action="store_true", help="add the brainmass-vs-kernel gap breakdown")
    ap.add_argument("--no-append", action="store_true", help="do not append to benchmarks/RESULTS.md")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in DEFAULT_N:
            ap.error(f"--models: unknown model {m!r}; choose from {sorted(DEFAULT_N)}")

    if args._child:
        _child_rate(models[0], args.num_simulations or DEFAULT_N[models[0]], args.repeats, args._child)
        return

    import jax
    results = []
    for m in models:
        n = args.num_simulations or DEFAULT_N[m]
        print(f"[{m}] N={n} ...", file=sys.stderr, flush=True)
        loop_sims = args.loop_sims or DEFAULT_LOOP_SIMS[m]
        results.append(measure_bold(n, args.repeats, loop_sims) if m == "bold"
                       else measure_model(m, n, args.repeats, loop_sims))
    md = table(results)
    small = [r for r in results if r["model"] != "bold"]
    nts = "\n".join(([notes(small)] if small else []) + [notes_bold(r) for r in results if r["model"] == "bold"])
    print(md)
    print()
    print(nts)

    sections = []
    if args.profile:
        for m in models:
            n = args.num_simulations or DEFAULT_N[m]
            print(f"[{m}] profile ...", file=sys.stderr, flush=True)
            sections += profile_bold(min(n, BOLD_PROFILE_N), args.repeats) if m == "bold" else \
                profile(m, n, args.repeats)
        for title, body in sections:
            print(f"\n{title}\n\n{body}")

    if not args.no_append:
        cmd = "python benchmarks/bank_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
        env = (f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
               f"Python {platform.python_version()}")
        protocol = [f"{STEPS} steps of {DT_MS} ms, monitor x"] if set(models) - {"bold"} else []
        if "bold" in models:
            r = next(r for r in results if r["model"] == "bold")
            protocol.append(f"bold: {BOLD_TASK}, {r['n_steps']:,} Euler-Maruyama steps of {r['dt']:g} s, "
                            f"{r['regions']} regions, x every {r['steps']} steps after {r['n_transient']}")
        text = [f"\n## Bank throughput — {datetime.date.today().isoformat()}\n",
                f"`{cmd.strip()}` ({env}; {'; '.join(protocol)}; best of {args.repeats}, "
                "interleaved, on a shared machine: read the ratios)\n", md, "", nts]
        for title, body in sections:
            text += ["", f"{title}:", "", body]
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n".join(text) + "\n")


if __name__ == "__main__":
    main()
