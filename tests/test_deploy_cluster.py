"""A real multi-node Ray on this machine: `fedunlearn submit` a small SISA job and fetch its report.

Two nodes (head and worker, one CPU each) started by ray.cluster_utils.Cluster, each a real
raylet with its own worker processes; the job is submitted through the dashboard's job server
exactly as against a remote cluster. A second job loses its worker node mid-run and must still
finish with the same numbers (Ray retries the lost tasks; checkpoints already written are reused).
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from fedunlearn.cluster.submit import submit

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "simulations/sisa.toml"
TINY = ["data.name=digits", "data.train_size=0", "model.hidden=64", "train.epochs=20",
        'experiment.forget=[{name="two", kind="indices", indices=[5, 700]}]', "experiment.benchmark=false",
        "methods.sisa.compare_one_worker=false", "methods.sisa.epochs_per_slice=10"]
METRICS = ("test_acc", "retain_acc", "forget_acc")
REPORTS: dict = {}  # the first job's report, compared with the job that loses a node

pytestmark = pytest.mark.slow  # a two-node cluster and three jobs


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _node_args(num_cpus: int) -> dict:
    # Every node on one machine needs its own agent port (a second node on 52365 loses its job agent)
    # and its own runtime-env folder: nodes share the session folder, and a node setting up the job's
    # working_dir deletes and unpacks it again (Ray's working_dir plugin overwrites), which removed the
    # head's copy under the running job (getcwd() failed in the entrypoint, twice in CI rehearsals).
    port = _free_port()
    return {"num_cpus": num_cpus, "dashboard_agent_listen_port": port,
            "runtime_env_dir_name": f"runtime_resources_{port}"}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # The job's entrypoint runs `python -m fedunlearn` in a shell on the head node.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    c = Cluster(initialize_head=True, head_node_args={
        **_node_args(1), "include_dashboard": True, "dashboard_port": _free_port()})
    worker = c.add_node(**_node_args(1))
    yield c, worker
    c.shutdown()


def _submit(c, storage, fetch_to, extra=()):
    return submit(CONFIG, f"http://{c.webui_url}", str(storage), str(fetch_to), [*TINY, *extra],
                  working_dir=str(ROOT), timeout_s=300, poll_s=1.0)


def _rows(report_path):
    return {(r["method"], r.get("forget", "")): r for r in json.loads(Path(report_path).read_text())["results"]}


def _shard_tasks(c, filters=()) -> list:
    """The fan-out's shard tasks Ray knows of (any job), by the state API's filters."""
    from ray.util.state import list_tasks

    tasks = list_tasks(address=c.address, filters=list(filters), limit=10000, raise_on_missing_output=False)
    return [t for t in tasks if "_call" in t.name]


def _task_nodes(c, want: int = 2, wait_s: float = 20.0):
    """Node ids of the finished fan-out tasks. Workers report task events to the GCS in batches
    (about every second), so a node's events can arrive after the job ends: poll a little."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = {t.node_id for t in _shard_tasks(c, [("state", "=", "FINISHED")])}
        if len(nodes) >= want or time.monotonic() > deadline:
            return nodes
        time.sleep(0.5)


def test_warm_up_starts_workers_on_every_node(cluster):
    import ray

    from fedunlearn.cluster import ClusterConfig, warm_up

    c, worker = cluster
    ray.init(address=c.address)
    try:
        per_node = warm_up(ClusterConfig(), per_slot=2)
    finally:
        ray.shutdown()
    # Every node, not only the driver's, has warm workers (how many of the two per slot got their
    # own process depends on how fast the raylet starts them, so only presence is asserted).
    assert set(per_node) == {c.head_node.node_id, worker.node_id}


def test_job_runs_across_both_nodes_and_report_is_fetched(cluster, tmp_path_factory):
    c, _ = cluster
    storage, local = tmp_path_factory.mktemp("storage"), tmp_path_factory.mktemp("fetched")
    job, report = _submit(c, storage, local)
    assert report.is_file() and (local / "report.md").is_file()
    assert (storage / "sisa" / "report.json").is_file()  # the storage path kept the results too
    rows = _rows(report)
    assert any(m == "sisa" for m, _ in rows) and any(m == "retrain" for m, _ in rows)
    assert len(_task_nodes(c)) == 2, "shard tasks should have run on both nodes"
    REPORTS["first"] = report


def test_losing_a_worker_node_mid_run_gives_the_same_result(cluster, tmp_path_factory):
    from concurrent.futures import ThreadPoolExecutor

    c, worker = cluster
    storage, local = tmp_path_factory.mktemp("storage2"), tmp_path_factory.mktemp("fetched2")

    def shard_jobs() -> set:  # by Ray job, so a late event of the first job's tasks is not taken for this one's
        return {t.job_id for t in _shard_tasks(c)}

    earlier = shard_jobs()  # the first job's
    # The job is watched from a thread; the node is removed and replaced from the main thread,
    # because starting a Ray node installs signal handlers, which only the main thread may do.
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(_submit, c, storage, local)
        deadline, removed_mid_run = time.monotonic() + 120, False
        while not job.done() and time.monotonic() < deadline:
            # once this job's shard tasks exist (any node, any state) the worker goes: with one CPU per
            # node it then holds one of them or is about to. Waiting to see one RUNNING there failed on
            # loaded machines and in a full CI run: task events are batched, and a short task can end
            # before its RUNNING event arrives.
            if shard_jobs() - earlier:
                removed_mid_run = not job.done()
                c.remove_node(worker)
                c.add_node(**_node_args(1))  # a replacement joins, as an autoscaler would add one
                break
            time.sleep(0.2)
        _, report = job.result()
    assert removed_mid_run, "the job ended before the worker node could be removed"
    assert not any(n.node_id == worker.node_id for n in c.worker_nodes), "the worker node was not removed"
    assert len(c.worker_nodes) == 1, "the replacement node did not join"
    if "first" not in REPORTS:
        pytest.skip("needs the report of test_job_runs_across_both_nodes_and_report_is_fetched")
    first, second = _rows(REPORTS["first"]), _rows(report)
    assert first.keys() == second.keys()
    for key in first:
        for metric in METRICS:
            assert second[key][metric] == pytest.approx(first[key][metric], abs=1e-9), (key, metric)
