"""One Ctrl-C (SIGINT) or SIGTERM ends a run within seconds, with its Ray and Flower processes.

Why not let KeyboardInterrupt unwind: Flower's simulation runs the ServerApp in a non-daemon
thread that keeps waiting for clients the runtime has already stopped (the process then hangs
until a second signal), and Ray replaces the SIGTERM handler of the process that starts it.
So the handler does not unwind at all: it says how to resume, kills every process this one
started (Ray's GCS, raylet and workers are its descendants) and exits with 130. Checkpoints
are written by rename, so whatever was saved before the signal is whole and the rerun resumes.

A watcher thread reads the signal wake-up pipe as well, so a signal still ends the run when a
library has installed its own Python handler after ours (Ray's `sys.exit` on SIGTERM).
"""

from __future__ import annotations

import os
import signal
import threading
import time

MESSAGE = "interrupted; rerun the same command to resume"
EXIT_CODE = 130
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopping = threading.Lock()
_installed = False


def install() -> None:
    """Call once from the main thread, before any work starts."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    # Ray's core otherwise prints a C stack dump for the SIGTERM before our handler runs; a
    # user can set it back to 0 to get those dumps for real crashes.
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read,), name="fedunlearn-interrupt", daemon=True).start()
    _installed = True


def _on_signal(signum, frame) -> None:
    stop()


def _watch(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if any(byte in SIGNALS for byte in data):
            stop()


def stop() -> None:
    """Print the resume hint, end every descendant process and exit; idempotent across threads."""
    if not _stopping.acquire(blocking=False):
        while True:  # another thread is already stopping the process
            time.sleep(1)
    # os.write, not print: the signal may arrive while the main thread is inside a print.
    os.write(2, f"\n{MESSAGE}\n".encode())
    kill_descendants()
    os._exit(EXIT_CODE)


def descendants(pid: int | None = None) -> list[int]:
    """Every live process below `pid` (default: this one), from /proc; children before their parents' end."""
    pid = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants(rounds: int = 3, wait_s: float = 5.0) -> None:
    """SIGKILL the whole tree (repeated: a dying raylet's workers may be mid-spawn), then wait
    until the killed processes have ended: a large worker takes a moment to release its memory."""
    killed: set[int] = set()
    for _ in range(rounds):
        pids = descendants()
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        killed.update(pids)
        time.sleep(0.2)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(_running(pid) for pid in killed):
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")
