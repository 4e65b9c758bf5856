"""Build the tutorial notebooks from their readable sources and store them with their outputs.

Each tutorial is written as a Python file in ``tutorials/src/`` with ``# %%`` cell markers
(``# %% [markdown]`` starts a Markdown cell whose lines are comments). This script turns each
into ``tutorials/<name>.ipynb``, executes it top to bottom in a real Jupyter kernel (nbclient)
and saves it with its outputs, so the notebooks read well on a code host.

    python tutorials/build.py                 # all notebooks, full mode (a few minutes each)
    python tutorials/build.py --quick 03 05   # only 03_* and 05_*, quick mode (MINIBNN_QUICK=1)
    python tutorials/build.py --no-execute    # cells only, no outputs (fast; for editing)
    python tutorials/build.py --check         # exit 1 when a notebook differs from its source

The first Markdown cell of every stored notebook ends with a line saying in which mode and on
what machine its outputs were made. The tests (tests/test_tutorials.py) run every notebook again
in quick mode and check that the stored notebooks match their sources.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import platform
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
STAMP = "> **Stored outputs:**"   # the line the build appends to the first Markdown cell
MAX_BYTES = 300_000               # a stored notebook must stay well below this
CELL_TIMEOUT = 900                # seconds per cell when building (full mode trains for minutes)
_MARKER = re.compile(r"^# %%(?P<kind>.*)$")


def sources() -> list[Path]:
    """The tutorial sources, in order (01_..., 02_...)."""
    return sorted(SOURCES.glob("[0-9][0-9]_*.py"))


def notebook_path(source: Path) -> Path:
    return HERE / f"{source.stem}.ipynb"


def parse(text: str) -> list[tuple[str, str]]:
    """(cell type, source) pairs of a percent-format file ('code' or 'markdown')."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _MARKER.match(line)
        if match:
            kind = "markdown" if "[markdown]" in match["kind"] else "code"
            cells.append((kind, []))
        elif cells:
            kind, lines = cells[-1]
            if kind == "markdown":
                if line.strip() and not line.startswith("#"):
                    raise ValueError(f"Markdown cell line without '#': {line!r}")
                line = line[2:] if line.startswith("# ") else line[1:]
            lines.append(line)
        elif line.strip() and not line.startswith('"""') and not line.startswith("#"):
            raise ValueError(f"code before the first '# %%' marker: {line!r}")
    out = []
    for kind, lines in cells:
        body = "\n".join(lines).strip("\n")
        if body.strip():
            out.append((kind, body))
    return out


def new_notebook(source: Path):
    """An unexecuted notebook of ``source``'s cells."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    for kind, body in parse(source.read_text(encoding="utf-8")):
        nb.cells.append(nbformat.v4.new_markdown_cell(body) if kind == "markdown" else nbformat.v4.new_code_cell(body))
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, cell in enumerate(nb.cells):  # stable ids: the stored notebooks do not change when rebuilt
        cell["id"] = f"{source.stem[:2]}-{i:03d}"
    return nb


def cell_sources(nb) -> list[tuple[str, str]]:
    """(cell type, source) of every cell, without the build's stamp line."""
    out = []
    for cell in nb.cells:
        text = cell.source
        if cell.cell_type == "markdown":
            text = "\n".join(l for l in text.split("\n") if not l.startswith(STAMP)).rstrip("\n")
        out.append((cell.cell_type, text))
    return out


def execute(nb, quick: bool, timeout: int = CELL_TIMEOUT) -> float:
    """Run ``nb`` in place in a python3 kernel started in tutorials/; returns the seconds it took."""
    from nbclient import NotebookClient

    previous = os.environ.get("MINIBNN_QUICK")
    os.environ["MINIBNN_QUICK"] = "1" if quick else "0"  # the kernel inherits this environment
    try:
        start = time.perf_counter()
        NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(HERE)}}).execute()
        return time.perf_counter() - start
    finally:
        if previous is None:
            os.environ.pop("MINIBNN_QUICK", None)
        else:
            os.environ["MINIBNN_QUICK"] = previous


def machine() -> str:
    import minibnn

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cores} CPU cores ({platform.machine()}), Python {platform.python_version()}, "
            f"backend `{minibnn.backend.current()}`")


def stamp(nb, quick: bool, seconds: float) -> None:
    """Append the stored-outputs line to the first Markdown cell."""
    mode = "quick mode (`MINIBNN_QUICK=1`: less data, fewer epochs)" if quick else "full mode"
    line = (f"{STAMP} executed in {mode} in {seconds:.0f} s on {machine()}, {time.strftime('%Y-%m-%d')}. "
            f"Set `MINIBNN_QUICK=1` for the quick mode (under a minute) the tests run.")
    first = next(c for c in nb.cells if c.cell_type == "markdown")
    first.source = first.source.rstrip("\n") + "\n\n" + line


def shrink_images(nb) -> None:
    """Re-encode every PNG output with a 256-colour palette (about 3x smaller, the same to the eye)."""
    try:
        from PIL import Image
    except ImportError:  # Pillow is optional: the PNGs stay as matplotlib wrote them
        return
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "image/png" not in data:
                continue
            raw = base64.b64decode(data["image/png"])
            image = Image.open(io.BytesIO(raw)).convert("RGB")
            buffer = io.BytesIO()
            image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
            if buffer.tell() < len(raw):
                data["image/png"] = base64.b64encode(buffer.getvalue()).decode("ascii")


def build(source: Path, run: bool, quick: bool) -> Path:
    import nbformat

    nb = new_notebook(source)
    if run:
        seconds = execute(nb, quick)
        stamp(nb, quick, seconds)
        shrink_images(nb)
    nbformat.validate(nb)
    path = notebook_path(source)
    nbformat.write(nb, str(path))
    size = path.stat().st_size
    print(f"{path.name}: {size / 1000:.0f} KB" + (f", {seconds:.0f} s" if run else ""), flush=True)
    if size > MAX_BYTES:
        print(f"WARNING: {path.name} is larger than {MAX_BYTES // 1000} KB: make its figures smaller", file=sys.stderr)
    return path


def check() -> int:
    """0 when every source has a notebook with the same cells, else 1 (the differences printed)."""
    import nbformat

    bad = 0
    names = {notebook_path(s).name for s in sources()}
    for extra in sorted(p.name for p in HERE.glob("*.ipynb") if p.name not in names):
        print(f"{extra}: a notebook without a source in tutorials/src/")
        bad += 1
    for source in sources():
        path = notebook_path(source)
        if not path.exists():
            print(f"{path.name}: missing (python tutorials/build.py {source.stem[:2]})")
            bad += 1
            continue
        want = [(c.cell_type, c.source) for c in new_notebook(source).cells]
        have = cell_sources(nbformat.read(str(path), as_version=4))
        if want != have:
            print(f"{path.name}: its cells differ from {source.relative_to(HERE.parent)}; rebuild it")
            bad += 1
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="notebook number prefixes to build (default: all)")
    parser.add_argument("--quick", action="store_true", help="execute in quick mode (MINIBNN_QUICK=1)")
    parser.add_argument("--no-execute", action="store_true", help="write the cells without running them")
    parser.add_argument("--check", action="store_true", help="only check that the notebooks match the sources")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    chosen = [s for s in sources() if not args.only or any(s.stem.startswith(p) for p in args.only)]
    if not chosen:
        parser.error(f"no source matches {args.only}")
    for source in chosen:
        build(source, not args.no_execute, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
