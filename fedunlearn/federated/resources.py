"""Ray at the edge: client resources chosen at run time, and the server's own Ray worker.

Never start a second Ray: cluster.ray_env.ensure_ray attaches when one runs (`ray.is_initialized()`
or RAY_ADDRESS) and starts a local one only when there is none. Asking Ray for a GPU on a machine without one leaves a
task pending forever, so GPU fractions are requested only where the cluster reports GPUs.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("fedunlearn")

# Simulated clients share a GPU in fractions that leave a slice for the server's task:
# floor(1 / 0.18) = 5 clients per GPU use 0.9 of it, the server's worker asks for 0.1.
AUTO_CLIENT_GPUS = 0.18


def client_resources(fed_cfg) -> dict[str, float]:
    """Flower's client_resources: CPUs from the config, a GPU fraction when CUDA is present."""
    import torch

    gpus = fed_cfg.client_gpus
    if gpus < 0:
        gpus = AUTO_CLIENT_GPUS if torch.cuda.is_available() else 0.0
    return {"num_cpus": float(fed_cfg.client_cpus), "num_gpus": float(gpus)}


class ServerWorker:
    """The server's compute process: one Ray actor that runs the server-side work of unlearning
    (a generator, a distillation), on a GPU fraction when the cluster has GPUs.

    It is started once per experiment, before any method is timed, and reused by every method:
    a fresh Ray worker process costs seconds of Python and torch imports (3-12 s measured on a
    busy 2-core machine), which would otherwise be billed to the first method that uses it.
    It reserves `cpus` CPUs and its torch runs that many threads (at least one), so that its
    timings do not depend on whatever else runs on the node. When the node has no CPU free (a
    Flower simulation's client actors can hold all of them while they sit idle during
    server-side unlearning), it asks for none rather than wait forever, logs a warning, and
    still runs that many threads; `reserved_cpus` says which happened.
    """

    def __init__(self, gpu_fraction: float = 0.1, cpus: float = 1.0):
        self.gpu_fraction = gpu_fraction
        self.cpus = cpus
        self.reserved_cpus = 0.0
        self._actor = None
        self._started_ray = False  # close() shuts down a Ray that start() had to start

    def start(self) -> "ServerWorker":
        import ray

        from fedunlearn.cluster.ray_env import ensure_ray

        if self._actor is not None:
            return self
        self._started_ray = ensure_ray() or self._started_ray
        options: dict[str, float] = {"num_cpus": 0}
        if self.cpus > 0:
            if ray.available_resources().get("CPU", 0.0) >= self.cpus:
                options["num_cpus"] = self.reserved_cpus = self.cpus
            else:
                log.warning("no %.1f free CPU(s) for the server worker; it reserves none and runs %d thread(s)",
                            self.cpus, max(1, int(self.cpus)))
        if ray.cluster_resources().get("GPU", 0.0) > 0 and self.gpu_fraction > 0:
            if ray.available_resources().get("GPU", 0.0) >= self.gpu_fraction:
                options["num_gpus"] = self.gpu_fraction
            else:
                log.warning("no free GPU fraction of %.2f for the server worker; it runs on CPU", self.gpu_fraction)
        self._actor = ray.remote(**options)(_ServerProcess).remote(max(1, int(self.cpus)) if self.cpus else 0)
        info = ray.get(self._actor.ready.remote())
        log.info("server worker on Ray with %s: %s", options, info)
        return self

    def run(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) in the server's process; its result (or its exception) comes back."""
        import ray

        self.start()
        return ray.get(self._actor.run.remote(fn, args, kwargs))

    def close(self) -> None:
        import ray

        if self._actor is not None and ray.is_initialized():
            ray.kill(self._actor)
        self._actor = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
        self._started_ray = False

    def __enter__(self) -> "ServerWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ServerProcess:
    def __init__(self, threads: int = 1):
        import torch

        torch.set_num_threads(threads or os.cpu_count() or 1)

    def ready(self) -> dict:
        import ray
        import torch

        return {"pid": os.getpid(), "threads": torch.get_num_threads(), "gpus": ray.get_gpu_ids()}

    def run(self, fn, args, kwargs):
        return fn(*args, **kwargs)


def end_client_actors() -> int:
    """Kill this job's Flower ClientApp actors that are still alive; returns how many.

    Flower's simulation engine ends only when every ClientApp call it started has returned, so a
    call that outlived its round's timeout holds the shutdown for as long as it hangs. Once the
    ServerApp is done no reply can be used, and killing the actor makes the engine's pending
    `ray.get` fail at once. Ray has no public call that turns an actor id into a handle (only
    named actors have one), hence the GCS table and the core worker; should either change, the
    engine is left to end on its own.
    """
    import ray

    if not ray.is_initialized():
        return 0
    try:
        import ray._private.state as state

        job = ray.get_runtime_context().get_job_id()
        ids = [a["ActorID"] for a in state.actors().values()
               if a["ActorClassName"] == "ClientAppActor" and a["State"] != "DEAD" and a["JobID"] == job]
        core = ray._private.worker.global_worker.core_worker
        for actor_id in ids:
            ray.kill(core.get_actor_handle(ray.ActorID.from_hex(actor_id)))
    except Exception as err:  # noqa: BLE001 - a shutdown aid must never fail the finished run
        log.warning("could not end the Flower client actors (%s: %s); the simulation ends when they return",
                    type(err).__name__, err)
        return 0
    return len(ids)
