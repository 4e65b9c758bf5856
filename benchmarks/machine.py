"""What the benchmarks print about the machine they ran on (shared by the scripts here)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_name(np) -> str:
    """The BLAS NumPy was built against, e.g. 'scipy-openblas 0.3.31'."""
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{info.get('name', '?')} {info.get('version', '')}".strip()
    except Exception:  # older NumPy or unusual builds: not worth failing over
        return "unknown BLAS"


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MINIBNN_NUM_THREADS")


def run_children(script: str, thread_counts: list[int], child_args: list[str]) -> list[dict] | int:
    """Run ``script --child --threads T <child_args>`` once per thread count, each in a fresh process
    (so BLAS and OpenMP read their thread count at start); return the JSON each printed last, or
    the exit status of the first child that failed."""
    results = []
    for threads in thread_counts:
        env = dict(os.environ, **{var: str(threads) for var in THREAD_VARS})
        cmd = [sys.executable, script, "--child", "--threads", str(threads), *child_args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.stderr.strip():
            print(proc.stderr.strip(), file=sys.stderr)
        if proc.returncode != 0:
            return proc.returncode
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def print_report(name: str, argv: list[str] | None, repeats: int, quick: bool, tables: list[str],
                 json_path: str | None, results: list[dict]) -> None:
    """The machine and command lines, the tables, and the JSON file when asked for."""
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")
    print(f"command: python benchmarks/{name} {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"median of {repeats} runs{' (--quick: a smoke run, not a measurement)' if quick else ''}")
    for table in tables:
        print()
        print(table)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))


def timed(fn) -> float:
    """Seconds one call of ``fn()`` takes, right after an untimed call of it.

    The untimed call puts the method's own operands back in the caches: runs of several methods
    are interleaved, and one method (numpy_ref's temporaries, a whole float model) can otherwise
    evict the next one's data, which measured up to 1.5-2x slower than it runs in a network.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_parser(doc: str, repeats: int, quick_help: str, torch: bool = True) -> argparse.ArgumentParser:
    """The options every benchmark script takes (threads, repeats, quick, json, and --no-torch)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs per number, median reported (default {repeats})")
    p.add_argument("--quick", action="store_true", help=quick_help)
    if torch:
        p.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one thread count, JSON out
    return p


def bench_main(script: str, argv, args, measure, report, child_args: list[str]) -> int:
    """In a child: measure and print JSON. Else: one child per thread count, then the report."""
    if args.child:
        print(json.dumps(measure(args)))
        return 0
    child_args = ["--repeats", str(args.repeats), *child_args]
    child_args += ["--no-torch"] if getattr(args, "no_torch", False) else []
    results = run_children(script, [int(t) for t in args.threads.split(",")], child_args)
    if isinstance(results, int):
        return results
    print_report(Path(script).name, argv, args.repeats, args.quick, ["\n".join(report(r)) for r in results],
                 args.json, results)
    return 0
