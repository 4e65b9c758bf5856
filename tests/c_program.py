"""Compile an exported model (minibnn.deploy.export_c) with the system C compiler and run it on arrays.

The driver reads raw float32 inputs from stdin and writes the logits to stdout, so one process
predicts a whole batch.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

CC = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")

DRIVER = """#include <stdio.h>
#include "{name}.h"
int main(void) {{
    static float x[{NAME}_INPUT_SIZE];
    float y[{NAME}_NUM_CLASSES];
    while (fread(x, sizeof(float), {NAME}_INPUT_SIZE, stdin) == {NAME}_INPUT_SIZE) {{
        int rc = {name}_predict(x, y);
        if (rc != {NAME}_OK) return 10 + rc;
        fwrite(y, sizeof(float), {NAME}_NUM_CLASSES, stdout);
    }}
    return 0;
}}
"""


def compile_export(out: Path, name: str, flags: tuple[str, ...] = ("-O2",)) -> Path:
    """Build the exported model in ``out`` (without its main.c) with the stdin/stdout driver."""
    (out.parent / "driver.c").write_text(DRIVER.format(name=name, NAME=name.upper()))
    sources = [str(p) for p in sorted(out.glob("*.c")) if p.name != "main.c"]
    exe = out.parent / f"{name}_driver"
    result = subprocess.run([CC, "-std=c11", "-Wall", "-Werror", *flags, *sources, str(out.parent / "driver.c"),
                             "-I", str(out), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return exe


TOLERANCE = 1e-5  # float layers sum in another order than BLAS: logits agree to this, relative to the largest


def assert_logits(got: np.ndarray, want: np.ndarray, exact: bool) -> None:
    """The compiled program's logits equal ``want`` bit for bit (``exact``), else within TOLERANCE of the
    largest logit (at least 1) with the same classes."""
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE * max(1.0, float(np.abs(want).max())))
        assert (got.argmax(1) == want.argmax(1)).all()


def build_main(cmd: list[str], out: Path, app: Path, extra: list[str] = ()) -> None:
    """Build the exported program in ``out`` with its own main.c (every .c there) as ``app``, with ``cmd``."""
    sources = sorted(str(p) for p in out.glob("*.c"))
    proc = subprocess.run([*cmd, *extra, *sources, "-o", str(app), "-lm"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"


def run_main(prefix: list[str], app: Path, path: Path, env=None) -> tuple[int, np.ndarray, str]:
    """Run the generated main.c on one input file (.f32 or .pgm): (class, logits as float32, stderr)."""
    proc = subprocess.run([*prefix, str(app), str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{app.name} {path.name}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    lines = proc.stdout.split("\n")
    assert lines[0].startswith("class ") and lines[1].startswith("logits "), proc.stdout
    return int(lines[0].split()[1]), np.array([float(v) for v in lines[1].split()[1:]], np.float32), proc.stderr


def run_export(exe: Path, x: np.ndarray, classes: int) -> np.ndarray:
    """The logits the compiled program computes for the batch ``x``."""
    result = subprocess.run([str(exe)], input=np.ascontiguousarray(x, np.float32).tobytes(), capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return np.frombuffer(result.stdout, np.float32).reshape(len(x), classes)
