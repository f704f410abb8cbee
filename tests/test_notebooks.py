"""Every notebook in ``notebooks/`` executes without an error in fast mode (``BMSBI_FAST=1``).

Each notebook is run on a copy (the committed outputs are left untouched) with nbclient,
in a fresh kernel whose working directory is ``notebooks/``. Fast mode shrinks the
training budgets so a notebook runs in well under a minute on a CPU.
"""

from __future__ import annotations

import pathlib

import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_in_fast_mode(path, monkeypatch):
    nbformat = pytest.importorskip(
        "nbformat", reason="nbformat is not installed (pip install -e '.[notebooks]')")
    nbclient = pytest.importorskip(
        "nbclient", reason="nbclient is not installed (pip install -e '.[notebooks]')")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install -e '.[notebooks]')")

    monkeypatch.setenv("BMSBI_FAST", "1")
    # "python3" is ipykernel's native kernel: this interpreter, hence this venv.
    nb = nbformat.read(path, as_version=4)  # in memory: the file on disk is not rewritten
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    try:
        client.execute()  # the kernel inherits BMSBI_FAST=1 from this process
    except nbclient.exceptions.CellExecutionError as err:  # pragma: no cover - failure path
        pytest.fail(f"{path.name}: a cell raised in fast mode:\n{err}")

    errors = [(i, out.get("ename"), out.get("evalue"))
              for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, f"{path.name}: cells with errors (index, name, value): {errors}"
    unexecuted = [i for i, cell in enumerate(nb.cells)
                  if cell.cell_type == "code" and cell.source.strip() and cell.execution_count is None]
    assert not unexecuted, f"{path.name}: code cells that did not run: {unexecuted}"
