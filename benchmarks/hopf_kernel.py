"""Hand-written JAX kernels of brainmass's Hopf models: the speed limit for the bank benchmark.

These reproduce what ``brainmass.Simulator(...).run(...)`` computes for

* the single node ``HopfStep(1, a, w, noise_x=OUProcess(1, sigma), noise_y=OUProcess(1, sigma))``
* the network ``Network(HopfStep(N, ..., OU noise on x and y), conn=W, coupled_var='x', k=G)``
  (diffusive coupling, zero conduction delays),
* the 94-region whole-brain Hopf BOLD task ``hopf_bold_hcp`` / ``hopf_bold_gw``
  (``simulators/hopf_bold.py``: ``method="euler"``, Gaussian white noise, per-node ``w``,
  transient and sampling at the TR; see :func:`hopf_bold_kernel`),

with the same integrator, written directly in ``jax.lax.scan`` + ``jax.vmap``. They exist only
to measure how far the brainmass path is from the limit; bmsbi itself never uses them (the
contract is that simulations go through brainmass).

What brainmass computes per step (read from brainmass 0.1.1 / brainstate 0.5.4):

``OUProcess.update`` — ``brainstate.nn.exp_euler_step(df, dg, z)`` with ``df = (mean - z) / tau``
and ``dg = sigma / sqrt(tau)``: the diagonal Jacobian ``J = -1/tau`` is taken by ``vector_grad``
and ``z' = z + dt * exprel(dt * J) * df(z) + dg * sqrt(dt) * n``, ``n ~ N(0, 1)`` drawn with
``brainstate.random.randn_like`` (one ``jax.random.split`` of the context key per draw).

``HopfStep.update`` — first ``noise_x()`` then ``noise_y()`` (so the OU value *after* its update
enters the drift), then for each of ``x`` and ``y`` an ``exp_euler_step`` on the pre-step state:
``fx = (a - beta r) x - w y + inp_x``, ``J_x = a - beta r - 2 beta x**2`` (``r = x**2 + y**2``),
``x' = x + dt * exprel(dt * J_x) * fx``; the same for ``y`` with ``fy = (a - beta r) y + w x + inp_y``.
``exprel(z) = expm1(z) / z``, switched to a Taylor polynomial for ``|z| <= 1e-4`` (float32).

``Network.update`` with diffusive coupling and zero delays adds
``G * sum_j C_ij (x_j - x_i)`` (``C`` with zeroed diagonal, ``x`` the pre-step state) to ``inp_x``.

Times are in ms (brainmass divides the drift by ``u.ms`` and steps with ``dt`` in ms).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["exprel", "hopf_node_kernel", "hopf_network_kernel", "hopf_bold_kernel"]


def exprel(z):
    """``(exp(z) - 1) / z`` with the float32 switch brainunit uses (Taylor for ``|z| <= 1e-4``)."""
    small = jnp.abs(z) <= 1e-4
    zs = jnp.where(small, jnp.ones_like(z), z)
    taylor = 1.0 + z * (0.5 + z * (1.0 / 6.0 + z * (1.0 / 24.0 + z / 120.0)))
    return jnp.where(small, taylor, jnp.expm1(zs) / zs)


def _ou(z, n, sigma, tau, dt):
    drift = -z / tau  # mean = 0
    return z + dt * exprel(-dt / tau) * drift + sigma / jnp.sqrt(tau) * jnp.sqrt(dt) * n


def _hopf(x, y, ix, iy, a, w, beta, dt):
    r = x * x + y * y
    g = a - beta * r
    fx = g * x - w * y + ix
    fy = g * y + w * x + iy
    jx = g - 2.0 * beta * x * x
    jy = g - 2.0 * beta * y * y
    return x + dt * exprel(dt * jx) * fx, y + dt * exprel(dt * jy) * fy


def _scan(step, carry0, key, steps, n_nodes, noise, unroll, dtype, block=100):
    """Run ``step(carry, (n_x, n_y)) -> (carry, out)`` for ``steps`` steps, drawing the noise.

    ``noise``: ``"pregen"`` draws every normal of the simulation in one call before the loop;
    ``"blocked"`` draws them ``block`` steps at a time (an outer scan over blocks, so memory stays
    small); ``"split"`` follows brainstate: the key is split once per draw, two draws per step.
    """
    if noise == "pregen":
        z = jax.random.normal(key, (steps, 2, n_nodes), dtype)
        return jax.lax.scan(lambda c, zi: step(c, (zi[0], zi[1])), carry0, z, unroll=unroll)[1]
    if noise == "blocked":
        if steps % block:
            raise ValueError(f"steps: expected a multiple of block={block}, got {steps}")

        def outer(c, b):
            z = jax.random.normal(jax.random.fold_in(key, b), (block, 2, n_nodes), dtype)
            return jax.lax.scan(lambda ci, zi: step(ci, (zi[0], zi[1])), c, z, unroll=unroll)

        out = jax.lax.scan(outer, carry0, jnp.arange(steps // block))[1]
        return out.reshape(steps, *out.shape[2:])
    if noise == "split":
        def body(c, _):
            inner, k = c
            k, s1 = jax.random.split(k)
            n1 = jax.random.normal(s1, (n_nodes,), dtype)
            k, s2 = jax.random.split(k)
            n2 = jax.random.normal(s2, (n_nodes,), dtype)
            inner, out = step(inner, (n1, n2))
            return (inner, k), out
        return jax.lax.scan(body, (carry0, key), None, length=steps, unroll=unroll)[1]
    raise ValueError(f"noise: expected 'pregen', 'blocked' or 'split', got {noise!r}")


def hopf_node_kernel(theta, key, *, steps=2000, dt=0.1, beta=1.0, tau=10.0, noise="pregen",
                     unroll=1, dtype=jnp.float32):
    """One Hopf node with OU noise on x and y: ``theta = (a, w, sigma)`` -> ``x`` trajectory ``(steps,)``."""
    theta = jnp.asarray(theta, dtype)
    a, w, sigma = theta[0], theta[1], theta[2]

    def step(c, noise_xy):
        x, y, ox, oy = c
        ox = _ou(ox, noise_xy[0], sigma, tau, dt)
        oy = _ou(oy, noise_xy[1], sigma, tau, dt)
        x, y = _hopf(x, y, ox, oy, a, w, beta, dt)
        return (x, y, ox, oy), x[0]

    zero = jnp.zeros((1,), dtype)
    return _scan(step, (zero, zero, zero, zero), key, steps, 1, noise, unroll, dtype)


def hopf_network_kernel(theta, key, *, conn, steps=2000, dt=0.1, beta=1.0, tau=10.0, noise="pregen",
                        unroll=1, dtype=jnp.float32, coupling="elementwise"):
    """Hopf network, diffusive coupling on x: ``theta = (a, w, sigma, G)`` -> ``x`` ``(steps, N)``.

    ``conn`` is the structural connectivity ``(N, N)``; its diagonal is zeroed as brainmass does.
    As in ``brainmass.Network`` with zero delays, the delayed source read at step 0 is the delay
    buffer's history, drawn from ``Uniform(0, 0.05)`` before any noise (the first use of the key);
    afterwards it is the pre-step ``x``. ``coupling="elementwise"`` forms ``C_ij (x_j - x_i)`` and
    sums, as brainmass does; ``"matmul"`` computes the same ``G (C x - rowsum(C) x)`` as a product.
    """
    conn = jnp.asarray(conn, dtype)
    n = conn.shape[0]
    conn = conn * (1.0 - jnp.eye(n, dtype=dtype))
    row = conn.sum(axis=1)
    if coupling not in ("elementwise", "matmul"):
        raise ValueError(f"coupling: expected 'elementwise' or 'matmul', got {coupling!r}")
    theta = jnp.asarray(theta, dtype)
    a, w, sigma, G = theta[0], theta[1], theta[2], theta[3]
    key, k_hist = jax.random.split(key)
    hist = jax.random.uniform(k_hist, (1, n), dtype, minval=0.0, maxval=0.05)[0]

    def step(c, noise_xy):
        x, y, ox, oy, src = c
        if coupling == "matmul":
            current = G * (conn @ src - row * x)
        else:
            current = G * ((src[None, :] - x[:, None]) * conn).sum(axis=-1)  # G * sum_j C_ij (x_j - x_i)
        ox = _ou(ox, noise_xy[0], sigma, tau, dt)
        oy = _ou(oy, noise_xy[1], sigma, tau, dt)
        x, y = _hopf(x, y, current + ox, oy, a, w, beta, dt)
        return (x, y, ox, oy, x), x

    zero = jnp.zeros((n,), dtype)
    return _scan(step, (zero, zero, zero, zero, hist), key, steps, n, noise, unroll, dtype)


def hopf_bold_kernel(theta, key, *, conn, omega, dt, n_transient, n_time, sample_every, beta=1.0,
                     noise="blocked", coupling="matmul", unroll=1, dtype=jnp.float32):
    """The whole-brain Hopf BOLD task (``simulators/hopf_bold.py``): ``theta = (G, a, sigma)`` -> ``x (n_time, N)``.

    What ``Network(HopfStep(N, a, w=omega, method="euler", noise_x/noise_y=GaussianNoise(N,
    sigma=white_noise_sigma(sigma, dt))), conn, distance=0, coupled_var="x", k=G)`` run by
    ``Simulator.run(..., transient=n_transient, sample_every=sample_every)`` computes, per step
    (read from brainmass 0.1.1: ``XY_Oscillator.update``, ``braintools.quad.ode_euler_step``,
    ``GaussianNoise.update``, ``Network.update``)::

        inp_x = G * sum_k C_jk (src_k - x_j) + s * n_x      s = sigma / sqrt(dt), n ~ N(0, 1)
        inp_y = s * n_y
        x' = x + dt * ((a - beta r) x - w y + inp_x)        r = x**2 + y**2 (pre-step state)
        y' = y + dt * ((a - beta r) y + w x + inp_y)

    so the increment from the noise is ``sigma * sqrt(dt) * n`` (Euler-Maruyama). ``src`` is
    the pre-step ``x``, except at step 0, where it is the zero-delay buffer's history drawn
    from ``Uniform(0, 0.05)`` (the first use of the key, as in :func:`hopf_network_kernel`).
    The recording keeps ``x`` after steps ``n_transient + sample_every * m + 1`` (1-based),
    ``m < n_time``: brainmass records every step and slices ``[n_transient::sample_every]``.

    ``noise="blocked"`` draws the ``(sample_every, 2, N)`` normals of one sampling interval in
    one call (its own ``fold_in`` key); ``"split"`` follows brainstate (the key split once per
    draw, ``n_x`` before ``n_y``) and so reproduces brainmass's random stream.
    ``coupling="matmul"`` computes ``G (C src - rowsum(C) x)`` as a matrix product (under
    ``vmap`` a ``(B, N) x (N, N)`` product); ``"elementwise"`` forms ``C_jk (src_k - x_j)`` and
    sums, as brainmass does. ``C``'s diagonal is zeroed, as ``Network`` does.
    """
    conn = jnp.asarray(conn, dtype)
    n = conn.shape[0]
    conn = conn * (1.0 - jnp.eye(n, dtype=dtype))
    row = conn.sum(axis=1)
    omega = jnp.broadcast_to(jnp.asarray(omega, dtype), (n,))
    if coupling not in ("elementwise", "matmul"):
        raise ValueError(f"coupling: expected 'elementwise' or 'matmul', got {coupling!r}")
    if noise not in ("blocked", "split"):
        raise ValueError(f"noise: expected 'blocked' or 'split', got {noise!r}")
    if n_transient % sample_every:
        raise ValueError(f"n_transient: expected a multiple of sample_every={sample_every}, got {n_transient}")
    theta = jnp.asarray(theta, dtype)
    G, a, sigma = theta[0], theta[1], theta[2]
    s = sigma / math.sqrt(dt)  # white_noise_sigma(sigma, dt), as the task computes it
    key, k_hist = jax.random.split(key)
    hist = jax.random.uniform(k_hist, (1, n), dtype, minval=0.0, maxval=0.05)[0]

    def step(c, z):
        x, y, src = c
        if coupling == "matmul":
            current = G * (conn @ src - row * x)
        else:
            current = G * ((src[None, :] - x[:, None]) * conn).sum(axis=-1)
        inp_x = current + s * z[0]
        inp_y = s * z[1]
        g = a - beta * (x * x + y * y)
        x, y = x + dt * (g * x - omega * y + inp_x), y + dt * (g * y + omega * x + inp_y)
        return (x, y, x), None

    def draw(k, b):
        """Normals ``(sample_every, 2, N)`` of interval ``b``, and the key to carry on."""
        if noise == "blocked":
            return k, jax.random.normal(jax.random.fold_in(k, b), (sample_every, 2, n), dtype)
        zs = []
        for _ in range(2 * sample_every):
            k, sub = jax.random.split(k)
            zs.append(jax.random.normal(sub, (n,), dtype))
        return k, jnp.stack(zs).reshape(sample_every, 2, n)

    def interval(c, b):
        inner, k = c
        k, z = draw(k, b)
        inner, _ = step(inner, z[0])
        out = inner[0]
        inner, _ = jax.lax.scan(step, inner, z[1:], unroll=unroll)
        return (inner, k), out

    zero = jnp.zeros((n,), dtype)
    n_skip = n_transient // sample_every
    carry, _ = jax.lax.scan(lambda c, b: (interval(c, b)[0], None), ((zero, zero, hist), key),
                            jnp.arange(n_skip))
    return jax.lax.scan(interval, carry, jnp.arange(n_skip, n_skip + n_time))[1]
