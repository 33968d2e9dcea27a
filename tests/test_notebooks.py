"""The notebooks run clean, each in under two minutes, building their own phantom store; and they are
committed without outputs."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 120
NOTEBOOK_BUDGET_S = 120
BARE_PYTHON = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
OWN_KERNEL = "embedstore-venv"


def kernel_for_this_python() -> str:
    """A kernel that runs this interpreter, so the notebooks import this checkout's embedstore.

    jupyter_client starts a kernelspec whose argv[0] is a bare 'python' with sys.executable (the
    spec ipykernel installs into a venv); a spec pointing at another interpreter (say a user-level
    python3) would not see this venv, so then one is installed into sys.prefix under its own name.
    """
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    for name in ("python3", OWN_KERNEL):
        try:
            argv0 = manager.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        if argv0 in BARE_PYTHON or Path(argv0).resolve() == Path(sys.executable).resolve():
            return name
    install(kernel_name=OWN_KERNEL, prefix=sys.prefix)
    return OWN_KERNEL


@pytest.fixture(scope="module")
def kernel_name() -> str:
    return kernel_for_this_python()


@pytest.mark.parametrize("name", ["clustering", "retrieval"])
def test_notebook_runs_clean_and_fast(name, kernel_name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.delenv("EMBEDSTORE_NOTEBOOK_STORE", raising=False)  # exercise the self-built phantom store
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the notebook's tempfile.mkdtemp puts it
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    elapsed = time.perf_counter() - start
    assert elapsed < NOTEBOOK_BUDGET_S, f"{name}.ipynb took {elapsed:.0f} s"
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("name", ["clustering", "retrieval"])
def test_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
