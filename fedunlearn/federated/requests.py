"""A stream of withdrawals: several clients leave at given rounds while training goes on.

`[[withdrawal.requests]]` lists (client, round) pairs. At request k (client c_k after round r_k)
the federation's global model G_k is what training without every client withdrawn so far has
made of it by round r_k; every listed method removes c_k from that same G_k, and retrain
(FedAvg from round 0 without c_1..c_k) is the reference. The federation then continues from the
reference: G_{k+1} is FedAvg from round 0 over the clients still in, carried on to round r_{k+1},
the federation retraining gives, trained on. The driver recomputes it (same clients, same seeded
sampling as the retrain row; the clients' local shuffles differ) with its own stored history, so
the next request's methods hold the updates they need (the retrain method records none). Each row of the report is one (request, method) pair judged against that
request's retrain, so methods are compared on the same model; a method's error is not carried
into the next request. A withdrawn client is in no later round and cannot be asked anything.

After each request every stored update of c_k is deleted from every history the server still
holds (`withdrawal.purge`), and the deletion record gets one entry per request.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from fedunlearn import checkpoint, record
from fedunlearn.config import config_hash
from fedunlearn.experiments.pipeline import cached, store
from fedunlearn.federated.client import stream_requests
from fedunlearn.federated.resources import ServerWorker

log = logging.getLogger("fedunlearn")


def request_config(cfg, client: int, rnd: int):
    """The single-request config of one request: `client` leaves after round `rnd`."""
    return dataclasses.replace(cfg, withdrawal=dataclasses.replace(cfg.withdrawal, client=client, after_round=rnd,
                                                                   requests=()))


def serve_stream(cfg, transport, out_dir: str | Path, progress: bool = True, server=None) -> dict:
    from fedunlearn.federated.driver import serve_setup, timed_method, train_federation, warm_up_methods
    from fedunlearn.federated.stream_report import StreamReport

    run = serve_setup(cfg, transport, out_dir)
    out, ckpt, transport, make_model = run.out, run.ckpt, run.transport, run.make_model
    seed, fed = run.seed, cfg.federation
    requests = stream_requests(cfg)  # a client named twice fails here, before any training
    stream_key = config_hash([cfg.data, cfg.model, fed, cfg.backdoor, requests, seed, checkpoint.code_key()])
    report = StreamReport(cfg, out, requests, make_model, run.device)
    held: list[tuple[dict, Path]] = []  # every trained federation whose history the server still holds
    withdrawn: list[int] = []
    with (server or ServerWorker(fed.server_gpus, fed.server_cpus)) as server:
        warmed = []
        for k, (client, rnd, _) in enumerate(requests, 1):
            cfg_k = request_config(cfg, client, rnd)
            clients = [c for c in range(fed.num_clients) if c not in withdrawn]
            key = config_hash([stream_key, k])
            path = ckpt / f"federation-{key}"
            trained = cached(path, lambda: train_federation(cfg_k, transport, make_model, out / f"history-{key}",
                                                            clients=clients, rounds=rnd))
            held.append((trained, path))
            log.info("request %d: client %d withdraws after round %d; %d clients were in, %d remain", k, client, rnd,
                     len(clients), len(clients) - 1)
            warm_up_methods(cfg, server, run, trained["global_state"], warmed)  # once per method config
            results, reuse = {}, {}  # reuse: server work this request's methods share (FedContext.reused)
            for name in cfg.method_names():
                method, method_cfg = cfg.method(name), cfg.method_config(name)
                mkey = config_hash([key, name, method_cfg, cfg.withdrawal.departing_online])
                results[name] = cached(ckpt / f"method-{name}-{mkey}", lambda method=method, method_cfg=method_cfg,
                                       name=name: timed_method(cfg_k, method, method_cfg, name, transport, trained,
                                                               make_model, server, withdrawn=tuple(withdrawn),
                                                               reuse=reuse))
            rows = report.add_request(k, cfg_k, trained, results, withdrawn=[*withdrawn, client])
            purge = purge_everywhere(client, held) if cfg.withdrawal.purge else {"purged": False}
            record.append(out / "deletions.jsonl", client, "+".join(cfg.method_names()),
                          record.state_sha256(trained["global_state"]),
                          {name: record.state_sha256(res["state"]) for name, res in results.items()},
                          {row["method"]: {c: v for c, v in row.items() if isinstance(v, (int, float))}
                           for row in rows}, purge)
            report.purges.append({"request": k, "client": client, **purge})
            withdrawn.append(client)
    return report.write()


def purge_everywhere(client: int, held: list[tuple[dict, Path]]) -> dict:
    """Delete `client`'s stored updates from every history held (the federations trained before
    its request all hold some) and rewrite their training checkpoints without them."""
    done = []
    for trained, path in held:
        done.append(trained["history"].purge(client))
        store(path, trained)
    log.info("purged client %d's stored updates from %d histories", client, len(held))
    return {"client": int(client), "histories": len(done), "purged": all(d.get("purged") for d in done),
            "updates_deleted": sum(int(d.get("updates_deleted", d.get("files_deleted", 0))) for d in done)}
