"""`fedunlearn submit`: run a config on a Ray cluster as a Ray job and bring its report back.

The job is the same `fedunlearn run` a user runs on a laptop: Ray ships the working
directory (this checkout) to the cluster, the entrypoint runs the config with `--out` on the
cluster's storage path (a folder every node can write, e.g. an NFS or object-store mount), and
prints the finished report between markers so it can be fetched from the job's logs without
any shared file system between the cluster and the submitting machine. Rerunning the same
command resumes from the checkpoints under the storage path.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from fedunlearn.errors import FedUnlearnError

BEGIN, END = "=====FEDUNLEARN-REPORT-BEGIN=====", "=====FEDUNLEARN-REPORT-END====="
EXCLUDES = [".venv", ".git", "results", "**/__pycache__", "*.egg-info", "build"]


def entrypoint(config: str, out: str, overrides: list[str]) -> str:
    sets = " ".join(f"--set {shlex.quote(s)}" for s in overrides)
    run = f"python -m fedunlearn run {shlex.quote(config)} --out {shlex.quote(out)} -q {sets}".strip()
    return f"{run} && python -m fedunlearn report {shlex.quote(out)} --emit"


def emit(out_dir: str | Path) -> str:
    """What `fedunlearn report DIR --emit` prints: both report files in one JSON between markers."""
    out = Path(out_dir)
    if not (out / "report.json").is_file():
        raise FedUnlearnError(f"no report.json in '{out}'")
    files = {name: (out / name).read_text() for name in ("report.json", "report.md") if (out / name).is_file()}
    return f"{BEGIN}\n{json.dumps(files)}\n{END}"


def extract(logs: str, dest: str | Path) -> Path:
    """Write the report files found in a job's logs into `dest`; returns dest/report.json."""
    start, stop = logs.rfind(BEGIN), logs.rfind(END)
    if start < 0 or stop < start:
        raise FedUnlearnError("the job's logs hold no report; see `ray job logs <id>` for what went wrong")
    files = json.loads(logs[start + len(BEGIN):stop].strip())
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (dest / name).write_text(text)
    return dest / "report.json"


def _submit_when_ready(client, command: str, runtime_env: dict, wait_s: float = 120.0) -> str:
    """A cluster that has just started answers 'No available agent' until its job agent is up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(entrypoint=command, runtime_env=runtime_env)
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _tail(client, job: str, lines: int = 20) -> str:
    return "\n".join(client.get_job_logs(job).splitlines()[-lines:])


def submit(config: str, address: str, storage: str, fetch_to: str, overrides: list[str] | None = None,
           working_dir: str = ".", timeout_s: float = 3600, poll_s: float = 2.0) -> tuple[str, Path]:
    """Submit, wait, fetch. Returns (job id, local report.json). Raises if the job fails."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    if not Path(working_dir, config).is_file():
        raise FedUnlearnError(f"config '{config}' not found under the working directory '{working_dir}'; "
                              "give its path relative to the checkout that Ray uploads")
    name = Path(config).stem
    out = f"{storage.rstrip('/')}/{name}"
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise FedUnlearnError(f"cannot reach the Ray cluster's job server at '{address}' ({err}); "
                              "pass its dashboard address, e.g. http://HEAD_IP:8265") from None
    job = _submit_when_ready(client, entrypoint(config, out, overrides or []),
                             {"working_dir": working_dir, "excludes": EXCLUDES})
    print(f"submitted job {job}: {config} -> {out}")
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job)
    while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            raise FedUnlearnError(f"job {job} still {status} after {timeout_s:.0f} s; it keeps running: "
                                  f"`ray job logs {job}` to follow it. Last log lines:\n{_tail(client, job)}")
        time.sleep(poll_s)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    if status != JobStatus.SUCCEEDED:
        raise FedUnlearnError(f"job {job} ended {status}; last log lines:\n{_tail(client, job)}\n"
                              "rerun the same command to resume from the checkpoints under the storage path")
    return job, extract(logs, fetch_to)
