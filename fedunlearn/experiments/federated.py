"""The federated kind: client withdrawal, run by `fedunlearn run` on Flower's simulation engine (Ray).

`run` builds the ServerApp and ClientApp around the validated config and hands them to
`flwr.simulation.run_simulation`: one SuperNode per client, client resources chosen from what
the machine has. The ServerApp does all the work (federated/driver.py) and writes the report; this
function returns what it wrote. Ray is reused when it already runs, started (and stopped
afterwards) when it does not.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedunlearn.config import to_dict
from fedunlearn.federated.config import Config
from fedunlearn.federated.report import COLUMNS

log = logging.getLogger("fedunlearn")


def run(cfg: Config, out_dir: str | Path, progress: bool = True) -> dict:
    import ray
    from flwr.simulation import run_simulation

    from fedunlearn.federated.app import make_client_app, make_server_app
    from fedunlearn.federated.client import federation_data
    from fedunlearn.federated.driver import check_cooperation
    from fedunlearn.federated.resources import client_resources
    from fedunlearn.metrics.report import load_report

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
    try:
        run_simulation(server_app=make_server_app(mapping, str(out), progress), client_app=make_client_app(mapping),
                       num_supernodes=cfg.federation.num_clients,
                       backend_config={"client_resources": resources, "init_args": {"include_dashboard": False}})
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    report = load_report(out)
    columns = ["request", "round", "client", *COLUMNS] if cfg.withdrawal.requests else COLUMNS
    return {"results": report["results"], "config": report["config"], "columns": columns}
