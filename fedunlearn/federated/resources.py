"""Ray at the edge: client resources chosen at run time, and the server's own Ray task.

Never start a second Ray: attach when one runs (`ray.is_initialized()` or RAY_ADDRESS), start a
local one only when there is none. Asking Ray for a GPU on a machine without one leaves a
task pending forever, so GPU fractions are requested only where the cluster reports GPUs.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("fedunlearn")

# Simulated clients share a GPU in fractions that leave a slice for the server's task:
# floor(1 / 0.18) = 5 clients per GPU use 0.9 of it, the server task asks for 0.1.
AUTO_CLIENT_GPUS = 0.18


def client_resources(fed_cfg) -> dict[str, float]:
    """Flower's client_resources: CPUs from the config, a GPU fraction when CUDA is present."""
    import torch

    gpus = fed_cfg.client_gpus
    if gpus < 0:
        gpus = AUTO_CLIENT_GPUS if torch.cuda.is_available() else 0.0
    return {"num_cpus": float(fed_cfg.client_cpus), "num_gpus": float(gpus)}


def ensure_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        # "local": a private cluster, never a `ray start` cluster someone else left on this machine.
        ray.init(address="local", include_dashboard=False)


def run_server_task(fn, *args, gpu_fraction: float = 0.1, **kwargs):
    """Run fn(*args, **kwargs) as one Ray task and wait for its result.

    GPU: `gpu_fraction` of a GPU when the cluster has one free. CPU: the free CPUs, or zero when
    none is free, because in a Flower simulation the client actors reserve every CPU while they
    sit idle during server-side unlearning and a task waiting for a CPU would never start. Ray
    limits a task to one thread unless told otherwise, so the task sets torch's thread count to
    the CPUs it runs beside: those it asked for, or the node's cores when it asked for none.
    """
    import ray

    ensure_ray()
    free = ray.available_resources()
    cpus = float(min(int(free.get("CPU", 0.0)), os.cpu_count() or 1))
    options: dict[str, float] = {"num_cpus": cpus}
    if ray.cluster_resources().get("GPU", 0.0) > 0 and gpu_fraction > 0:
        if free.get("GPU", 0.0) >= gpu_fraction:
            options["num_gpus"] = gpu_fraction
        else:
            log.warning("no free GPU fraction of %.2f for the server task; it runs on CPU", gpu_fraction)
    log.info("server task %s on Ray with %s", getattr(fn, "__name__", "task"), options)
    task = ray.remote(**options)(_with_threads)
    return ray.get(task.remote(int(cpus), fn, args, kwargs))


def _with_threads(cpus: int, fn, args, kwargs):
    import torch

    torch.set_num_threads(cpus or os.cpu_count() or 1)
    return fn(*args, **kwargs)
