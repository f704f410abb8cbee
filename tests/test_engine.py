"""The training engine: recovers known coefficients, stops early, is deterministic,
runs data-parallel, and trains brainstate modules."""

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax
import pytest

from bmsbi.engine import History, TrainState, fit, merge_brainstate, split_brainstate

W_TRUE = np.array([1.5, -2.0, 0.5], np.float32)


def _regression(n=2048, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ W_TRUE + 0.3 + noise * rng.normal(size=n)).astype(np.float32)
    return x, y


def _mse(params, static, batch, key):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _zeros():
    return {"w": jnp.zeros(3), "b": jnp.zeros(())}


def test_linear_regression_recovers_coefficients():
    x, y = _regression()
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), learning_rate=3e-2,
                       batch_size=64, max_epochs=40, progress=False)
    params, hist = _r.params, _r.history
    np.testing.assert_allclose(params["w"], W_TRUE, atol=0.02)
    assert abs(float(params["b"]) - 0.3) < 0.02
    # noise variance is 0.01: the validation loss reaches it
    assert hist.best_val_loss == pytest.approx(0.01, rel=0.3)
    assert hist.epochs == len(hist.train_loss) == len(hist.val_loss)
    assert hist.num_train + hist.num_val == len(x)
    assert hist.steps_per_epoch == hist.num_train // 64
    assert hist.stop_reason in ("patience", "max_epochs")


def test_early_stopping_restores_best_params():
    # Training pulls w toward 2, validation prefers w = 1: the validation loss falls,
    # then rises; the engine must stop and hand back the parameters of its minimum.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(512, 1)).astype(np.float32)
    xv = rng.normal(size=(256, 1)).astype(np.float32)

    def loss(p, s, batch, k):
        xb, yb = batch
        return jnp.mean((xb[:, 0] * p["w"] - yb) ** 2)

    _r = fit({"w": jnp.zeros(())}, loss, (x, 2 * x[:, 0]), key=jax.random.key(0),
                       validation_data=(xv, xv[:, 0]), learning_rate=1e-2, batch_size=32,
                       max_epochs=200, patience=5, progress=False)
    params, hist = _r.params, _r.history
    assert hist.stop_reason == "patience"
    assert hist.best_epoch < hist.epochs - 1
    assert hist.epochs == hist.best_epoch + 1 + 5
    assert hist.best_val_loss == min(hist.val_loss)
    recomputed = float(loss(params, None, (xv, xv[:, 0]), None))
    assert recomputed == pytest.approx(hist.best_val_loss, rel=1e-4)
    assert hist.val_loss[-1] > hist.best_val_loss


def test_same_key_same_result_different_key_differs():
    x, y = _regression(n=1024)
    kw = dict(learning_rate=1e-2, batch_size=100, max_epochs=5, progress=False)
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(3), **kw)
    p1, h1 = _r.params, _r.history
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(3), **kw)
    p2, h2 = _r.params, _r.history
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(4), **kw)
    p3, h3 = _r.params, _r.history
    assert h1.train_loss == h2.train_loss and h1.val_loss == h2.val_loss
    np.testing.assert_array_equal(p1["w"], p2["w"])
    assert h1.train_loss != h3.train_loss


def test_no_validation_returns_last_and_schedule():
    x, y = _regression(n=512)
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), validation_fraction=0.0,
                       learning_rate=5e-2, schedule="cosine", batch_size=64, max_epochs=30,
                       progress=False)
    params, hist = _r.params, _r.history
    assert hist.val_loss == [] and hist.num_val == 0
    assert hist.best_epoch == hist.epochs - 1 == 29
    assert hist.stop_reason == "max_epochs"
    np.testing.assert_allclose(params["w"], W_TRUE, atol=0.05)


@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine", "onecycle"])
def test_named_schedules_run_a_single_step(schedule):
    # One epoch of one minibatch: every named schedule must still give a finite step.
    x, y = _regression(n=64)
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), validation_fraction=0.0,
                       learning_rate=1e-2, schedule=schedule, batch_size=64, max_epochs=1,
                       progress=False)
    params, hist = _r.params, _r.history
    assert hist.epochs == 1 and np.isfinite(hist.train_loss[0])
    assert np.all(np.asarray(params["w"]) != 0.0)  # the step moved the weights


def test_nonfinite_loss_stops_and_keeps_finite_params():
    x, y = _regression(n=512)
    x = x * 1e3  # with lr 10 and no clipping the iterates blow up
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), learning_rate=10.0,
                       clip_norm=None, batch_size=64, max_epochs=50, patience=None,
                       optimizer=__import__("optax").sgd(10.0), progress=False)
    params, hist = _r.params, _r.history
    assert hist.stop_reason == "non-finite loss"
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(params))


def test_equinox_module_nontrainable_leaves_stay_fixed():
    class Model(eqx.Module):
        w: jax.Array
        offset: paramax.NonTrainable

        def __call__(self, x):
            return x @ self.w + paramax.unwrap(self.offset)

    x, y = _regression(n=512)
    model = Model(jnp.zeros(3), paramax.NonTrainable(jnp.asarray(0.3)))

    def loss(m, s, batch, k):
        return jnp.mean((paramax.unwrap(m)(batch[0]) - batch[1]) ** 2)

    _r = fit(model, loss, (x, y), key=jax.random.key(0), learning_rate=3e-2, batch_size=64,
                 max_epochs=30, progress=False)
    out, _ = _r.params, _r.history
    assert isinstance(out, Model)
    assert float(paramax.unwrap(out.offset)) == pytest.approx(0.3)
    np.testing.assert_allclose(out.w, W_TRUE, atol=0.03)


def test_brainstate_linear_round_trip():
    import brainstate

    x, y = _regression(n=1024, noise=0.05)
    linear = brainstate.nn.Linear(3, 1)
    params, static = split_brainstate(linear)

    def loss(p, s, batch, k):
        model = merge_brainstate(p, s)
        return jnp.mean((model(batch[0])[:, 0] - batch[1]) ** 2)

    _r = fit(params, loss, (x, y), key=jax.random.key(0), static=static,
                     learning_rate=3e-2, batch_size=64, max_epochs=40, progress=False)
    best, hist = _r.params, _r.history
    trained = merge_brainstate(best, static)
    assert isinstance(trained, brainstate.nn.Linear)
    np.testing.assert_allclose(np.asarray(trained.weight.value["weight"])[:, 0], W_TRUE, atol=0.03)
    np.testing.assert_allclose(np.asarray(trained.weight.value["bias"]), [0.3], atol=0.03)
    # the original module is untouched
    assert not np.allclose(np.asarray(linear.weight.value["weight"])[:, 0], W_TRUE, atol=0.03)


def test_history_round_trips_through_json():
    x, y = _regression(n=256)
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), batch_size=32, max_epochs=3,
                  progress=False)
    _, hist = _r.params, _r.history
    d = json.loads(json.dumps(hist.to_dict()))
    again = History.from_dict(d)
    assert again.train_loss == hist.train_loss and again.stop_reason == hist.stop_reason
    assert again.best_epoch == hist.best_epoch


def test_progress_bar_runs(capsys):
    x, y = _regression(n=256)
    fit(_zeros(), _mse, (x, y), key=jax.random.key(0), batch_size=32, max_epochs=2, progress=True)
    assert "2/2" in capsys.readouterr().err


@pytest.mark.parametrize("bad, match", [
    (dict(data=(np.zeros((10, 3)), np.zeros(9))), "leading"),
    (dict(batch_size=0), "batch_size"),
    (dict(max_epochs=-1), "max_epochs"),
    (dict(validation_fraction=1.0), "validation_fraction"),
    (dict(patience=0), "patience"),
    (dict(schedule="zigzag"), "schedule"),
    (dict(loss_fn=3), "loss_fn"),
    (dict(ema_decay=1.0), "ema_decay"),
    (dict(ema_decay=0), "ema_decay"),
])
def test_bad_arguments_raise(bad, match):
    x, y = _regression(n=64)
    kw = dict(params=_zeros(), loss_fn=_mse, data=(x, y), key=jax.random.key(0), progress=False,
              max_epochs=1)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        fit(**kw)


def test_weight_average_removes_minibatch_noise():
    # Constant, large step on small noisy batches: the raw weights jitter around the
    # least-squares solution; their moving average sits much closer to it.
    x, y = _regression(n=4096, noise=1.0)
    design = np.c_[x, np.ones(len(x))]
    exact = np.linalg.lstsq(design, y, rcond=None)[0]
    err = {}
    for decay in (None, 0.99):
        _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), learning_rate=5e-2,
                      batch_size=16, max_epochs=4, validation_fraction=0.0, clip_norm=None,
                      progress=False, ema_decay=decay)
        p, hist = _r.params, _r.history
        err[decay] = np.linalg.norm(np.r_[np.asarray(p["w"]), float(p["b"])] - exact)
    assert err[0.99] < 0.3 * err[None], err
    assert err[0.99] < 0.06, err


def test_weight_average_of_a_short_run_is_not_the_initial_weights():
    # 160 steps with decay 0.999: a plain average would still be 85 % the zeros it
    # started from; the shorter early memory averages the trained weights.
    x, y = _regression()
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), learning_rate=3e-2,
               batch_size=64, max_epochs=5, validation_fraction=0.0, progress=False,
               ema_decay=0.999)
    p, _ = _r.params, _r.history
    np.testing.assert_allclose(np.asarray(p["w"]), W_TRUE, atol=0.05)


def test_resumed_run_equals_the_uninterrupted_one():
    # 4 epochs, stop, resume to 10 (schedule, weight average, validation, patience count
    # and best weights carried over) == 10 epochs in one go, with the same key.
    x, y = _regression(noise=0.5)
    common = dict(key=jax.random.key(3), learning_rate=3e-2, batch_size=64, max_epochs=10,
                  schedule="warmup_cosine", ema_decay=0.99, patience=50, progress=False)
    _r = fit(_zeros(), _mse, (x, y), **common)
    p_all, h_all = _r.params, _r.history
    stop_early = lambda epoch, logs, params: epoch == 3  # noqa: E731
    _r = fit(_zeros(), _mse, (x, y), callbacks=[stop_early],
                        **common)
    _, h_a, state = _r.params, _r.history, _r.state
    assert h_a.epochs == 4 and state.epoch == 4
    # Through a file, as Trainer checkpoints store it: a flat list of NumPy leaves.
    flat = TrainState(epoch=state.epoch, carry=state.leaves(), since_best=state.since_best,
                      best_epoch=state.best_epoch, best_val_loss=state.best_val_loss)
    _r = fit(_zeros(), _mse, (x, y), resume=flat, **common)
    p_b, h_b = _r.params, _r.history
    assert h_b.epochs == 10 and len(h_b.train_loss) == 6
    np.testing.assert_allclose(h_a.train_loss + h_b.train_loss, h_all.train_loss, rtol=1e-5)
    np.testing.assert_allclose(h_a.val_loss + h_b.val_loss, h_all.val_loss, rtol=1e-5)
    assert h_b.best_epoch == h_all.best_epoch
    for k in ("w", "b"):
        np.testing.assert_allclose(np.asarray(p_b[k]), np.asarray(p_all[k]), rtol=1e-5, atol=1e-7)


def test_resume_state_must_match_the_run():
    x, y = _regression()
    _r = fit(_zeros(), _mse, (x, y), key=jax.random.key(0), max_epochs=2,
                      progress=False)
    _, _, state = _r.params, _r.history, _r.state
    with pytest.raises(ValueError, match="resume: the state holds"):  # ema adds arrays
        fit(_zeros(), _mse, (x, y), key=jax.random.key(0), max_epochs=4, progress=False,
            ema_decay=0.9, resume=state)
    wider = {"w": jnp.zeros(4), "b": jnp.zeros(())}
    with pytest.raises(ValueError, match="resume: state array"):
        fit(wider, _mse, (np.c_[x, x[:, :1]], y), key=jax.random.key(0), max_epochs=4,
            progress=False, resume=state)
    with pytest.raises(ValueError, match="max_epochs=1"):
        fit(_zeros(), _mse, (x, y), key=jax.random.key(0), max_epochs=1, progress=False,
            resume=state)
    with pytest.raises(ValueError, match="TrainState"):
        fit(_zeros(), _mse, (x, y), key=jax.random.key(0), progress=False, resume={"epoch": 1})


_DP_SCRIPT = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np
    from bmsbi.engine import fit
    assert jax.local_device_count() == 4, jax.local_device_count()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2., .5], np.float32) + 0.1 * rng.normal(size=2000)).astype(np.float32)
    def loss(p, s, b, k):
        h = jnp.tanh(b[0] @ p["w1"]) @ p["w2"]
        return jnp.mean((h[:, 0] - b[1]) ** 2)
    p0 = {"w1": jax.random.normal(jax.random.key(1), (3, 16)) * 0.5, "w2": jnp.zeros((16, 1))}
    out = {}
    for dev in (1, 4):
        _r = fit(p0, loss, (x, y), key=jax.random.key(2), devices=dev, batch_size=128,
                   learning_rate=1e-2, max_epochs=8, progress=False)
        p, h = _r.params, _r.history
        out[dev] = {"train": h.train_loss, "val": h.val_loss, "devices": h.num_devices,
                    "w2": np.asarray(p["w2"]).ravel().tolist()}
    print("RESULT" + json.dumps(out))
""")


def test_data_parallel_four_devices_matches_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _DP_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][0]
    out = json.loads(line[len("RESULT"):])
    one, four = out["1"], out["4"]
    assert one["devices"] == 1 and four["devices"] == 4
    np.testing.assert_allclose(four["train"], one["train"], rtol=1e-4)
    np.testing.assert_allclose(four["val"], one["val"], rtol=1e-4)
    np.testing.assert_allclose(four["w2"], one["w2"], rtol=1e-3, atol=1e-5)
