"""Your own task: ``simulators.register``, ``"package.module:attribute"`` references, the
``bmsbi.tasks`` entry-point group, and the "Bring your own model" page run end to end.

The page's code runs in document order in a fresh folder: the ``python title="X.py"``
block becomes the module ``X``, the other python blocks run in one namespace, and every
``bmsbi ...`` line of its bash blocks runs as ``python -m bmsbi.cli ...`` in a subprocess
that finds the module only through ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bmsbi
import simulators
from bmsbi.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "byo_model.md"

# A small module of tasks built from a ready-made one (no new model to compile).
TASK_MODULE = """
import dataclasses
import simulators

task = dataclasses.replace(simulators.get("hopf_node"), name="{name}")
holder = type("Holder", (), {{"task": task}})


def make():
    return task


def broken():
    raise RuntimeError("boom")


not_a_task = 3
"""


@pytest.fixture
def task_module(tmp_path, monkeypatch):
    """Write a module of tasks into tmp_path, importable for this test; returns its name."""
    def write(module: str, task_name: str) -> str:
        (tmp_path / f"{module}.py").write_text(TASK_MODULE.format(name=task_name))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(sys.modules, module, raising=False)
        return module

    yield write


@pytest.fixture
def registry():
    """Undo this test's registrations."""
    before = set(simulators.list_tasks())
    yield
    for name in set(simulators.list_tasks()) - before:
        try:
            simulators.unregister(name)
        except KeyError:
            pass


def _cli_env(*folders) -> dict:
    """Environment for ``python -m bmsbi.cli``: ``folders`` and this checkout's bmsbi first."""
    path = [str(f) for f in folders] + [str(Path(bmsbi.__file__).resolve().parents[1])]
    if os.environ.get("PYTHONPATH"):
        path.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "MPLBACKEND": "Agg"}


# ------------------------------------------------------------------ register / get
def test_register_get_list_and_unregister(registry):
    hopf = simulators.get("hopf_node")
    assert simulators.register(hopf, name="my_hopf") is simulators.get("my_hopf")
    mine = simulators.get("my_hopf")
    assert mine.name == mine.ref == "my_hopf" and mine.prior is hopf.prior
    assert "my_hopf" in simulators.list_tasks()
    assert simulators.register(hopf, name="my_hopf") is mine  # the same task again: allowed
    with pytest.raises(ValueError, match=r"^name: a task called 'my_hopf' already exists.*replace=True"):
        simulators.register(simulators.get("jansen_rit"), name="my_hopf")
    jr = simulators.register(simulators.get("jansen_rit"), name="my_hopf", replace=True)
    assert simulators.get("my_hopf") is jr and jr.prior.names == ("A", "B", "C", "mu")
    # shadowing a ready-made task needs replace=True; unregister brings the original back
    with pytest.raises(ValueError, match="hopf_node"):
        simulators.register(simulators.get("jansen_rit"), name="hopf_node")
    simulators.register(simulators.get("jansen_rit"), name="hopf_node", replace=True)
    assert simulators.get("hopf_node").prior.names == ("A", "B", "C", "mu")
    simulators.unregister("hopf_node")
    assert simulators.get("hopf_node") is hopf
    assert simulators.unregister("my_hopf") is jr and "my_hopf" not in simulators.list_tasks()
    with pytest.raises(KeyError, match="my_hopf"):
        simulators.unregister("my_hopf")


@pytest.mark.parametrize("task, kwargs, match", [
    ("not a task", {}, r"^task: expected a simulators.Task, got str"),
    (None, {"name": "a:b"}, r"^name: expected a task name .*got 'a:b'"),
    (None, {"name": ""}, r"^name: expected a task name"),
    (None, {"name": 3}, r"^name: expected a task name"),
])
def test_register_rejects_bad_input(task, kwargs, match, registry):
    with pytest.raises(ValueError, match=match):
        simulators.register(simulators.get("hopf_node") if task is None else task, **kwargs)


def test_get_by_reference_takes_a_task_or_a_factory(task_module):
    module = task_module("tmp_byo_tasks", "tmp_hopf")
    direct = simulators.get(f"{module}:task")
    assert isinstance(direct, simulators.Task) and direct.name == "tmp_hopf"
    assert direct.reference == direct.ref == f"{module}:task"
    assert simulators.get(f"{module}:make").reference == f"{module}:make"
    assert simulators.get(f"{module}:holder.task").prior.names == ("a", "f", "sigma")
    assert "tmp_hopf" not in simulators.list_tasks()  # a reference registers nothing
    # the reference survives with_summary and is what a bank records
    from bmsbi.summaries import Moments

    assert direct.with_summary(Moments()).ref == f"{module}:task"


@pytest.mark.parametrize("ref, match", [
    ("no_such_module_xyz:task", r"^ref: 'no_such_module_xyz:task': cannot import module 'no_such_module_xyz'"),
    ("{m}:missing", r"^ref: '{m}:missing': module '{m}' has no attribute 'missing'"),
    ("{m}:not_a_task", r"^ref: '{m}:not_a_task': expected a simulators.Task or a zero-argument callable "
                       r"returning one, got int"),
    ("{m}:broken", r"^ref: '{m}:broken': calling it \(a task factory\) failed: RuntimeError: boom"),
    ("{m}:a:b", r"^ref: expected a task name or 'package.module:attribute'"),
    ("{m}:", r"^ref: expected a task name or 'package.module:attribute'"),
])
def test_get_rejects_bad_references_naming_them(task_module, ref, match):
    m = task_module("tmp_byo_bad", "tmp_bad")
    with pytest.raises(ValueError, match=match.format(m=m)):
        simulators.get(ref.format(m=m))


def test_get_keeps_key_error_for_unknown_names_and_rejects_non_strings():
    with pytest.raises(KeyError, match="unknown task 'nope'.*package.module:attribute"):
        simulators.get("nope")
    with pytest.raises(ValueError, match="^ref: expected a task name .* got int"):
        simulators.get(3)


def test_task_validates_its_reference():
    import dataclasses

    hopf = simulators.get("hopf_node")
    assert hopf.reference is None and hopf.ref == "hopf_node"
    assert dataclasses.replace(hopf, name="renamed").ref == "renamed"
    assert dataclasses.replace(hopf, reference="pkg.mod:task").ref == "pkg.mod:task"
    for bad in ("pkg mod:task", "a:b:c", 3):
        with pytest.raises(ValueError, match="^reference: expected a task name or 'package.module:attribute'"):
            dataclasses.replace(hopf, reference=bad)


def test_task_budget_is_the_default_bank_size_and_is_validated():
    import dataclasses

    import jax

    hopf = simulators.get("hopf_node")
    assert hopf.budget == 20_000 and simulators.get("hopf_bold_gw").budget == 5000
    small = dataclasses.replace(hopf, budget=4)
    bank = small.bank(None, jax.random.key(0), progress=False)
    assert bank.theta.shape == (4, 3) and bank.x.shape[0] == 4
    assert len(small.bank(6, jax.random.key(0), progress=False)) == 6  # n given: n, not the budget
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(ValueError, match="^budget: expected a positive int, got"):
            dataclasses.replace(hopf, budget=bad)


# ------------------------------------------------------------------ entry points
def _fake_distribution(folder: Path, entries: dict[str, str]) -> None:
    """An installed-looking distribution whose entry points (group bmsbi.tasks) are ``entries``."""
    info = folder / "fake_bmsbi_tasks-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-bmsbi-tasks\nVersion: 1.0\n")
    lines = "\n".join(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[bmsbi.tasks]\n{lines}\n")


def test_entry_point_tasks_are_listed_loaded_and_broken_ones_reported(tmp_path, monkeypatch, capsys):
    import importlib

    module = "tmp_byo_ep_tasks"
    (tmp_path / f"{module}.py").write_text(TASK_MODULE.format(name="ep_hopf"))
    _fake_distribution(tmp_path, {"ep_hopf": f"{module}:task", "ep_made": f"{module}:make",
                                  "ep_missing": f"{module}:missing", "ep_boom": f"{module}:broken",
                                  "ep_nomodule": "no_such_module_xyz:task"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.invalidate_caches()

    names = simulators.list_tasks()
    assert {"ep_hopf", "ep_made", "ep_missing", "ep_boom", "ep_nomodule", "hopf_node"} <= set(names)
    assert module not in sys.modules  # listed without being loaded
    hopf = simulators.get("ep_hopf")
    assert hopf.name == hopf.ref == "ep_hopf" and simulators.get("ep_hopf") is hopf
    made = simulators.get("ep_made")  # a factory, renamed after its entry point
    assert made.name == made.ref == "ep_made" and made.prior.names == ("a", "f", "sigma")
    with pytest.raises(ValueError, match=r"^ref: task 'ep_missing' \(entry point 'tmp_byo_ep_tasks:missing' "
                                         r"of fake-bmsbi-tasks, group bmsbi.tasks\): cannot load it"):
        simulators.get("ep_missing")
    with pytest.raises(ValueError, match="RuntimeError: boom"):
        simulators.get("ep_boom")

    assert main(["tasks"]) == 0  # broken entry points do not break the listing
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "a, f, sigma" in lines["ep_hopf"] and "a, f, sigma" in lines["ep_made"]
    for broken in ("ep_missing", "ep_boom", "ep_nomodule"):
        assert "(unavailable)" in lines[broken] and "entry point" in lines[broken]
    assert "a, f, sigma" in lines["hopf_node"] and "budget 20000" in lines["hopf_node"]
    with pytest.raises(SystemExit):
        main(["tasks", "--help"])
    assert f"'{simulators.ENTRY_POINT_GROUP}'" in capsys.readouterr().out.replace("\n", " ")

    monkeypatch.undo()  # the distribution leaves sys.path: its tasks leave the listing
    assert not {"ep_hopf", "ep_made"} & set(simulators.list_tasks())


# ------------------------------------------------------------------ CLI
def test_cli_says_in_one_line_which_task_reference_cannot_be_used(task_module, tmp_path, capsys):
    # The working path (simulate -> train -> infer by reference) runs in the docs-page test.
    module = task_module("tmp_byo_cli", "tmp_cli")
    task = simulators.get(f"{module}:task")
    theta = np.asarray(task.prior.sample(__import__("jax").random.key(0), 8))
    bmsbi.Bank(theta, theta, names=task.names, meta={"task": "gone_module_xyz:task"}).save(tmp_path / "gone.npz")
    for argv, needle in [(["train", tmp_path / "gone.npz", "--out", tmp_path / "q.bmsbi"],
                          "bmsbi train: error: bank: its task 'gone_module_xyz:task': cannot import module "
                          "'gone_module_xyz'"),
                         (["train", tmp_path / "gone.npz", "--out", tmp_path / "q.bmsbi", "--task", f"{module}:nope"],
                          f"bmsbi train: error: --task '{module}:nope': module '{module}' has no attribute 'nope'"),
                         (["simulate", "gone_module_xyz:task", "-n", "4", "--out", tmp_path / "b.npz"],
                          "bmsbi simulate: error: task 'gone_module_xyz:task': cannot import module"),
                         (["demo", "--task", f"{module}:not_a_task", "--out", tmp_path / "demo"],
                          f"bmsbi demo: error: --task '{module}:not_a_task': expected a simulators.Task")]:
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(needle), err
        assert "pass --task to use another" in err[0] or argv[0] != "train" or "--task" in argv


def test_cli_imports_references_from_the_current_folder(tmp_path, monkeypatch, capsys):
    # As the installed console script runs: its sys.path holds neither '' nor the current folder.
    (tmp_path / "tmp_byo_cwd.py").write_text("not_a_task = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "tmp_byo_cwd", raising=False)
    assert main(["simulate", "tmp_byo_cwd:not_a_task", "-n", "4", "--out", "b.npz"]) == 2
    assert "expected a simulators.Task or a zero-argument callable returning one, got int" in capsys.readouterr().err
    assert sys.path[0] == str(tmp_path)


# ------------------------------------------------------------------ the docs page
def _blocks(text: str) -> list[tuple[str, str, str]]:
    """``(language, info after it, code)`` of every fenced block of a markdown page, in order."""
    return [(m.group(1), m.group(2).strip(), textwrap.dedent(m.group(3)))
            for m in re.finditer(r"^```(\w*)([^\n]*)\n(.*?)^```\s*$", text, flags=re.MULTILINE | re.DOTALL)]


def test_byo_page_is_in_the_nav_and_runs_from_task_to_bmsbi_infer(tmp_path, monkeypatch, registry):
    text = PAGE.read_text()
    assert text.startswith("# Bring your own model\n")
    assert "byo_model.md" in (ROOT / "mkdocs.yml").read_text()
    blocks = _blocks(text)
    modules = {}
    for lang, info, code in blocks:
        m = re.fullmatch(r'title="(\w+)\.py"', info)
        if lang == "python" and m:
            (tmp_path / f"{m.group(1)}.py").write_text(code)
            modules[m.group(1)] = code
    assert modules, "the page defines no module (a ```python title=\"name.py\" block)"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in modules:
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        _run_page(blocks, tmp_path)
    finally:
        for name in modules:
            sys.modules.pop(name, None)


def _run_page(blocks, tmp_path):
    """Run the page's blocks in order, then check what its commands wrote."""
    env, ran = _cli_env(tmp_path), []
    namespace: dict = {"__name__": "byo_page"}
    for lang, info, code in blocks:
        if lang == "python" and not info:
            exec(compile(code, f"{PAGE.name} block", "exec"), namespace)
        elif lang == "bash":
            for line in code.splitlines():
                argv = shlex.split(line, comments=True)
                if not argv or argv[0] != "bmsbi":
                    continue
                done = subprocess.run([sys.executable, "-m", "bmsbi.cli", *argv[1:]], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=300)
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                ran.append(argv[1])
    assert ran == ["simulate", "train", "infer"]

    task = namespace["task"]
    assert bmsbi.Bank.load(tmp_path / "wc-bank.npz").meta["task"] == "wc_lfp:task"
    posterior = bmsbi.load_posterior(tmp_path / "wc.bmsbi")
    assert posterior.training["task"] == "wc_lfp:task" and posterior.summary == task.summary
    # The numbers a user looks at: the drive P (it sets the rhythm's frequency) is found, even
    # from 300 simulations: 90 % interval around the truth, sd under 0.6 of the prior's (0.58).
    row = json.loads((tmp_path / "result.json").read_text())["recordings"][0]
    p_true, p_prior_mean, p_prior_sd = task.true_theta[1], 1.5, 2.0 / 12 ** 0.5
    assert row["P_q05"] < p_true < row["P_q95"], row
    assert abs(row["P_mean"] - p_true) < 0.5 * abs(p_prior_mean - p_true), row
    assert row["P_sd"] < 0.6 * p_prior_sd, row
    assert not row["flagged"]
