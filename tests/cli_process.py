"""Run `fedunlearn` as a real subprocess, read its log as it goes, and see which processes it left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from fedunlearn.interrupt import descendants

ROOT = Path(__file__).resolve().parents[1]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedunlearn", *args]


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def interrupt_when(args: list[str], pattern: str, sig=signal.SIGINT, group: bool = False, wait_s: float = 240) -> dict:
    """Start the CLI, send `sig` once a log line matches `pattern`; returns what happened.

    `group`: send it to the whole process group, as Ctrl-C in a terminal does (Ray's processes get it too).
    """
    proc = subprocess.Popen(command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    seen, deadline = [], time.monotonic() + wait_s
    try:
        for line in proc.stdout:
            seen.append(line)
            if re.search(pattern, line) or time.monotonic() > deadline:
                break
        assert re.search(pattern, "".join(seen)), "".join(seen)[-3000:]
        tree = descendants(proc.pid)
        sessions = {m.group(1) for pid in tree for m in [re.search(r"(session_\d{4}-\d\d-\d\d_[\d-]+_\d+_\d+)", _cmdline(pid))] if m}
        sent = time.monotonic()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[0]
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"rc": proc.returncode, "seconds": took, "output": "".join(seen) + rest, "after": rest,
            "tree": tree, "sessions": sessions}


def alive(pids: list[int]) -> list[int]:
    """Of `pids`, the ones still running (a zombie has ended)."""
    left = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.rfind(")") + 2:].split()[0] != "Z":
            left.append(pid)
    return left


def processes_of_session(session_dir: str) -> list[int]:
    """Every live process whose command line names this Ray session folder (this run's and no other)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and session_dir in _cmdline(int(entry)) and alive([int(entry)]):
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
