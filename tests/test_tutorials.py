"""The tutorial notebooks: each runs top to bottom in a real Jupyter kernel, in quick mode.

Every notebook in tutorials/ is executed with nbclient (a python3 kernel started in tutorials/, with
MINIBNN_QUICK=1 in its environment); any error, including a failed ``assert`` in a cell, fails the
test. The stored notebooks are also checked as a reader sees them on a code host: they match their
sources in tutorials/src/ (python tutorials/build.py rebuilds them), hold their outputs with at least
one PNG figure, check their ideas with ``assert``, end with what to try next, and stay small.
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 300      # seconds per cell in quick mode (each whole notebook takes well under a minute)
MAX_BYTES = 300_000     # a stored notebook, outputs included
MAX_PNG_BYTES = 100_000


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _jupyter_or_skip():
    """nbclient, nbformat and ipykernel (the test extra), or skip saying which is missing."""
    missing = [name for name in ("nbclient", "nbformat", "ipykernel") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"the tutorials run in a Jupyter kernel: {', '.join(missing)} not installed "
                    "(pip install -e \".[test]\")")
    import nbclient
    import nbformat

    return nbclient, nbformat


def _build_module():
    spec = importlib.util.spec_from_file_location("tutorials_build", TUTORIALS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_series_is_complete():
    names = [p.name for p in NOTEBOOKS]
    assert [n[:2] for n in names] == [f"{i:02d}" for i in range(1, 8)], names
    sources = sorted(p.stem for p in (TUTORIALS / "src").glob("[0-9][0-9]_*.py"))
    assert sources == [p.stem for p in NOTEBOOKS]


def test_notebooks_match_their_sources(capsys):
    _jupyter_or_skip()
    code = _build_module().check()
    assert code == 0, capsys.readouterr().out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebook_reads_well(path):
    nb = _load(path)
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    markdown = [_text(c) for c in cells if c["cell_type"] == "markdown"]
    assert markdown and "you will learn" in markdown[0].lower(), "the first cell says what the reader will learn"
    assert "stored outputs:" in markdown[0].lower(), "the first cell says in which mode the outputs were made"
    assert "MINIBNN_QUICK" in _text(code[0]), "the first code cell reads MINIBNN_QUICK"
    assert sum("assert " in _text(c) for c in code) >= 3, "ideas are checked with assert"
    assert any("try next" in m.lower() for m in markdown[-2:]), "it ends with what to try next"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert all(c.get("execution_count") for c in code), "stored with every code cell executed"
    assert not [o for o in outputs if o.get("output_type") == "error"], "an error is stored"
    pngs = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert pngs, "at least one figure"
    assert all(len(p) * 3 // 4 < MAX_PNG_BYTES for p in pngs), "figures stay small PNGs"
    assert not [o for o in outputs if set(o.get("data", {})) - {"image/png", "text/plain"}], "only PNG / text"
    assert path.stat().st_size < MAX_BYTES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_tutorial_runs_in_quick_mode(path, monkeypatch):
    nbclient, nbformat = _jupyter_or_skip()
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:  # run from a clean slate, not on top of the stored outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    monkeypatch.setenv("MINIBNN_QUICK", "1")  # the kernel inherits this process's environment
    monkeypatch.delenv("MINIBNN_BACKEND", raising=False)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(TUTORIALS)}}).execute()
    seconds = time.perf_counter() - start
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "quick mode" in printed, "the notebook did not pick up MINIBNN_QUICK=1"
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert pngs, "no figure was drawn"
    print(f"{path.name}: {seconds:.1f} s in quick mode")
