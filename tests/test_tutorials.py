"""Every tutorial notebook runs top to bottom (code cells executed in order, no Jupyter needed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("*.ipynb"))


def test_tutorials_exist():
    assert NOTEBOOKS, "no tutorials found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tutorial_runs(path):
    namespace: dict = {"__name__": "__tutorial__"}
    for number, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code":
            code = compile("".join(cell["source"]), f"{path.name}[cell {number}]", "exec")
            exec(code, namespace)  # the notebook is part of this repository, not user input
