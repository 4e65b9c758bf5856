"""Faults (issue 12): SIGKILL at random moments, a full disk, a read-only folder, Ctrl-C.

The kill tests run tests/fault_worker.py as a subprocess (one thread), kill it with SIGKILL after a
random delay (seeded) and then check the folder: the files under final names are always a whole,
loadable pair, the previous one or the new one (or none yet), never a partial file. A kill may also
leave a temporary ``.<name>.<random>.tmp`` or a complete, content-addressed ``[.]<name>.<sha>.npz``
(checked against its name); the next successful save removes them. Training resumed through a
chain of kills ends bit for bit where an unbroken run ends. The default run kills a few times per
test (about 20 s in all); ``-m slow`` kills 100-110 times per test (about 3 minutes in all).
"""
from __future__ import annotations

import hashlib
import json
import os
import random as pyrandom
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import minibnn
from minibnn import deploy, io, train

import fault_worker as fw

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and resource limits")
WORKER = Path(__file__).parent / "fault_worker.py"
ENV = dict(os.environ, MINIBNN_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           MKL_NUM_THREADS="1")
TEMP = re.compile(r"\..+\.[0-9a-z_]{8}\.tmp")  # what atomic_write_bytes writes before its rename


def _start(*args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        pytest.fail(f"worker {args} did not start: {line!r}\n{proc.communicate()[1]}")
    return proc


def _kill(proc: subprocess.Popen) -> bool:
    """SIGKILL ``proc`` unless it has ended already; whether it was killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _check_names(folder: Path, final: set[str], versioned: re.Pattern) -> set[str]:
    """Only ``final`` names, complete content-addressed .npz files and temporary files are there;
    the names of the latter two (traces of kills during a write)."""
    traces = set()
    for p in folder.iterdir():
        if p.is_dir() or p.name in final:
            continue
        traces.add(p.name)
        if TEMP.fullmatch(p.name):
            continue
        match = versioned.fullmatch(p.name)
        assert match, f"unexpected file {p.name} in {sorted(q.name for q in folder.iterdir())}"
        assert hashlib.sha256(p.read_bytes()).hexdigest()[:16] == match[1], f"{p.name} is partial"
    return traces


# ------------------------------------------------------------------------------------ training


def _checkpoint_epochs(folder: Path) -> int:
    path = folder / f"{train.CHECKPOINT}.json"
    return json.loads(path.read_text())["epoch"] + 1 if path.exists() else 0


def _check_training_folder(folder: Path, epochs: int) -> set[str]:
    versioned = re.compile(rf"(?:{train.CHECKPOINT}|\.final)\.([0-9a-f]{{16}})\.npz")
    traces = _check_names(folder, {f"{train.CHECKPOINT}.json", "final.json", "final.npz"}, versioned)
    if (folder / f"{train.CHECKPOINT}.json").exists():
        model, optimizer, schedule = fw.training_model(epochs)
        with minibnn.random.preserved():
            epoch, history = train.load_checkpoint(folder, model, optimizer, schedule)
        assert 1 <= epoch <= epochs and len(history) == epoch
        traces.discard(json.loads((folder / f"{train.CHECKPOINT}.json").read_text())["npz"])
    else:
        assert not (folder / "final.json").exists()
    if (folder / "final.json").exists():
        minibnn.load(folder / "final")
    else:
        assert not (folder / "final.npz").exists(), "final.npz without its .json"
    return traces


def _kill_training(folder: Path, epochs: int, kills: int, epoch_seconds: float, rng) -> tuple[int, int]:
    """Kill the training ``kills`` times at random moments, checking the folder after each, then let
    it finish; (kills done, kills that left a new trace of a write in progress)."""
    done = traces = 0
    seen: set[str] = set()
    while True:
        proc = _start("train", folder, epochs)
        if done < kills:  # each run lives about one epoch on average, less once few epochs are left
            left = epochs - _checkpoint_epochs(folder)
            time.sleep(rng.uniform(0, epoch_seconds * min(2.0, left / (kills - done) / 2)))
            if _kill(proc):
                done += 1
                now = _check_training_folder(folder, epochs)
                traces += bool(now - seen)
                seen = now
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        return done, traces


def _resumed_equals_unbroken(tmp_path: Path, kills: int, seed: int, min_traces: int = 0) -> None:
    epochs = 2 * kills + 4
    reference = tmp_path / "unbroken"
    start = time.perf_counter()
    proc = _start("train", reference, epochs)
    began = time.perf_counter()
    assert proc.wait(timeout=300) == 0, proc.communicate()[1]
    epoch_seconds = (time.perf_counter() - began) / epochs
    folder = tmp_path / "killed"
    folder.mkdir()
    done, traces = _kill_training(folder, epochs, kills, epoch_seconds, pyrandom.Random(seed))
    print(f"{done} kills, {traces} during a write, {time.perf_counter() - start:.1f} s")
    assert done == kills and traces >= min_traces
    # everything left over from the kills is gone after the last, successful saves
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
    for name in ("final", train.CHECKPOINT):
        fmt = "minibnn-checkpoint" if name == train.CHECKPOINT else io.FORMAT
        (want_header, want), (got_header, got) = (io.read_pair(f / name, fmt) for f in (reference, folder))
        assert want.keys() == got.keys()
        for key in want:  # bit for bit
            assert want[key].dtype == got[key].dtype and want[key].tobytes() == got[key].tobytes(), key
        assert got_header.get("rng") == want_header.get("rng")
        assert got_header.get("schedule") == want_header.get("schedule")
    history = [json.loads((f / f"{train.CHECKPOINT}.json").read_text())["history"] for f in (reference, folder)]
    assert [(r["loss"], r["accuracy"]) for r in history[0]] == [(r["loss"], r["accuracy"]) for r in history[1]]


def test_killed_training_resumes_to_the_unbroken_result(tmp_path):
    _resumed_equals_unbroken(tmp_path, kills=8, seed=1)


@pytest.mark.slow
def test_killed_training_resumes_to_the_unbroken_result_many_kills(tmp_path):
    _resumed_equals_unbroken(tmp_path, kills=110, seed=2, min_traces=5)


# ---------------------------------------------------------------------- save, packed.save, convert


def _expected_digests(kind: str, tmp_path: Path) -> set[str]:
    """The .npz checksums of contents 0 and 1 (what the files may hold)."""
    digests = set()
    for i in (0, 1):
        scratch = tmp_path / f"expected{i}"
        fw.writer(kind, scratch)(i)
        digests.add(json.loads((scratch / f"{fw.STEMS[kind]}.json").read_text())["npz_sha256"])
    return digests


def _check_pair(folder: Path, kind: str, digests: set[str]) -> set[str]:
    stem = fw.STEMS[kind]
    traces = _check_names(folder, {f"{stem}.json", f"{stem}.npz"}, re.compile(rf"\.{stem}\.([0-9a-f]{{16}})\.npz"))
    if not (folder / f"{stem}.json").exists():
        assert not (folder / f"{stem}.npz").exists(), f"{stem}.npz without its .json"
        return traces
    fmt = io.FORMAT if kind == "model" else deploy.fileformat.FORMAT
    header, _ = io.read_pair(folder / stem, fmt, max_version=9)
    assert header["npz_sha256"] in digests
    traces.discard(header["npz"])
    if kind == "model":
        minibnn.load(folder / stem)
    else:
        deploy.load(folder / stem)
    return traces


def _kill_saves(tmp_path: Path, kind: str, kills: int, seed: int, min_traces: int = 0) -> None:
    rng, start = pyrandom.Random(seed), time.perf_counter()
    digests = _expected_digests(kind, tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    if kind == "convert":
        fw.writer(kind, folder)  # the two source models
    traces, seen = 0, set()
    for _ in range(kills):
        proc = _start("loop", folder, kind)
        time.sleep(rng.uniform(0.0, 0.25))
        assert _kill(proc), proc.communicate()[1]
        now = _check_pair(folder, kind, digests)
        traces += bool(now - seen)
        seen = now
    with minibnn.random.preserved():
        fw.writer(kind, folder)(0)  # one successful write removes what the kills left
    stem = fw.STEMS[kind]
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [f"{stem}.json", f"{stem}.npz"]
    print(f"{kind}: {kills} kills, {traces} during a write, {time.perf_counter() - start:.1f} s")
    assert traces >= min_traces  # the kills do land in the middle of writes


@pytest.mark.parametrize("kind", ["model", "packed", "convert"])
def test_killed_saves_leave_a_whole_pair(tmp_path, kind):
    _kill_saves(tmp_path, kind, kills=5, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["model", "packed", "convert"])
def test_killed_saves_leave_a_whole_pair_many_kills(tmp_path, kind):
    _kill_saves(tmp_path, kind, kills=100, seed=4, min_traces=10)


# --------------------------------------------------------------------- full disk, read-only folder

HINTS = {"npz": "file-size limit (ulimit -f)", "json": "file-size limit (ulimit -f)", "readonly": "not writable"}


@pytest.mark.parametrize("fault", ["npz", "json", "readonly"])
@pytest.mark.parametrize("kind", ["model", "checkpoint", "packed", "convert"])
def test_failed_write_names_the_file_and_keeps_the_previous_one(tmp_path, kind, fault):
    deep = fault == "json"  # a model whose .json is larger than its .npz: the limit stops the .json
    folder = tmp_path / "out"
    with minibnn.random.preserved():
        fw.writer(kind, folder, deep)(0)
    before = _files(folder)
    if fault == "readonly":
        folder.chmod(0o555)
    try:
        proc = subprocess.run([sys.executable, str(WORKER), "fault", str(folder), kind, fault] + ["deep"] * deep,
                              capture_output=True, text=True, env=ENV, timeout=300)
    finally:
        folder.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    if "skip" in report:
        pytest.skip(report["skip"])
    assert _files(folder) == before  # the previous pair, and no temporary file
    stem = fw.STEMS[kind]
    if kind == "convert":  # the command reports it: one line, exit status 2
        assert report["type"] is None and report["result"] == "2", report
        message = report["stderr"]
        assert message.startswith("minibnn convert: error: ") and message.count("\n") == 1, message
    else:
        assert report["type"] == ("PermissionError" if fault == "readonly" else "OSError"), report
        message = report["message"]
    suffix = "json" if fault == "json" else r"(?:[0-9a-f]{16}\.)?npz"  # checkpoints: the versioned .npz
    assert re.search(rf"cannot write {re.escape(str(folder / stem))}\.{suffix}: ", message), message
    assert HINTS[fault] in message and "unchanged" in message, message


# --------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_train_says_where_the_checkpoint_is(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "minibnn", "train", "--model", "binary_mlp", "--limit", "256",
                             "--batch-size", "64", "--epochs", "500", "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err, err
    assert f"the last checkpoint is {out / 'checkpoint.json'} (after epoch " in err, err
    assert re.search(r"continue with: minibnn train .*--resume", err), err
    model = minibnn.models.binary_mlp()
    with minibnn.random.preserved():
        epoch, _ = train.load_checkpoint(out, model, minibnn.optim.make_optimizer("adam", model, 2e-3))
    assert f"(after epoch {epoch} of 500)" in err
    assert not [p.name for p in out.iterdir() if TEMP.fullmatch(p.name)]  # a Ctrl-C mid-save cleans up
