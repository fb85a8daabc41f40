"""The learners' notebook, notebooks/alexnet.ipynb: committed without outputs, and run top to bottom as Jupyter
runs it (a kernel started in the notebook's folder), every cell, failing on the first that raises."""

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import script_env

from shapes import CLASSES

NOTEBOOK = ROOT / "notebooks" / "alexnet.ipynb"


def files_under(folder: Path) -> dict[str, int]:
    """Every file below `folder` with its size: what running the notebook must leave as it was."""
    return {str(path.relative_to(folder)): path.stat().st_size for path in folder.rglob("*") if path.is_file()}


def test_the_notebook_is_committed_without_outputs() -> None:
    # Outputs would make the file megabytes of pictures, and every run a diff: the notebook is its cells alone.
    notebook = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code, "the notebook has no code cells"
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code), "clear the outputs"
    assert NOTEBOOK.stat().st_size < 40_000


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    # Imported here, not at the top: the floor lane (requirements-floor.txt, `-m "not slow"`) collects this file
    # without them. requirements.txt lists them, so where they are missing this test fails, it does not skip.
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    folder_before = files_under(NOTEBOOK.parent)
    # The kernel: "python3" is ipykernel's own, run by this interpreter (jupyter_client starts it with
    # sys.executable; the first cell prints which). Its working directory is the notebook's folder, as in
    # Jupyter. The run's folder is the notebook's temporary directory: here under tmp_path (TMPDIR), so that
    # nothing is written into the repository. The scripts' environment (one thread per pytest-xdist worker),
    # but matplotlib's backend left to ipykernel, which shows figures inline.
    # ALEXNET_NOTEBOOK_QUICK: the notebook's own smaller run (its first cell), every cell the same.
    env = {**script_env(), "TMPDIR": str(tmp_path), "ALEXNET_NOTEBOOK_QUICK": "1"}
    env.pop("MPLBACKEND")
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, if any cell raises

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    text = "".join(output.text for output in outputs if output.output_type == "stream" and output.name == "stdout")
    assert f"Python {sys.executable}," in text  # the kernel is this environment's Python
    # The network's table: conv1's 55x55 maps and pool5's 6x6 at 227 px, and the parameter count.
    assert "(1, 96, 55, 55)" in text and "(1, 256, 6, 6)" in text
    assert "total parameters: 58,322,314" in text
    assert f"Writing to {tmp_path}" in text and "Done: best validation top-1" in text
    # inference.py's lines: the sample (named after its class), then its three classes, each a class of the data.
    classified = re.search(r"/samples/00_(\w+)\.png:\n((?: +[\d.]+%  \w+\n){3})", text)
    assert classified and classified[1] in CLASSES, text
    assert {line.split()[1] for line in classified[2].splitlines()} <= set(CLASSES)
    # The checkpoint, loaded again, on 200 images it has not seen (the quick run is not yet better than chance).
    accuracy = re.search(r"top-1 on 200 new images: ([\d.]+)%", text)
    assert accuracy and 0 <= float(accuracy[1]) <= 100, text
    # The pictures: the data, curves, filters, predictions, Figure 4, the sample, the top-3 chart.
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 7
    assert files_under(NOTEBOOK.parent) == folder_before
