"""The server's script: train with FedAvg, honour the withdrawal, run every method, write the report.

It runs inside the ServerApp (app.py) and talks to clients only through a transport (Flower's
grid, or transport.py's in-process calls). The trained federation and each method's model are
checkpointed under OUT/checkpoints, keyed by the config that produced them, so an interrupted
run resumes. Every method starts from the same trained global model and gets its own message
counter; the report's evaluation is an oracle outside the protocol (report.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
from torch import nn

from fedunlearn import checkpoint, record
from fedunlearn.config import config_hash, to_dict
from fedunlearn.contract import cooperative, hook
from fedunlearn.errors import WithdrawalError
from fedunlearn.experiments.pipeline import cached, run_method, store
from fedunlearn.federated import fedavg
from fedunlearn.federated.client import departing_client
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.monitor import MonitoredTransport
from fedunlearn.federated.resources import ServerWorker
from fedunlearn.federated.rounds import round_lr, run_fedavg
from fedunlearn.federated.store import DiskHistory, make_history
from fedunlearn.federated.withdrawal import Membership
from fedunlearn.models import fresh_model
from fedunlearn.training import get_device

log = logging.getLogger("fedunlearn")


def serve(cfg, transport, out_dir: str | Path, progress: bool = True, server=None) -> dict:
    """`server`: where the server-side work runs (default: a ServerWorker, the server's Ray actor)."""
    if cfg.withdrawal.requests:  # a stream of requests while training goes on
        from fedunlearn.federated.requests import serve_stream

        return serve_stream(cfg, transport, out_dir, progress, server)
    run = serve_setup(cfg, transport, out_dir)
    out, ckpt, transport, make_model = run.out, run.ckpt, run.transport, run.make_model
    seed, fed = run.seed, cfg.federation

    # A rule ("largest" / "median") becomes the client id here, once, for everything below.
    cfg = dataclasses.replace(cfg, withdrawal=dataclasses.replace(cfg.withdrawal, client=departing_client(cfg)))
    base_key = config_hash([cfg.data, cfg.model, fed, cfg.backdoor, cfg.withdrawal.client, cfg.train_rounds, seed,
                            checkpoint.code_key()])
    history_root = out / f"history-{base_key}"
    trained = cached(ckpt / f"federation-{base_key}",
                     lambda: train_federation(cfg, transport, make_model, history_root))
    log.info("trained %d rounds in %.1f s; stored history: %d rounds, %.1f MB", cfg.train_rounds,
             trained["wall_s"], len(trained["history"].rounds), trained["history"].nbytes() / 1e6)

    members = Membership(fed.num_clients)
    remaining = members.withdraw(cfg.withdrawal.client)
    log.info("client %d withdraws after round %d; %d clients remain", cfg.withdrawal.client, cfg.train_rounds,
             len(remaining))

    results = {}
    with (server or ServerWorker(fed.server_gpus, fed.server_cpus)) as server:
        warm_up_methods(cfg, server, run, trained["global_state"], warmed=[])
        reuse = {}  # server work the methods of this withdrawal share (FedContext.reused)
        for name in cfg.method_names():
            method, method_cfg = cfg.method(name), cfg.method_config(name)
            key = config_hash([base_key, name, method_cfg, cfg.withdrawal.departing_online])
            results[name] = cached(ckpt / f"method-{name}-{key}",
                                   lambda method=method, method_cfg=method_cfg, name=name: timed_method(
                                       cfg, method, method_cfg, name, transport, trained, make_model, server,
                                       reuse=reuse))

    purge = purge_client(cfg, trained, ckpt / f"federation-{base_key}") if cfg.withdrawal.purge else {"purged": False}
    trained = {**trained, "purge": purge, "unlearn_log": [r for r in transport.rounds if r["phase"] != "train"]}
    from fedunlearn.federated.report import write_federated_report

    report = write_federated_report(cfg, out, trained, results, make_model, run.device)
    # The request is this run's withdrawal: a rerun (resumed from checkpoints) is the same request.
    record.append(out / "deletions.jsonl", cfg.withdrawal.client, "+".join(cfg.method_names()),
                  record.state_sha256(trained["global_state"]),
                  {name: record.state_sha256(res["state"]) for name, res in results.items()},
                  {row["method"]: {k: v for k, v in row.items() if isinstance(v, (int, float))}
                   for row in report["results"]}, purge, request_id=f"run-{base_key}")
    return {**report, "purge": purge}


@dataclasses.dataclass(frozen=True)
class ServeSetup:
    """What serve and serve_stream (requests.py) share: where results go, the monitored transport,
    the task's shape from the clients' handshake and a seeded model factory."""

    out: Path
    ckpt: Path                    # OUT/checkpoints
    transport: MonitoredTransport
    seed: int
    device: object                # torch.device of the report's evaluation
    num_classes: int
    input_shape: tuple[int, ...]
    make_model: Callable[[], nn.Module]


def serve_setup(cfg, transport, out_dir: str | Path) -> ServeSetup:
    """The server's set-up before any training: fails first if a listed method needs a departing
    client that is offline, then reads the task's shape from the handshake."""
    check_cooperation(cfg)
    transport = MonitoredTransport(transport, cfg.federation.round_timeout_s)
    seed = cfg.experiment.seed
    first = transport.info[min(transport.info)]  # partition id -> {"num_examples", ...} from the handshake
    num_classes, input_shape = int(first["num_classes"]), tuple(int(d) for d in first["input_shape"])
    out = Path(out_dir)
    return ServeSetup(out, out / "checkpoints", transport, seed, get_device(cfg.experiment.device), num_classes,
                      input_shape, functools.partial(fresh_model, cfg.model, input_shape, num_classes, seed))


def warm_up_methods(cfg, server, run: ServeSetup, global_state, warmed: list) -> None:
    """Each listed method's warm_up (if it has one) on the server's worker, with that method's own
    config, once per (warm_up, config) in `warmed`: the worker's start and first steps are the cost
    of a server process, not of the method, and are not timed."""
    for name in cfg.method_names():
        warm_up, method_cfg = hook(cfg.method(name), "warm_up"), cfg.method_config(name)
        if warm_up is not None and (warm_up, method_cfg) not in warmed:
            warm_up(server.start(), run.make_model, global_state, run.num_classes, run.input_shape, run.seed,
                    cfg=method_cfg)
            warmed.append((warm_up, method_cfg))


def timed_method(cfg, method, method_cfg, name, transport, trained, make_model, server, withdrawn=(),
                 reuse: dict | None = None) -> dict:
    """One method on a fresh context; a method faster than experiment.repeat_below_s runs again
    (up to experiment.timing_repeats times, each on a fresh context) and reports the median wall
    time with its spread: a single short timing on a shared machine is mostly noise. `withdrawn`:
    clients that left at earlier requests (a stream), not part of the federation any more.
    `reuse`: the withdrawal's dict of shared server work (FedContext.reused); what a method took
    from it is counted in its wall time at the seconds it took to do. The repeats do all their work
    again (no reuse): a repeat that found its own first run's work would time nothing."""

    def once(reuse):
        ctx = FedContext.create(cfg, transport, trained, make_model, server=server, withdrawn=withdrawn, reuse=reuse)
        result, row = run_method(method, ctx, method_cfg,
                                 measure=lambda res: {"rounds": res.rounds, **vars(ctx.traffic)})
        row["wall_s"] += row.get("reused_s", 0.0)
        return result, row

    result, row = once(reuse)
    walls = [row["wall_s"]]
    while walls[0] < cfg.experiment.repeat_below_s and len(walls) < cfg.experiment.timing_repeats:
        walls.append(once(None)[1]["wall_s"])
    row.update(wall_s=float(np.median(walls)), wall_s_spread=max(walls) - min(walls), wall_repeats=len(walls),
               server_reserved_cpus=float(getattr(server, "reserved_cpus", 0.0)))
    log.info("%s: %.2f s (median of %d), %d rounds, %d messages to remaining clients", name, row["wall_s"],
             len(walls), row["rounds"], row["messages_to_remaining"])
    return {"state": result.state, "curve": result.curve, "row": row}


def purge_client(cfg, trained: dict, checkpoint_path: Path) -> dict:
    """Once every method has run: delete the departing client's stored updates from the history
    and rewrite the training checkpoint that pickled them (an in-memory history)."""
    purge = trained["history"].purge(cfg.withdrawal.client)
    store(checkpoint_path, trained)
    log.info("purged client %d's stored updates: %s", cfg.withdrawal.client, purge)
    return purge


def train_federation(cfg, transport, make_model, history_root: Path, clients: list[int] | None = None,
                     rounds: int | None = None) -> dict:
    """FedAvg over `clients` (default: every client) for `rounds` (default: cfg.train_rounds);
    keeps the history, each round's global model and any failures (with their causes and how
    many clients each round used, when the transport is monitored)."""
    fed = cfg.federation
    clients = list(range(fed.num_clients)) if clients is None else list(clients)
    rounds = cfg.train_rounds if rounds is None else rounds
    logged = len(getattr(transport, "rounds", []))
    initial = fedavg.copy_state(make_model().state_dict())
    history = make_history(fed.history, history_root, fed.store_every, fed.history_dtype, fed.history_topk)
    if isinstance(history, DiskHistory):
        history.set_model("initial", initial)

    def fit(ids, state, config):
        return fedavg.aggregate_replies(state, transport.train(ids, state, {**config, "phase": "train"}))

    start = time.perf_counter()
    state, history, curve, failures = run_fedavg(fit, clients, initial, rounds,
                                                 fed.store_every, desc="training", history=history,
                                                 per_round=fed.clients_per_round, seed=cfg.experiment.seed,
                                                 lr_at=round_lr(fed))
    if isinstance(history, DiskHistory):
        history.set_model("final", state)
    return {"global_state": state, "initial_state": initial, "history": history, "curve": curve,
            "failures": failures, "wall_s": time.perf_counter() - start,
            "round_log": list(getattr(transport, "rounds", []))[logged:],
            "model_bytes": fedavg.state_nbytes(state), "config": to_dict(fed)}


def check_cooperation(cfg) -> None:
    """Fail before training if a listed method needs a departing client that is offline."""
    if cfg.withdrawal.departing_online:
        return
    needs = [m for m in cfg.method_names() if cooperative(cfg.method(m))]
    if needs:
        raise WithdrawalError(
            f"withdrawal.departing_online = false, but {', '.join(needs)} need(s) the departing client to take part; "
            "remove them from experiment.methods or set withdrawal.departing_online = true")
