"""The server's script: train with FedAvg, honour the withdrawal, run every method, write the report.

It runs inside the ServerApp (app.py) and talks to clients only through a transport (Flower's
grid, or transport.py's in-process calls). The trained federation and each method's model are
checkpointed under OUT/checkpoints, keyed by the config that produced them, so an interrupted
run resumes. Every method starts from the same trained global model and gets its own message
counter; the report's evaluation is an oracle outside the protocol (report.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fedunlearn import checkpoint, record
from fedunlearn.config import config_hash, to_dict
from fedunlearn.contract import cooperative, hook
from fedunlearn.errors import WithdrawalError
from fedunlearn.experiments.pipeline import cached, run_method
from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.monitor import MonitoredTransport
from fedunlearn.federated.resources import ServerWorker
from fedunlearn.federated.rounds import run_fedavg
from fedunlearn.federated.store import DiskHistory, make_history
from fedunlearn.federated.withdrawal import Membership
from fedunlearn.models import build_model
from fedunlearn.training import get_device, seed_everything

log = logging.getLogger("fedunlearn")


def serve(cfg, transport, out_dir: str | Path, progress: bool = True) -> dict:
    out = Path(out_dir)
    ckpt = out / "checkpoints"
    transport = MonitoredTransport(transport, cfg.federation.round_timeout_s)
    seed, fed = cfg.experiment.seed, cfg.federation
    device = get_device(cfg.experiment.device)
    check_cooperation(cfg)
    info = transport.info  # partition id -> {"num_examples", ...} from the handshake
    first = info[min(info)]
    num_classes, input_shape = int(first["num_classes"]), tuple(int(d) for d in first["input_shape"])

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, input_shape, num_classes)

    base_key = config_hash([cfg.data, cfg.model, fed, cfg.backdoor, cfg.withdrawal.client, cfg.train_rounds, seed])
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
    with ServerWorker(fed.server_gpus) as server:
        # A method that works on the server's Ray worker has a warm_up: the worker's start and
        # first steps are the cost of a server process, not of the method, and are not timed.
        for warm_up in {hook(cfg.method(name), "warm_up") for name in cfg.method_names()} - {None}:
            warm_up(server.start(), make_model, trained["global_state"], num_classes, input_shape, seed)
        for name in cfg.method_names():
            method, method_cfg = cfg.method(name), cfg.method_config(name)
            key = config_hash([base_key, name, method_cfg, cfg.withdrawal.departing_online])
            ctx = FedContext.create(cfg, transport, trained, make_model, server=server)
            result, row = run_method(method, ctx, method_cfg, ckpt / f"method-{name}-{key}",
                                     measure=lambda res, ctx=ctx: {"rounds": res.rounds, **vars(ctx.traffic)})
            log.info("%s: %.1f s, %d rounds, %d messages to remaining clients", name, row["wall_s"], row["rounds"],
                     row["messages_to_remaining"])
            results[name] = {"state": result.state, "curve": result.curve, "row": row}

    purge = purge_client(cfg, trained, ckpt / f"federation-{base_key}") if cfg.withdrawal.purge else {"purged": False}
    trained = {**trained, "purge": purge, "unlearn_log": [r for r in transport.rounds if r["phase"] != "train"]}
    from fedunlearn.federated.report import write_federated_report

    report = write_federated_report(cfg, out, trained, results, make_model, device)
    record.append(out / "deletions.jsonl", cfg.withdrawal.client, "+".join(cfg.method_names()),
                  record.state_sha256(trained["global_state"]),
                  {name: record.state_sha256(res["state"]) for name, res in results.items()},
                  {row["method"]: {k: v for k, v in row.items() if isinstance(v, (int, float))}
                   for row in report["results"]}, purge)
    return {**report, "purge": purge}


def purge_client(cfg, trained: dict, checkpoint_path: Path) -> dict:
    """Once every method has run: delete the departing client's stored updates from the history
    and rewrite the training checkpoint that pickled them (an in-memory history)."""
    purge = trained["history"].purge(cfg.withdrawal.client)
    checkpoint.save(checkpoint_path, trained)
    log.info("purged client %d's stored updates: %s", cfg.withdrawal.client, purge)
    return purge


def train_federation(cfg, transport, make_model, history_root: Path) -> dict:
    """FedAvg over every client; keeps the history, each round's global model and any failures
    (with their causes and how many clients each round used, when the transport is monitored)."""
    fed = cfg.federation
    initial = fedavg.copy_state(make_model().state_dict())
    history = make_history(fed.history, history_root, fed.store_every, fed.history_dtype)
    if isinstance(history, DiskHistory):
        history.set_model("initial", initial)

    def fit(ids, state, config):
        return fedavg.aggregate_replies(state, transport.train(ids, state, {**config, "phase": "train"}))

    start = time.perf_counter()
    state, history, curve, failures = run_fedavg(fit, list(range(fed.num_clients)), initial, cfg.train_rounds,
                                                 fed.store_every, desc="training", history=history)
    if isinstance(history, DiskHistory):
        history.set_model("final", state)
    return {"global_state": state, "initial_state": initial, "history": history, "curve": curve,
            "failures": failures, "wall_s": time.perf_counter() - start,
            "round_log": list(getattr(transport, "rounds", [])),
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
