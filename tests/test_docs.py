"""The documentation site stays complete: every public name and notebook is in it.

Cheap static checks on ``mkdocs.yml`` and ``docs/`` (the strict build itself runs in
CI: ``mkdocs build --strict``). Skipped when the ``docs`` extra is not installed.
"""

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"


def _nav_files(node) -> list[str]:
    """Every file path named anywhere in the ``nav`` tree."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [f for item in node for f in _nav_files(item)]
    if isinstance(node, dict):
        return [f for value in node.values() for f in _nav_files(value)]
    return []


@pytest.fixture(scope="module")
def nav() -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    return _nav_files(config["nav"])


def _directives() -> set[str]:
    """Identifiers of every ``::: identifier`` block in the API reference pages."""
    found = set()
    for page in API.glob("*.md"):
        found |= set(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.MULTILINE))
    return found


def test_every_public_bmsbi_name_is_in_the_api_reference():
    import bmsbi

    documented = {ident.split(".")[1] for ident in _directives()
                  if ident.startswith("bmsbi.")}
    public = {name for name in bmsbi.__all__ if not name.startswith("__")}
    missing = sorted(public - documented)
    assert not missing, f"add a '::: bmsbi.NAME' block to a page in docs/api/ for: {missing}"


def test_every_simulators_name_is_in_the_api_reference():
    import simulators

    text = (API / "simulators.md").read_text()
    missing = [name for name in simulators.__all__ if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert not missing, f"docs/api/simulators.md does not mention: {missing}"


def test_every_notebook_is_in_the_nav(nav):
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks, "no notebooks found"
    missing = [name for name in notebooks if f"notebooks/{name}" not in nav]
    assert not missing, f"add these notebooks to the Notebooks section of mkdocs.yml's nav: {missing}"


def test_nav_entries_exist_and_every_api_page_is_listed(nav):
    absent = [f for f in nav if not (DOCS / f).is_file()]
    assert not absent, f"nav entries without a file under docs/: {absent}"
    unlisted = sorted(f"api/{p.name}" for p in API.glob("*.md") if f"api/{p.name}" not in nav)
    assert not unlisted, f"API pages missing from mkdocs.yml's nav: {unlisted}"
    assert (DOCS / "notebooks").resolve() == (ROOT / "notebooks").resolve()


def test_cli_page_lists_every_verb():
    from bmsbi.cli import build_parser

    spec = importlib.util.spec_from_file_location("cli_help_hook", DOCS / "_hooks" / "cli_help.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    assert hook.MARKER in (DOCS / "cli.md").read_text()
    rendered = hook.render_cli_help()
    verbs = hook._verbs(build_parser())
    assert {"demo", "simulate", "tasks"} <= set(verbs)
    for verb in verbs:
        assert f"### `bmsbi {verb}`" in rendered
        assert f"usage: bmsbi {verb}" in rendered
