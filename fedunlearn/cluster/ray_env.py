"""Attach to a Ray cluster or start a local one, and choose each task's resources at run time.

Library code never starts a second Ray: it attaches when `ray.is_initialized()` (a user's own
`ray.init`, or a task running inside Ray) or when RAY_ADDRESS / cluster.address names a
cluster (`ray job submit` sets RAY_ADDRESS), and starts a private local cluster otherwise
(address "local", so a cluster someone else started with `ray start` is never joined by
accident). Resources are read from `ray.cluster_resources()` when the job starts: a GPU
fraction per task where the cluster has GPUs, CPUs where it has none. Asking for GPUs on a
cluster without any would leave the tasks pending forever, so that is an error instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedunlearn.config import check_range
from fedunlearn.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("fedunlearn")


@dataclass(frozen=True)
class ClusterConfig:
    address: str = ""            # "" = the running Ray, else RAY_ADDRESS, else a new local cluster
    num_cpus: int = 0            # new local cluster only: CPUs it may use; 0 = all of this machine
    cpus_per_task: float = 1.0   # torch in a task uses this many threads (at least 1)
    gpus_per_task: float = -1.0  # -1 = auto: 1 / tasks_per_gpu on a cluster with GPUs, 0 without
    tasks_per_gpu: int = 4       # auto mode: this many tasks share one GPU
    workers: int = 0             # tasks of one fan-out at once; 0 = as many as the resources hold
    max_retries: int = 3         # a task whose worker process dies is rerun up to this many times

    def __post_init__(self):
        check_range("cluster.num_cpus", self.num_cpus, 0)
        check_range("cluster.cpus_per_task", self.cpus_per_task, 0.0)
        check_range("cluster.gpus_per_task", self.gpus_per_task, -1.0)
        check_range("cluster.tasks_per_gpu", self.tasks_per_gpu, 1)
        check_range("cluster.workers", self.workers, 0)
        check_range("cluster.max_retries", self.max_retries, 0)
        if self.gpus_per_task > 1 and self.gpus_per_task != int(self.gpus_per_task):
            raise ValueError(f"'cluster.gpus_per_task' above 1 must be a whole number, got {self.gpus_per_task}")


def ray_address(address: str = "") -> str:
    """The cluster to attach to: `address`, else RAY_ADDRESS, else "local" (a private local Ray;
    Ray's own default, no address, would join whatever cluster `ray start` last recorded here)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def ensure_ray(cfg: ClusterConfig = ClusterConfig()) -> bool:
    """The one way the package starts Ray: attach or start unless Ray runs in this process
    already. Returns True when this call started (or joined) a cluster."""
    import ray

    if ray.is_initialized():
        return False
    address = ray_address(cfg.address)
    if address != "local":
        log.info("attaching to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = cfg.num_cpus or os.cpu_count() or 1
        # Keep idle worker processes alive (Ray's default kills the ones beyond one per CPU
        # after about a second): a task that fans out needs a second set of workers, and a
        # fresh one costs seconds of Python and torch imports inside a timed region. Workers
        # run at normal priority (Ray's default is nice 15): on a shared machine niced tasks
        # get the leftovers of every other process, and wall times would measure the neighbours.
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 _system_config={"num_workers_soft_limit": 2 * cpus,
                                 "idle_worker_killing_time_threshold_ms": 3_600_000,
                                 "worker_niceness": 0})
    return True


@contextlib.contextmanager
def ray_session(cfg: ClusterConfig = ClusterConfig()):
    """Ray is up inside the block; a cluster this call started (or joined) is left afterwards."""
    import ray

    started = ensure_ray(cfg)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class Resources:
    num_cpus: float
    num_gpus: float
    slots: int  # how many such tasks the cluster runs at once

    def describe(self) -> str:
        gpu = f", {self.num_gpus:g} GPU" if self.num_gpus else ""
        return f"{self.num_cpus:g} CPU{gpu} per task, {self.slots} at once"


def choose_resources(cfg: ClusterConfig, cluster: dict[str, float]) -> Resources:
    """Per-task resources from the cluster's totals (`ray.cluster_resources()`); pure, for tests."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if cfg.gpus_per_task >= 0:
        num_gpus = cfg.gpus_per_task
    else:
        num_gpus = 1.0 / cfg.tasks_per_gpu if gpus > 0 else 0.0
    if num_gpus > gpus:
        raise ConfigError(f"cluster.gpus_per_task = {num_gpus:g} but the cluster has {gpus:g} GPUs; tasks would wait "
                          "forever. Set cluster.gpus_per_task = -1 (auto) or 0 (CPU only)")
    if cfg.cpus_per_task > cpus:
        raise ConfigError(f"cluster.cpus_per_task = {cfg.cpus_per_task:g} but the cluster has {cpus:g} CPUs")
    slots = max(1, tasks_that_fit(cluster, cfg.cpus_per_task, num_gpus))
    if cfg.workers:
        slots = min(slots, cfg.workers)
    return Resources(float(cfg.cpus_per_task), float(num_gpus), slots)


def tasks_that_fit(resources: dict[str, float], num_cpus: float, num_gpus: float) -> int:
    """How many tasks needing (num_cpus, num_gpus) fit at once in `resources` (a node's or the
    cluster's totals); 1 for a task that needs neither."""
    fits = []
    if num_cpus > 0:
        fits.append(int(float(resources.get("CPU", 0)) // num_cpus))
    if num_gpus > 0:
        fits.append(int(round(float(resources.get("GPU", 0)) / num_gpus, 6)))
    return min(fits) if fits else 1


def current_resources(cfg: ClusterConfig = ClusterConfig()) -> Resources:
    import ray

    return choose_resources(cfg, ray.cluster_resources())


def worker_device() -> torch.device:
    """For code running inside a Ray task: the GPU Ray assigned to the task, else the CPU."""
    import ray
    import torch

    if not ray.is_initialized():
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
