"""The quickstart notebook runs top to bottom and shows what it claims (annealed beats plain Langevin)."""

from __future__ import annotations

import ast
import os
import re

import pytest

NOTEBOOK = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks", "quickstart.ipynb"
)


@pytest.mark.slow
def test_quickstart_notebook_executes_and_recovers_mode_weights():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}},
    )
    client.execute()
    text = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream"
    )
    cosine = float(re.search(r"median cosine similarity .*: ([0-9.]+)", text).group(1))
    weights = ast.literal_eval(re.search(r"\{'plain'.*\}", text).group(0))
    assert cosine > 0.9  # learned score points where the true one does
    assert abs(weights["annealed"] - 0.8) <= 0.05  # annealed Langevin recovers the mixture weights
    assert abs(weights["plain"] - 0.8) > 0.15  # plain Langevin does not (NCSN Fig. 3)
    sde_weights = ast.literal_eval(re.search(r"SDE samplers: (\{.*\})", text).group(1))
    for name, weight in sde_weights.items():  # annealed Langevin, PC and the ODE recover them too
        assert abs(weight - 0.8) <= 0.05, (name, weight)
