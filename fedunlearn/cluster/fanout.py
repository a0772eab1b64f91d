"""Run one plain function over many argument tuples as Ray tasks, results in input order.

The functions stay plain Python (they run without Ray in tests and in-process paths); this
is the only place that wraps them into Ray tasks. Large shared inputs (a model's state dict,
a data set) should be `ray.put` once by the caller and passed as ObjectRefs: Ray hands the
stored object to every task instead of serialising it again per task.

A task whose worker process dies (killed, out of memory, node lost) is rerun by Ray up to
`max_retries` times; an exception raised by the function itself is a bug and is not retried.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from fedunlearn.cluster.ray_env import ClusterConfig, Resources, current_resources, tasks_that_fit


# CPU seconds used by the tasks this process fanned out, theirs included. Wall time on a shared
# machine measures the neighbours too; CPU time measures the work (see task_cpu_seconds).
_task_cpu_s = 0.0


def task_cpu_seconds() -> float:
    """CPU seconds of every task fanned out from this process so far (a running total)."""
    return _task_cpu_s


def _call(fn: Callable, threads: int, *args) -> tuple[Any, float]:
    import torch

    # Ray limits a task's CPUs by bookkeeping only; without this, torch would start one
    # thread per core in every task and concurrent tasks would fight over the cores.
    torch.set_num_threads(threads)
    cpu, nested = time.process_time(), _task_cpu_s
    result = fn(*args)
    return result, time.process_time() - cpu + _task_cpu_s - nested


def fan_out(fn: Callable, calls: Sequence[tuple], cluster: ClusterConfig = ClusterConfig(),
            resources: Resources | None = None, max_parallel: int = 0, desc: str = "tasks",
            progress: bool = False, on_result: Callable[[int, Any], None] | None = None) -> list:
    """fn(*args) for each args in `calls`, as Ray tasks; at most `max_parallel` at once (0 = slots).

    `on_result(i, result)` is called as each task finishes (e.g. to checkpoint it at once).
    """
    import ray

    if not calls:
        return []
    res = resources or current_resources(cluster)
    limit = max_parallel or res.slots
    remote = ray.remote(_call).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                                       max_retries=cluster.max_retries, retry_exceptions=False)
    threads = max(1, int(res.num_cpus))
    results: list = [None] * len(calls)
    running: dict = {}
    bar = tqdm(total=len(calls), desc=desc, disable=not progress, leave=False)
    next_call = 0
    while next_call < len(calls) or running:
        while next_call < len(calls) and len(running) < limit:
            ref = remote.remote(fn, threads, *calls[next_call])  # top-level ObjectRefs arrive resolved
            running[ref] = next_call
            next_call += 1
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            i = running.pop(ref)
            result, cpu = ray.get(ref)  # a failed task raises here, before more work is submitted
            global _task_cpu_s
            _task_cpu_s += cpu
            results[i] = result
            if on_result is not None:
                on_result(i, result)
            bar.update(1)
    bar.close()
    # Results are kept as they arrive: fetching them again at the end would need objects that
    # may have lived on a node that has since died (Ray would have to rebuild them).
    return results


def _warm(seconds: float, modules: Sequence[str]) -> tuple[str, int]:
    import importlib
    import os
    import time

    import ray

    for name in modules:
        importlib.import_module(name)
    time.sleep(seconds)  # stay busy so that every warm-up task gets its own process
    return ray.get_runtime_context().get_node_id(), os.getpid()


def warm_up(cluster: ClusterConfig = ClusterConfig(), per_slot: int = 2,
            modules: Sequence[str] = ("fedunlearn.training",)) -> dict[str, int]:
    """Start worker processes on every node that can run our tasks, before anything is timed:
    `per_slot` per task slot of the node (a grid task plus the tasks it fans out), each
    importing `modules`. Pass the modules whose functions the timed tasks will unpickle: a first
    import in a fresh worker (torch, scikit-learn) costs seconds that would otherwise land
    inside the first timed run.

    Each node is warmed explicitly (node affinity): zero-resource tasks left to Ray's default
    policy all start on the driver's node, and a node with no warm worker then takes seconds
    to grant its first lease, by which time the driver's node has taken the queued tasks too,
    so a short fan-out never reaches the other nodes. Returns the number of warm processes
    per node id."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    res = current_resources(cluster)
    refs = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        slots = min(tasks_that_fit(node.get("Resources", {}), res.num_cpus, res.num_gpus), res.slots)
        if not slots:  # e.g. a head node started with --num-cpus=0: no task of ours runs there
            continue
        where = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)  # a node that just left is skipped
        warm = ray.remote(_warm).options(num_cpus=0, scheduling_strategy=where)  # no resources: all at once
        refs += [warm.remote(1.0, tuple(modules)) for _ in range(per_slot * slots)]
    return dict(Counter(node_id for node_id, _ in set(ray.get(refs))))  # distinct (node, pid) pairs
