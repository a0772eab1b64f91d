"""The server's script: train with FedAvg, honour the withdrawal, run every method, write the report.

It runs inside the ServerApp (app.py) and talks to clients only through a transport (Flower's
grid, or local.py's in-process calls). The trained federation and each method's model are
checkpointed under OUT/checkpoints, keyed by the config that produced them, so an interrupted
run resumes. Every method starts from the same trained global model and gets its own message
counter; the report's evaluation is an oracle outside the protocol (report.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from fedunlearn import checkpoint
from fedunlearn.config import config_hash, to_dict
from fedunlearn.errors import WithdrawalError
from fedunlearn.federated import fedavg
from fedunlearn.federated.client import departing_client
from fedunlearn.federated.context import FedContext, aggregate_replies
from fedunlearn.federated.history import state_nbytes
from fedunlearn.federated.methods import load_method
from fedunlearn.federated.resources import ServerWorker
from fedunlearn.federated.rounds import run_fedavg
from fedunlearn.federated.withdrawal import Membership
from fedunlearn.models import build_model
from fedunlearn.training import get_device, seed_everything

log = logging.getLogger("fedunlearn")


def serve(cfg, transport, out_dir: str | Path, progress: bool = True, server=None) -> dict:
    """`server`: where the server-side work runs (default: a ServerWorker, the server's Ray actor)."""
    out = Path(out_dir)
    ckpt = out / "checkpoints"
    seed, fed = cfg.experiment.seed, cfg.federation
    device = get_device(cfg.experiment.device)
    check_cooperation(cfg)
    info = transport.info  # partition id -> {"num_examples", ...} from the handshake
    first = info[min(info)]
    num_classes, input_shape = int(first["num_classes"]), tuple(int(d) for d in first["input_shape"])

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, input_shape, num_classes)

    departing = departing_client(cfg)
    base_key = config_hash([cfg.data, cfg.model, fed, cfg.backdoor, departing, cfg.train_rounds, seed,
                            checkpoint.code_key()])
    trained = _cached(ckpt / f"federation-{base_key}", lambda: train_federation(cfg, transport, make_model))
    log.info("trained %d rounds in %.1f s; stored history: %d rounds, %.1f MB", cfg.train_rounds,
             trained["wall_s"], len(trained["history"].rounds), trained["history"].nbytes() / 1e6)

    members = Membership(fed.num_clients)
    remaining = members.withdraw(departing)
    log.info("client %d withdraws after round %d; %d clients remain", departing, cfg.train_rounds,
             len(remaining))

    results = {}
    with (server or ServerWorker(fed.server_gpus, fed.server_cpus)) as server:
        # A method that works on the server's Ray worker has a warm_up, run with that method's own
        # config: the worker's start and first steps are the cost of a server process, not of the
        # method, and are not timed.
        warmed = []
        for name in cfg.method_names():
            warm_up, method_cfg = getattr(load_method(name), "warm_up", None), cfg.method_config(name)
            if warm_up is not None and (warm_up, method_cfg) not in warmed:
                warm_up(server.start(), make_model, trained["global_state"], num_classes, input_shape, seed,
                        cfg=method_cfg)
                warmed.append((warm_up, method_cfg))
        for name in cfg.method_names():
            module, method_cfg = load_method(name), cfg.method_config(name)
            key = config_hash([base_key, name, method_cfg, cfg.withdrawal.departing_online])

            def once(module=module, method_cfg=method_cfg):
                ctx = FedContext(
                    global_state=fedavg.copy_state(trained["global_state"]),
                    initial_state=fedavg.copy_state(trained["initial_state"]), history=trained["history"],
                    departing=departing, remaining=list(remaining), num_clients=fed.num_clients,
                    num_classes=num_classes, input_shape=input_shape, make_model=make_model, fed_cfg=fed,
                    device=device, transport=transport, departing_online=cfg.withdrawal.departing_online,
                    train_rounds=cfg.train_rounds, sample_counts={c: int(v["num_examples"]) for c, v in info.items()},
                    seed=seed, server=server)
                start = time.perf_counter()
                result = module.unlearn(ctx, method_cfg)
                return result, ctx, time.perf_counter() - start

            def work(once=once, name=name):
                result, ctx, wall = once()
                walls = [wall]
                # a short method's single wall time is mostly noise on a shared machine: repeat it
                while wall < cfg.experiment.repeat_below_s and len(walls) < cfg.experiment.timing_repeats:
                    walls.append(once()[2])
                row = {"wall_s": float(np.median(walls)), "wall_s_spread": max(walls) - min(walls),
                       "wall_repeats": len(walls), "rounds": result.rounds, **vars(ctx.traffic), **result.stats,
                       "server_reserved_cpus": float(getattr(server, "reserved_cpus", 0.0))}
                log.info("%s: %.2f s (median of %d), %d rounds, %d messages to remaining clients", name,
                         row["wall_s"], len(walls), result.rounds, ctx.traffic.messages_to_remaining)
                return {"state": result.state, "curve": result.curve, "row": row}

            results[name] = _cached(ckpt / f"method-{name}-{key}", work)

    from fedunlearn.federated.report import write_federated_report

    return write_federated_report(cfg, out, trained, results, make_model, device)


def train_federation(cfg, transport, make_model) -> dict:
    """FedAvg over every client; keeps the history, each round's global model and any failures."""
    fed = cfg.federation
    initial = fedavg.copy_state(make_model().state_dict())

    def fit(ids, state, config):
        return aggregate_replies(state, transport.train(ids, state, {**config, "phase": "train"}))

    start = time.perf_counter()
    state, history, curve, failures = run_fedavg(fit, list(range(fed.num_clients)), initial, cfg.train_rounds,
                                                 fed.store_every, desc="training", per_round=fed.clients_per_round,
                                                 seed=cfg.experiment.seed)
    return {"global_state": state, "initial_state": initial, "history": history, "curve": curve,
            "failures": failures, "wall_s": time.perf_counter() - start,
            "model_bytes": state_nbytes(state), "config": to_dict(fed)}


def check_cooperation(cfg) -> None:
    """Fail before training if a listed method needs a departing client that is offline."""
    if cfg.withdrawal.departing_online:
        return
    needs = [m for m in cfg.method_names() if getattr(load_method(m), "COOPERATIVE", False)]
    if needs:
        raise WithdrawalError(
            f"withdrawal.departing_online = false, but {', '.join(needs)} need(s) the departing client to take part; "
            "remove them from experiment.methods or set withdrawal.departing_online = true")


def _cached(path: Path, work) -> dict:
    cached = checkpoint.load_or_none(path)
    if cached is not None:
        log.info("reusing checkpoint %s", path.name)
        return cached[0]
    value = work()
    checkpoint.save(path, value)
    return value
