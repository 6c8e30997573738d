"""notebooks/kernel_equivalence.ipynb runs clean: every cell executes, every assert in it holds."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "kernel_equivalence.ipynb"


def test_kernel_equivalence_notebook_runs_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Raises CellExecutionError (naming the cell) on the first failing cell.
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code_cells)
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
