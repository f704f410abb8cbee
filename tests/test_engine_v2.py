"""Engine v2: one validated FitConfig, one FitResult, a named carry and a compiled epoch
built once per (loss, optimiser, static configuration, shapes).

The compile counts come from JAX's own backend-compilation events, so they count real
XLA compilations, whatever cache (ours or JAX's) avoided them.
"""

import contextlib

import brainmass
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

import bmsbi
from bmsbi import discovery as D
from bmsbi.engine import Carry, FitConfig, FitResult, TrainState, fit

_COMPILES: list = []


def _listen(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(kw.get("fun_name", "?"))


monitoring.register_event_duration_secs_listener(_listen)


@contextlib.contextmanager
def compiles():
    """The names of the XLA programs compiled inside the block."""
    start = len(_COMPILES)
    seen: list = []
    yield seen
    seen.extend(_COMPILES[start:])


def _mse(p, static, batch, key):
    return jnp.mean((batch[0] @ p["w"] + p["b"] - batch[1]) ** 2)


def _data(n=384, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)


def test_fit_returns_one_result_with_a_named_carry():
    result = fit({"w": jnp.zeros(3), "b": jnp.zeros(())}, _mse, _data(), key=jax.random.key(0),
                 config=FitConfig(learning_rate=5e-2, batch_size=64, max_epochs=60), progress=False)
    assert isinstance(result, FitResult) and isinstance(result.state, TrainState)
    np.testing.assert_allclose(np.asarray(result.params["w"]), [1.0, -2.0, 0.5], atol=2e-2)
    assert isinstance(result.state.carry, Carry) and result.state.epoch == result.history.epochs
    assert result.state.carry.average is None  # no ema_decay: no average kept
    # keyword settings override the config's fields
    again = fit({"w": jnp.zeros(3), "b": jnp.zeros(())}, _mse, _data(), key=jax.random.key(0),
                config=FitConfig(learning_rate=5e-2, batch_size=64, max_epochs=60), max_epochs=3,
                progress=False)
    assert again.history.epochs == 3


@pytest.mark.parametrize("field, value, needle", [
    ("learning_rate", 0.0, "learning_rate: expected a finite float > 0"),
    ("batch_size", 0, "batch_size: expected a positive int"),
    ("max_epochs", 2.5, "max_epochs: expected a positive int"),
    ("patience", 0, "patience: expected None or a positive int"),
    ("validation_fraction", 1.0, "validation_fraction: expected a float in [0, 1)"),
    ("ema_decay", 1.0, "ema_decay: expected None or a float in (0, 1)"),
    ("schedule", "linear", "schedule: expected None, one of"),
    ("plateau_factor", 1.5, "plateau_factor: expected a float in (0, 1)"),
    ("monitor", "loss", "monitor: expected 'val_loss'"),
    ("monitor_mode", "up", "monitor_mode: expected 'min' or 'max'"),
    ("min_delta", -1.0, "min_delta: expected a finite float >= 0"),
])
def test_fit_config_names_the_bad_field(field, value, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        FitConfig(**{field: value})
    with pytest.raises(ValueError, match=field):  # the same check through fit's keywords
        fit({"w": jnp.zeros(3), "b": jnp.zeros(())}, _mse, _data(), key=0, progress=False,
            **{field: value})


def test_fit_config_refuses_unknown_settings_and_round_trips():
    with pytest.raises(ValueError, match=r"config: unknown training settings \['epochs'\]"):
        FitConfig().replace(epochs=3)
    with pytest.raises(ValueError, match="config: expected a bmsbi.engine.FitConfig, got dict"):
        fit({"w": jnp.zeros(3)}, _mse, _data(), key=0, config={"max_epochs": 3})
    cfg = FitConfig(schedule="plateau", ema_decay=0.99)
    assert FitConfig(**cfg.to_dict()) == cfg


def test_a_second_fit_of_the_same_shape_compiles_nothing():
    kw = dict(config=FitConfig(learning_rate=5e-2, batch_size=32, max_epochs=4), progress=False)
    fit({"w": jnp.zeros(3), "b": jnp.zeros(())}, _mse, _data(200, 1), key=jax.random.key(0), **kw)
    with compiles() as seen:
        r = fit({"w": jnp.ones(3), "b": jnp.zeros(())}, _mse, _data(200, 2), key=jax.random.key(5), **kw)
    assert seen == [] and r.history.epochs == 4
    with compiles() as seen:  # another loss is another program
        fit({"w": jnp.zeros(3), "b": jnp.zeros(())},
            lambda p, s, b, k: jnp.mean(jnp.abs(b[0] @ p["w"] + p["b"] - b[1])), _data(200, 2),
            key=jax.random.key(5), **kw)
    assert any("epoch" in name for name in seen)


def test_a_second_npe_fit_on_a_bank_of_the_same_shape_compiles_nothing():
    prior = bmsbi.Prior.uniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"])

    def bank(seed):
        theta = np.asarray(prior.sample(jax.random.key(seed), 600))
        x = theta + 0.1 * np.random.default_rng(seed).normal(size=theta.shape)
        return bmsbi.Bank(theta, x.astype(np.float32), names=["a", "b"])

    npe = bmsbi.NPE(max_epochs=3, hidden=16, num_layers=2)
    first = npe.fit(bank(0), prior=prior, key=0, progress=False)
    with compiles() as seen:
        # a new but equal prior, other data and key: the same programs
        second = npe.fit(bank(1), prior=bmsbi.Prior.uniform([-1.0, -1.0], [1.0, 1.0], names=["a", "b"]),
                         key=1, progress=False)
    assert seen == []
    assert second.history.epochs == 3 and first.history.epochs == 3
    # the fits are trained, not copies: other data, other weights
    x_obs = jnp.array([0.3, -0.2])
    assert not np.allclose(first.sample(jax.random.key(0), x_obs, 50), second.sample(jax.random.key(0), x_obs, 50))


def test_a_discovery_fit_compiles_its_epoch_once():
    data = brainmass.datasets.load_dataset("bmsbi_discovery_fitzhugh_nagumo_noise1")
    trajs = [t[:1537] for t in data.trajectories]  # a shape no other test uses
    with compiles() as seen:
        found = D.fit(trajs, data.dt, library=data.library, key=0, n_bootstrap=0)
    assert found.info["rounds"] >= 2 and len(found.history) >= 2  # several engine fits ...
    assert sum("epoch" in name for name in seen) == 1  # ... one compiled epoch
