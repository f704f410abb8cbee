"""Issue 16, cold start: JAX's persistent compilation cache behind ``bmsbi.enable_compilation_cache``.

The helper's rules (the environment switch, a folder the user already set in
``jax.config`` is kept) are checked in-process without compiling anything; one test runs
``bmsbi infer`` twice in fresh processes on one temporary cache folder. No timings.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

import bmsbi
import simulators
from bmsbi.cache import ENV_VAR, default_cache_dir

_SETTINGS = ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
             "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def jax_settings(monkeypatch):
    """The four cache settings of jax.config, restored afterwards; no BMSBI_COMPILATION_CACHE."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    saved = {name: getattr(jax.config, name) for name in _SETTINGS}
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def test_env_path_turns_the_cache_on_with_bmsbi_thresholds(jax_settings, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "c"))
    assert bmsbi.enable_compilation_cache() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()
    assert jax.config.jax_compilation_cache_dir == str((tmp_path / "c").resolve())
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
    assert bmsbi.enable_compilation_cache() == tmp_path / "c"  # twice: the same


@pytest.mark.parametrize("value", ["0", "off", "False", " no "])
def test_env_switch_turns_it_off(jax_settings, monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    assert bmsbi.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0


def test_default_folder_follows_xdg_cache_home(jax_settings, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "bmsbi" / "jax"
    monkeypatch.setenv(ENV_VAR, "1")
    assert bmsbi.enable_compilation_cache() == tmp_path / "bmsbi" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "bmsbi" / "jax"


def test_a_folder_the_user_set_is_kept(jax_settings, monkeypatch, tmp_path):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.5)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "other"))
    for path in (None, tmp_path / "explicit"):
        assert bmsbi.enable_compilation_cache(path) == tmp_path / "mine"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.5
    assert not (tmp_path / "other").exists() and not (tmp_path / "explicit").exists()


def test_a_cache_the_user_switched_off_stays_off(jax_settings, tmp_path):
    jax.config.update("jax_enable_compilation_cache", False)
    assert bmsbi.enable_compilation_cache(tmp_path / "c") is None
    assert jax.config.jax_compilation_cache_dir is None


def test_explicit_path_wins_over_the_env_switch_and_bad_paths_name_the_argument(jax_settings, monkeypatch,
                                                                                  tmp_path):
    monkeypatch.setenv(ENV_VAR, "0")
    assert bmsbi.enable_compilation_cache(str(tmp_path / "c")) == tmp_path / "c"
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", 3, ""):
        with pytest.raises(ValueError, match=r"^path: "):
            bmsbi.enable_compilation_cache(bad)


def test_a_default_folder_that_cannot_be_made_means_no_cache(jax_settings, monkeypatch, tmp_path):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "file" / "sub"))
    assert bmsbi.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_import_bmsbi_loads_no_brainmass_and_still_offers_the_registering_modules():
    code = ("import sys, bmsbi; assert 'brainmass' not in sys.modules, 'brainmass imported'; "
            "import brainmass; bmsbi.tasks; from bmsbi import discovery; "
            "names = {n for n, _ in brainmass.datasets.list_datasets()}; "
            "assert 'evidence_integration_task' in names and any(n.startswith('bmsbi_discovery') for n in names)")
    root = Path(bmsbi.__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(root)), cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_two_infer_runs_share_one_cache_folder(tmp_path):
    task = simulators.get("hopf_node")
    bank = task.bank(300, jax.random.key(0), progress=False)
    post = bmsbi.NPE(hidden=8, num_layers=1, max_epochs=2).fit(bank, prior=task.prior, key=jax.random.key(1),
                                                               progress=False)
    post.save(tmp_path / "post.bmsbi")
    np.save(tmp_path / "rec.npy", np.asarray(task.observe(task.true_theta, jax.random.key(2))))
    cache = tmp_path / "cache"
    root = Path(bmsbi.__file__).resolve().parent.parent  # the bmsbi under test, also for `-m` (cwd first)
    env = dict(os.environ, PYTHONPATH=str(root), **{ENV_VAR: str(cache)})
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "bmsbi.cli", "infer", str(tmp_path / "post.bmsbi"), str(tmp_path / "rec.npy"),
           "--num-samples", "50"]
    runs, entries, exported = [], [], []
    for _ in range(2):
        done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        runs.append(done.stdout)
        entries.append(sorted(p.name for p in cache.iterdir()))
        exported.append(sorted(p.name for p in (cache / "exported").iterdir()))
    assert entries[0], "the first run wrote no cache entries"
    assert entries[1] == entries[0], "the second run compiled programs the first had cached"
    assert len(exported[0]) == 1 and exported[0][0].startswith("sampler-"), exported[0]
    assert exported[1] == exported[0], "the second run exported the sampler again instead of reading it"
    assert runs[1] == runs[0] and "rec.npy" in runs[0]
    off = subprocess.run(cmd, env=dict(env, **{ENV_VAR: "0"}), cwd=root, capture_output=True, text=True,
                         timeout=600)
    assert off.returncode == 0, off.stderr
    assert off.stdout == runs[0], "the exported sampler's table differs from the plain jit's"


def test_exported_sampler_gives_the_jit_draws_and_is_keyed_by_what_its_trace_reads(jax_settings, tmp_path):
    from bmsbi import cache as bcache
    from bmsbi.xtransform import XTransform

    task = simulators.get("hopf_node")
    bank = task.bank(200, jax.random.key(0), progress=False)
    post = bmsbi.NPE(hidden=8, num_layers=1, max_epochs=2).fit(bank, prior=task.prior, key=jax.random.key(1),
                                                               progress=False)
    x = np.asarray(bank.x[:3])
    plain = np.asarray(post.sample(jax.random.key(5), x, 64))  # no bmsbi cache folder yet: plain jit
    assert bmsbi.enable_compilation_cache(tmp_path / "c") == tmp_path / "c"
    folder = tmp_path / "c" / "exported"
    first = np.asarray(post.sample(jax.random.key(5), x, 64))
    files = sorted(folder.iterdir())
    assert len(files) == 1 and np.array_equal(first, plain)
    bcache._exported.clear()  # as a new process: the program is read from its file
    again = bmsbi.load_posterior(_saved(post, tmp_path))
    assert np.array_equal(np.asarray(again.sample(jax.random.key(5), x, 64)), plain)
    assert sorted(folder.iterdir()) == files, "a loaded copy of the same posterior exported again"
    post.sample(jax.random.key(5), x, 32)  # another num_samples: another program
    post.sample(jax.random.key(5), x[:1], 64)  # another batch shape: another program
    assert len(list(folder.iterdir())) == 3
    # the observation transform is read by the trace: a new one must not reuse the old program
    size = int(np.prod(post.x_shape))
    post.x_transform = XTransform((True,) + (False,) * (size - 1), post.x_shape, "mask")
    logged = np.asarray(post.sample(jax.random.key(5), np.abs(x) + 1.0, 64))
    assert len(list(folder.iterdir())) == 4
    bcache._exported.clear()
    post_jit = np.asarray(post._compiled("sample")(post._params(), jax.random.key(5),
                                                   jax.numpy.asarray(np.abs(x) + 1.0), 64))
    assert np.array_equal(logged, post_jit)
    # a damaged file is exported again, not trusted
    for f in folder.iterdir():
        f.write_bytes(b"not a program")
    bcache._exported.clear()
    assert np.array_equal(np.asarray(post.sample(jax.random.key(5), np.abs(x) + 1.0, 64)), post_jit)


def _saved(post, folder):
    path = folder / "p.bmsbi"
    post.save(path)
    return path
