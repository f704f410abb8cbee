"""Trainer.fit vs the hand-written HORN training loop of brainmass's HORN case study.

Same data (``delayed_match_task(n_samples=320, seq_len=8, n_symbols=2, seed=0)``, first 256
trials train, last 64 held out), same network (``HORNSeqNetwork``, 64 hidden units,
alpha 0.2, omega 2*pi/28, dt 1 ms), same initial weights (one seed), Adam 3e-2, batch 32,
20 epochs. Reported: wall time (compilation included) and held-out accuracy per epoch.

The baseline follows the brainmass case study's recipe: ``braintools.optim.Adam`` over
``net.states(ParamState)``, a ``brainstate.transform.jit`` step around
``brainstate.transform.grad``, hidden states broadcast to the batch by hand, one Python
iteration per minibatch and a jitted held-out evaluation per epoch.

Run: ``python benchmarks/trainer_vs_handloop.py [--repeats 1]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _data():
    import brainmass

    x, y = brainmass.datasets.delayed_match_task(n_samples=320, seq_len=8, n_symbols=2, seed=0)
    return x.astype(np.float32), y.astype(np.int32)


def _net(seed):
    import brainmass
    import brainstate

    brainstate.random.seed(seed)
    return brainmass.HORNSeqNetwork(n_input=2, n_hidden=64, n_output=2, alpha=0.2,
                                    omega=2 * np.pi / 28)


def hand_loop(seed=0, epochs=20, batch_size=32, lr=3e-2):
    """The case-study loop: one jitted brainstate step per minibatch, hand-broadcast state."""
    import braintools
    import brainstate
    import jax
    import jax.numpy as jnp

    start = time.perf_counter()
    x, y = _data()
    x_tr, y_tr, x_te, y_te = (jnp.asarray(a) for a in (x[:256], y[:256], x[256:], y[256:]))
    net = _net(seed)
    brainstate.nn.init_all_states(net)
    params = net.states(brainstate.ParamState)
    opt = braintools.optim.Adam(lr=lr)
    opt.register_trainable_weights(params)

    def batched_logits(inputs):
        # HORNStep.init_state ignores batch_size: give x, y the batch axis by hand.
        for layer in net.layers:
            zeros = jnp.zeros((inputs.shape[0],) + tuple(layer.horn.in_size))
            layer.horn.x.value = zeros
            layer.horn.y.value = zeros
        return net(jnp.swapaxes(inputs, 0, 1))

    def ce_acc(inputs, labels):
        logits = batched_logits(inputs)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ce = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
        return ce, jnp.mean(jnp.argmax(logits, -1) == labels)

    @brainstate.transform.jit
    def step(inputs, labels):
        grads, loss, acc = brainstate.transform.grad(
            lambda: ce_acc(inputs, labels), params, has_aux=True, return_value=True)()
        opt.step(grads)
        return loss

    held_out = brainstate.transform.jit(ce_acc)
    accs = []
    n = x_tr.shape[0]
    for epoch in range(epochs):
        order = np.random.RandomState(epoch).permutation(n)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            step(x_tr[idx], y_tr[idx])
        accs.append(float(held_out(x_te, y_te)[1]))
    return {"wall_s": time.perf_counter() - start, "val_accuracy": accs}


def trainer_fit(seed=0, epochs=20, batch_size=32, lr=3e-2):
    """The same training through ``bmsbi.trainer.Trainer.fit`` (the bmsbi engine)."""
    import optax

    from bmsbi.trainer import Trainer, accuracy, cross_entropy

    start = time.perf_counter()
    x, y = _data()
    trainer = Trainer(_net(seed), cross_entropy, optax.adam(lr), metrics={"accuracy": accuracy})
    hist = trainer.fit((x[:256], y[:256]), epochs=epochs, batch_size=batch_size,
                       validation_data=(x[256:], y[256:]), key=seed, progress=False)
    return {"wall_s": time.perf_counter() - start, "val_accuracy": hist.history["val_accuracy"],
            "final_val_accuracy": trainer.evaluate((x[256:], y[256:]))["accuracy"]}


def main():
    import brainstate
    import brainunit as u

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    brainstate.environ.set(dt=1.0 * u.ms)
    rows = []
    for r in range(args.repeats):
        for name, fn in (("hand loop", hand_loop), ("Trainer.fit", trainer_fit)):
            out = fn(seed=args.seed + r)
            acc = out["val_accuracy"]
            first95 = next((i + 1 for i, a in enumerate(acc) if a >= 0.95), None)
            rows.append({"method": name, "seed": args.seed + r, "wall_s": round(out["wall_s"], 2),
                         "best_val_acc": max(acc), "last_val_acc": acc[-1],
                         "first_epoch_ge_95": first95})
            print(json.dumps(rows[-1]), flush=True)
    for name in ("hand loop", "Trainer.fit"):
        w = [r["wall_s"] for r in rows if r["method"] == name]
        print(f"{name:12s} median wall {np.median(w):.2f} s over {len(w)} run(s)")


if __name__ == "__main__":
    main()
