"""A run stops every Ray actor and the Ray it started: the server worker's actor is killed at
its end, and a Ray that the worker had to start is shut down, its processes gone."""

from __future__ import annotations

import os
import time

import pytest


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"  # a zombie has exited
    except OSError:
        return False


def test_server_worker_stops_its_actor_and_the_ray_it_started():
    import ray
    import ray._private.state as state

    from fedunlearn.federated.resources import ServerWorker

    if ray.is_initialized():
        pytest.skip("another test left Ray running in this process")
    with ServerWorker() as worker:
        worker_pid = worker.run(os.getpid)
        node = ray._private.worker._global_node
        pids = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
        actors = state.actors()
        assert any(a["State"] == "ALIVE" for a in actors.values())
        assert pids and all(alive(p) for p in pids)
    assert not ray.is_initialized()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in pids + [worker_pid]):
        time.sleep(0.5)
    assert not [p for p in pids + [worker_pid] if alive(p)], "Ray processes left running"


def test_server_worker_attached_to_a_running_ray_leaves_it_running_without_its_actor():
    import ray
    import ray._private.state as state

    from fedunlearn.federated.resources import ServerWorker

    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        with ServerWorker() as worker:
            worker.run(os.getpid)
        assert ray.is_initialized()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(a["State"] == "ALIVE" for a in state.actors().values()):
            time.sleep(0.5)
        assert not [a for a in state.actors().values() if a["State"] == "ALIVE"]
    finally:
        ray.shutdown()
