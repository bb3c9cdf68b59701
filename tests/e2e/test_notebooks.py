"""The statisticians' notebooks (notebooks/*.ipynb): committed without outputs, and each
runs from top to bottom with nbclient on the shared release of the generated cohort
(tests/conftest.py), given to it through the VALUEADDED_* environment variables its
parameter cell reads. The notebooks check their own drill-downs and refit with `assert`,
so a cell error fails the test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
YEAR = 2024
KERNEL = "valueadded-test"


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_are_there():
    assert {p.stem for p in _notebooks()} >= {"explore_a_release", "try_a_cva_model_variant"}


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    with_output = [i for i, cell in enumerate(cells)
                   if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert with_output == [], f"{path.name}: cells {with_output} have outputs; run bin/strip-notebooks"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, monkeypatch_module):
    """A kernel spec for this interpreter (the project's venv), whatever else is installed."""
    from ipykernel.kernelspec import write_kernel_spec

    root = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(root / "kernels" / KERNEL, overrides={"display_name": "valueadded tests", "argv": [
        sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]})
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    return KERNEL


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.slow
@pytest.mark.parametrize("name", ["explore_a_release", "try_a_cva_model_variant"])
def test_notebook_runs_on_a_generated_release(name, generated_release, kernel, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("VALUEADDED_OUTPUT", str(generated_release.output_dir))
    monkeypatch.setenv("VALUEADDED_INPUT", str(generated_release.input_dir))
    monkeypatch.setenv("VALUEADDED_YEAR", str(YEAR))
    monkeypatch.setenv("VALUEADDED_KEY_STAGE", "ks2")
    monkeypatch.setenv("VALUEADDED_DATA_STAGE", "unvalidated")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name=kernel, resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)
    errors = [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert errors == []
