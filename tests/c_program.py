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


def run_export(exe: Path, x: np.ndarray, classes: int) -> np.ndarray:
    """The logits the compiled program computes for the batch ``x``."""
    result = subprocess.run([str(exe)], input=np.ascontiguousarray(x, np.float32).tobytes(), capture_output=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return np.frombuffer(result.stdout, np.float32).reshape(len(x), classes)
