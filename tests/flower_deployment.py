"""A local Flower deployment for tests: one SuperLink and N SuperNodes as real processes on 127.0.0.1.

Every process is started in its own process group and stopped (SIGTERM, then SIGKILL) when the
context ends, also when the test fails. Flower's console scripts are run with this test's
Python (wrappers in a private bin folder first on PATH), so the SuperLink's ServerApp and the
SuperNodes' ClientApp subprocesses import this checkout's packages. FLWR_HOME is private too:
the user's ~/.flwr is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def console_scripts(bin_dir: Path) -> None:
    """Wrappers for flwr's console scripts that run this interpreter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for ep in entry_points(group="console_scripts"):
        if ep.dist is not None and ep.dist.name.lower() == "flwr":
            module, _, attr = ep.value.partition(":")
            path = bin_dir / ep.name
            path.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {attr}\n"
                            f"sys.argv[0] = {ep.name!r}\nsys.exit({attr}())\n")
            path.chmod(0o755)


def wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the SuperLink did not become healthy in {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (a deployment's private FLWR_HOME)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker.encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def stop(procs: list[subprocess.Popen], marker: str) -> None:
    """Stop the started processes and their groups, then anything they spawned detached (found by
    the private FLWR_HOME in its environment): a ClientApp stuck in a hang, a ServerApp."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group: ServerApp / ClientApp subprocesses too
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


@contextlib.contextmanager
def deployment(root: Path, num_nodes: int):
    """Yields (env, superlink address, processes) for `flwr run APP NAME` with FLWR_HOME = root/flwr-home."""
    root.mkdir(parents=True, exist_ok=True)
    bin_dir = root / "bin"
    console_scripts(bin_dir)
    home = root / "flwr-home"
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "test"\n\n[superlink.test]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
           "FLWR_DISABLE_UPDATE_CHECK": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc

    try:
        link_log = root / "superlink.log"
        link = start([str(bin_dir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
                      "--isolation", "subprocess", "--disable-runtime-dependency-installation"], link_log)
        wait_healthy(port, link, link_log)
        for pid in range(num_nodes):
            start([str(bin_dir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                   "--host", "127.0.0.1", "--port", str(free_port()),
                   "--node-config", f"partition-id={pid} num-partitions={num_nodes}"], root / f"supernode-{pid}.log")
        yield env, f"127.0.0.1:{port}", procs
    finally:
        stop(procs, f"FLWR_HOME={home}")
