"""The federated kind: client withdrawal, run by `fedunlearn run` on Flower's simulation engine (Ray).

`run` builds the ServerApp and ClientApp around the validated config and hands them to
`flwr.simulation.run_simulation`: one SuperNode per client, client resources chosen from what
the machine has. The ServerApp does all the work (federated/driver.py) and writes the report; this
function returns what it wrote. Ray is reused when it already runs, started (and stopped
afterwards) when it does not. The engine waits for every ClientApp call it started, so when a
message went unanswered (its round ended by `federation.round_timeout_s`) and the engine has not
ended `SHUTDOWN_GRACE_S` after the ServerApp, the client actors are killed: the run ends then
instead of when the hung call returns.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fedunlearn.cluster.ray_env import ray_address
from fedunlearn.config import to_dict
from fedunlearn.federated.config import Config
from fedunlearn.federated.report import COLUMNS

log = logging.getLogger("fedunlearn")

# After the ServerApp is done, how long the engine may take to stop its idle clients by itself.
SHUTDOWN_GRACE_S = 2.0


def run(cfg: Config, out_dir: str | Path, progress: bool = True) -> dict:
    import ray
    from flwr.simulation import run_simulation

    from fedunlearn.federated.app import make_client_app, make_server_app
    from fedunlearn.federated.client import federation_data
    from fedunlearn.federated.driver import check_cooperation
    from fedunlearn.federated.resources import client_resources
    from fedunlearn.metrics.report import load_report

    if cfg.audit.models > 0:
        from fedunlearn.audit.federated import run_federated_audit

        return run_federated_audit(cfg, out_dir, progress)
    check_cooperation(cfg)  # before Ray starts: a bad request should cost nothing
    federation_data(cfg)  # likewise a partition that leaves a client without data (a too small alpha)
    if cfg.withdrawal.requests:
        from fedunlearn.federated.client import stream_requests

        stream_requests(cfg)  # and a stream that names a client twice
    out = Path(out_dir)
    mapping = to_dict(cfg)
    resources = client_resources(cfg.federation)
    log.info("Flower simulation: %d clients, client resources %s", cfg.federation.num_clients, resources)
    started_ray = not ray.is_initialized()
    server_done, engine_done, unanswered = threading.Event(), threading.Event(), []

    def server_exit(count: int) -> None:
        unanswered.append(count)
        server_done.set()

    threading.Thread(target=_end_hung_clients, args=(server_done, engine_done, unanswered), name="fedunlearn-shutdown",
                     daemon=True).start()
    try:
        run_simulation(server_app=make_server_app(mapping, str(out), progress, on_exit=server_exit),
                       client_app=make_client_app(mapping), num_supernodes=cfg.federation.num_clients,
                       backend_config={"client_resources": resources, "init_args": ray_init_args()})
    finally:
        engine_done.set()
        server_done.set()  # the watcher returns even when the ServerApp never ran
        if started_ray and ray.is_initialized():
            ray.shutdown()
    report = load_report(out)
    columns = ["request", "round", "client", *COLUMNS] if cfg.withdrawal.requests else COLUMNS
    return {"results": report["results"], "config": report["config"], "columns": columns}


def ray_init_args() -> dict:
    """Flower's `ray.init` arguments when it starts Ray itself: the cluster RAY_ADDRESS names, else a
    private local Ray, as ensure_ray chooses (cluster/ray_env.py). Left to Ray's default, a run would
    join whatever cluster `ray start` (or ray.cluster_utils) last recorded on this machine."""
    return {"include_dashboard": False, "address": ray_address()}


def _end_hung_clients(server_done: threading.Event, engine_done: threading.Event, unanswered: list[int]) -> None:
    server_done.wait()
    if not sum(unanswered) or engine_done.wait(SHUTDOWN_GRACE_S):
        return  # every message was answered: no ClientApp call can still be running
    from fedunlearn.federated.resources import end_client_actors

    log.warning("%d message(s) went unanswered and the simulation engine still waits for a client call; ending "
                "its client actors (Flower then logs the killed actor's ActorDiedError: expected)", sum(unanswered))
    log.info("ended %d Flower client actor(s)", end_client_actors())
