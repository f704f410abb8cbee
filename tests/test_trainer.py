"""Task Trainer: HORN learns delayed match, a Wilson-Cowan network learns evidence
integration, bad minibatches and untrainable models are refused by name."""

import math

import brainmass
import brainstate
import brainunit as u
import jax
import numpy as np
import optax
import pytest

from bmsbi import engine
from bmsbi.tasks import evidence_integration_task
from bmsbi.trainer import (EarlyStopping, ModelCheckpoint, Trainer, accuracy, cross_entropy)


@pytest.fixture(scope="module", autouse=True)
def horn_dt():
    brainstate.environ.set(dt=1.0 * u.ms)  # the HORN case study's step


@pytest.fixture(scope="module")
def dmts():
    x, y = brainmass.datasets.delayed_match_task(n_samples=320, seq_len=8, n_symbols=2, seed=0)
    return (x[:256], y[:256]), (x[256:], y[256:])


def horn(seed=0, hidden=64):
    brainstate.random.seed(seed)
    return brainmass.HORNSeqNetwork(n_input=2, n_hidden=hidden, n_output=2, alpha=0.2,
                                    omega=2 * np.pi / 28)


@pytest.fixture(scope="module")
def trained_horn(dmts):
    train, test = dmts
    trainer = Trainer(horn(), cross_entropy, optax.adam(3e-2), metrics={"accuracy": accuracy})
    hist = trainer.fit(train, epochs=20, batch_size=32, validation_data=test, key=0,
                       progress=False)
    return trainer, hist


def test_horn_delayed_match_reaches_95_percent_held_out(trained_horn, dmts):
    trainer, hist = trained_horn
    _, test = dmts
    acc = hist.history["val_accuracy"]
    assert len(acc) == 20 and len(hist.history["loss"]) == 20 and len(hist.history["val_loss"]) == 20
    assert max(acc) >= 0.95
    # the best-val-loss weights are restored and evaluate/predict use them
    out = trainer.evaluate(test)
    assert out["accuracy"] >= 0.95
    assert math.isclose(out["loss"], hist.history["val_loss"][hist.best_epoch], rel_tol=1e-4)
    pred = trainer.predict(test[0])
    assert pred.shape == (64, 2)
    assert np.mean(np.argmax(np.asarray(pred), -1) == test[1]) == pytest.approx(out["accuracy"])


def test_hidden_states_batched_without_caller_help(trained_horn, dmts):
    trainer, _ = trained_horn
    # HORNStep.init_state ignores batch_size: the Trainer recorded unbatched (64,) states ...
    assert set(trainer._unbatched.values()) == {(64,)}
    # ... and any batch size works, one trial gives the same answer alone or in a batch
    x = dmts[1][0]
    assert np.allclose(trainer.predict(x[:1]), trainer.predict(x[:7])[:1], atol=1e-5)
    # the user's model carries the trained weights
    params, _ = engine.split_brainstate(trainer.model)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(trainer.params)):
        assert np.allclose(a, b)


class WCClassifier(brainstate.nn.Module):
    """Wilson-Cowan rate network (brainmass) driven by a learned input map, linear readout."""

    def __init__(self, n_input, n_units, n_output):
        super().__init__()
        self.i2e = brainstate.nn.Linear(n_input, n_units)
        self.wc = brainmass.WilsonCowanStep(n_units)
        self.readout = brainstate.nn.Linear(n_units, n_output)

    def update(self, inputs):  # (T, B, n_input) -> (B, n_output)
        rE = brainstate.transform.for_loop(lambda inp: self.wc(self.i2e(inp)), inputs)
        return self.readout(rE.mean(axis=0))


def test_wilson_cowan_learns_registered_evidence_task():
    names = [n for n, _ in brainmass.datasets.list_datasets()]
    assert "evidence_integration_task" in names
    assert brainmass.datasets.load_dataset("evidence_integration_task")[0].shape == (256, 20, 1)
    x, y = evidence_integration_task(320, seq_len=20, seed=0)
    brainstate.random.seed(1)
    trainer = Trainer(WCClassifier(1, 16, 2), cross_entropy, optax.adam(3e-2),
                      metrics=[accuracy], dt=0.1 * u.ms)
    # WilsonCowanStep honours batch_size: its states are batched by init_all_states
    assert set(trainer._unbatched) == {("wc", "rE"), ("wc", "rI")}
    hist = trainer.fit((x[:256], y[:256]), epochs=10, batch_size=32,
                       validation_data=(x[256:], y[256:]), key=0, progress=False,
                       callbacks=[EarlyStopping(monitor="val_accuracy", patience=10)])
    acc = trainer.evaluate((x[256:], y[256:]))["accuracy"]
    # 64 held-out trials: chance is 0.5 (sd 0.06); ask for well above it
    assert acc >= 0.75
    assert acc == pytest.approx(max(hist.history["val_accuracy"]), abs=1e-6)
    assert hist.engine.monitor == "val_accuracy"


def test_time_major_false_and_validation_split(dmts):
    train, _ = dmts

    def forward(model, x):  # batch-major minibatch (B, T, F): transpose for HORN ourselves
        return model(np.swapaxes(x, 0, 1) if isinstance(x, np.ndarray) else x.swapaxes(0, 1))

    trainer = Trainer(horn(hidden=8), cross_entropy, 3e-2, forward=forward, time_major=False)
    hist = trainer.fit(train, epochs=2, batch_size=32, validation_split=0.25, key=1,
                       progress=False)
    assert hist.engine.num_val == 64 and hist.engine.num_train == 192
    assert sorted(hist.history) == ["loss", "val_loss"]


def test_callbacks_stop_and_checkpoint_round_trip(dmts, tmp_path):
    train, test = dmts
    seen = []
    path = tmp_path / "w.bmsbi"
    trainer = Trainer(horn(hidden=8), cross_entropy, 3e-2, metrics={"accuracy": accuracy})
    hist = trainer.fit(train, epochs=5, batch_size=32, validation_data=test, key=2,
                       progress=False,
                       callbacks=[ModelCheckpoint(path, monitor="val_loss"),
                                  lambda e, logs: seen.append(logs) or e == 1])
    assert hist.stop_reason == "callback" and len(seen) == 2
    assert set(seen[0]) == {"loss", "val_loss", "val_accuracy"}
    fresh = Trainer(horn(seed=5, hidden=8), cross_entropy, 3e-2, metrics={"accuracy": accuracy})
    fresh._input_shape = trainer._input_shape
    fresh.load_weights(path)
    best = min(hist.history["val_loss"])
    assert fresh.evaluate(test)["loss"] == pytest.approx(best, rel=1e-4)


def test_a_killed_run_resumes_from_its_checkpoint(dmts, tmp_path):
    # A run stopped after 3 of 6 epochs (a callback standing in for a crash) whose
    # checkpoint holds the training state; a new Trainer with other initial weights reads
    # it and finishes: same losses and weights as the run that was never stopped (the
    # cosine schedule and Adam's moments carry over).
    train, test = dmts
    opt = lambda: optax.adam(optax.cosine_decay_schedule(3e-2, 6 * 8))  # noqa: E731
    common = dict(epochs=6, batch_size=32, validation_data=test, key=3, progress=False)
    whole = Trainer(horn(hidden=8), cross_entropy, opt())
    h_whole = whole.fit(train, **common)

    path = tmp_path / "state.bmsbi"
    first = Trainer(horn(hidden=8), cross_entropy, opt())
    h1 = first.fit(train, callbacks=[ModelCheckpoint(path, save_best_only=False, save_state=True),
                                     lambda e, logs: e == 2], **common)
    assert h1.stop_reason == "callback" and h1.epoch == [0, 1, 2]
    again = Trainer(horn(seed=7, hidden=8), cross_entropy, opt())
    h2 = again.fit(train, resume=path, **common)
    assert h2.epoch == [3, 4, 5]
    np.testing.assert_allclose(h1.history["val_loss"] + h2.history["val_loss"],
                               h_whole.history["val_loss"], rtol=1e-4)
    assert again.evaluate(test)["loss"] == pytest.approx(whole.evaluate(test)["loss"], rel=1e-4)
    # save_checkpoint after a fit, more epochs later: the run continues from epoch 6
    again.save_checkpoint(tmp_path / "end.bmsbi")
    more = Trainer(horn(seed=8, hidden=8), cross_entropy, opt())
    h3 = more.fit(train, **{**common, "epochs": 8}, resume=tmp_path / "end.bmsbi")
    assert h3.epoch == [6, 7]


def test_resume_needs_a_training_state(dmts, tmp_path):
    train, test = dmts
    trainer = Trainer(horn(hidden=8), cross_entropy, 3e-2)
    with pytest.raises(ValueError, match="resume: this Trainer holds no training state"):
        trainer.fit(train, epochs=2, batch_size=32, key=0, progress=False, resume=True)
    path = tmp_path / "weights_only.bmsbi"
    trainer.fit(train, epochs=1, batch_size=32, key=0, progress=False,
                callbacks=[ModelCheckpoint(path, monitor="loss")])
    fresh = Trainer(horn(hidden=8), cross_entropy, 3e-2)
    with pytest.raises(ValueError, match="no training state"):
        fresh.fit(train, epochs=2, batch_size=32, key=0, progress=False, resume=path)
    with pytest.raises(ValueError, match="resume: expected True, False or a checkpoint path"):
        fresh.fit(train, epochs=2, batch_size=32, key=0, progress=False, resume=3)


# ------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small(dmts):
    train, _ = dmts
    trainer = Trainer(horn(hidden=8), cross_entropy, 3e-2)
    trainer.fit((train[0][:64], train[1][:64]), epochs=1, batch_size=32, key=0, progress=False)
    return trainer


def test_wrong_input_rank_is_named(small, dmts):
    x = dmts[1][0]
    with pytest.raises(ValueError, match=r"inputs: expected rank 3 .*got shape \(64, 16\)"):
        small.predict(x.reshape(64, 16))
    with pytest.raises(ValueError, match=r"train_data\[0\] \(inputs\): expected rank >= 2 .*got shape \(64,\)"):
        small.fit((x[:, 0, 0], dmts[1][1]), epochs=1, batch_size=8, key=0, progress=False)


def test_wrong_time_length_is_named(small, dmts):
    x, y = dmts[1]
    longer = np.concatenate([x, x], axis=1)
    with pytest.raises(ValueError, match=r"inputs: expected 8 time steps .* got 16"):
        small.predict(longer)
    with pytest.raises(ValueError, match=r"data\[0\] \(inputs\): expected 8 time steps"):
        small.evaluate((longer, y))
    with pytest.raises(ValueError, match=r"validation_data\[0\] \(inputs\): expected 8 time steps"):
        small.fit(dmts[0], epochs=1, batch_size=32, validation_data=(longer, y), key=0,
                  progress=False)


def test_wrong_feature_count_is_named(small, dmts):
    x, y = dmts[1]
    with pytest.raises(ValueError, match=r"expected per-sample shape \(8, 2\).*got \(8, 3\)"):
        small.predict(np.concatenate([x, x[..., :1]], axis=-1))
    # a fresh fit with the wrong feature count: the model itself cannot run it
    fresh = Trainer(horn(hidden=8), cross_entropy, 3e-2)
    with pytest.raises(ValueError, match=r"inputs: the model could not run a minibatch of shape \(2, 8, 3\)"):
        fresh.fit((np.concatenate([x, x[..., :1]], -1), y), epochs=1, batch_size=8, key=0,
                  progress=False)


def test_wrong_target_length_is_named(small, dmts):
    x, y = dmts[1]
    with pytest.raises(ValueError, match=r"data\[1\] \(targets\): expected 64 targets .*got shape \(63,\)"):
        small.evaluate((x, y[:-1]))
    with pytest.raises(ValueError, match=r"train_data\[1\] \(targets\): expected 64 targets"):
        small.fit((x, y[:-1]), epochs=1, batch_size=8, key=0, progress=False)


def test_model_without_trainables_is_refused():
    class Frozen(brainstate.nn.Module):
        def __init__(self):
            super().__init__()
            self.wc = brainmass.WilsonCowanStep(4)

        def update(self, x):
            return brainstate.transform.for_loop(self.wc, x)[-1]

    with pytest.raises(ValueError, match=r"model: expected at least one trainable parameter.*Frozen"):
        Trainer(Frozen(), cross_entropy, 1e-3)


def test_bad_arguments_are_named(dmts):
    with pytest.raises(ValueError, match="optimizer"):
        Trainer(horn(hidden=8), cross_entropy, "adam")
    with pytest.raises(ValueError, match="loss"):
        Trainer(horn(hidden=8), None, 1e-3)
    trainer = Trainer(horn(hidden=8), cross_entropy, 1e-3, metrics={"accuracy": accuracy})
    with pytest.raises(ValueError, match="EarlyStopping.monitor"):
        trainer.fit(dmts[0], epochs=1, batch_size=32, validation_split=0.25, key=0,
                    progress=False, callbacks=[EarlyStopping(monitor="val_f1")])
