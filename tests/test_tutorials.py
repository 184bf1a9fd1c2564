"""The tutorial notebooks run from top to bottom, and are committed without outputs.

Each notebook is executed with nbclient in a kernel started by the interpreter that runs the tests
(whatever kernelspecs are installed elsewhere), with the tutorials folder as working directory and
the Agg matplotlib backend. A failing cell fails the test with the cell's source and traceback.
The notebook on the COSI team's files gets their directory through ``COSI_FIXTURES`` (from the
``fixtures_dir`` fixture, which fails under CI when they are missing).
"""
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXPECTED = {
    "01_511keV_imaging_scatt.ipynb",
    "02_extended_source_3ml_fit.ipynb",
    "03_point_source_spectral_fit.ipynb",
    "04_cosi_team_files.ipynb",
    "05_source_detection.ipynb",
    "06_lira_error_maps.ipynb",
}
NEEDS_FIXTURES = {"04_cosi_team_files.ipynb"}
# generous per cell: a slow CI machine; the notebooks take a few minutes in all
CELL_TIMEOUT_S = 600
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _ThisInterpreter(KernelSpecManager):
    """Every kernel name maps to an IPython kernel run by the interpreter running the tests."""

    def get_kernel_spec(self, kernel_name):
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                          display_name=f"Python ({sys.executable})", language="python", resource_dir="")


def _files(folder):
    return {p.relative_to(folder) for p in folder.rglob("*")
            if "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts}


def test_every_tutorial_is_there():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}, sorted(p.name for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_valid_and_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: cell {i} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_tutorial_runs(path, request, monkeypatch):
    if path.name in NEEDS_FIXTURES:
        monkeypatch.setenv("COSI_FIXTURES", str(request.getfixturevalue("fixtures_dir")))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    before = _files(TUTORIALS)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisInterpreter())
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(TUTORIALS)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{ANSI.sub('', str(exc))}", pytrace=False)
    written = _files(TUTORIALS) - before
    assert not written, f"{path.name} wrote into the repository: {sorted(map(str, written))}"
