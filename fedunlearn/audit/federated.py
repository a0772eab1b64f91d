"""An audited federated withdrawal: N federations, two retrain ensembles, every method on each.

For i in 0..N-1 (s = experiment.seed): federation i trains with FedAvg on every client from
its own initialisation and local-training seed s+i (the original); retrain i of the reference
ensemble (seed s+N+i) and of the noise-floor ensemble (s+2N+i) train from scratch on the
remaining clients only; each listed method runs on federation i. The data, the partition, the
departing client and its backdoor stay those of seed s, so every model is probed on the same
forget set: the departing client's training data. Each federation (its methods one after
another on the same core, as in the scenario matrix) and each retrain is one Ray task, with
the clients run in process. Rows and metrics are the centralized audit's
(fedunlearn.audit.report): U-LiRA (Hayes et al., SaTML 2025) and KLoM (Georgiev et al., 2025)
against the reference retrains, the federated metrics as mean and _std over the seeds.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fedunlearn import checkpoint
from fedunlearn.audit.ensemble import ORIGINAL, RETRAIN_A, RETRAIN_B, Member, logits_on
from fedunlearn.audit.report import AUDIT_FIELDS, audit_row, tradeoff_plot
from fedunlearn.config import config_hash, to_dict
from fedunlearn.errors import WithdrawalError
from fedunlearn.experiments.pipeline import load_cached, store
from fedunlearn.federated.client import answer_query, departing_client, federation_data, local_data, local_train
from fedunlearn.federated.transport import LocalTransport

log = logging.getLogger("fedunlearn")

COLUMNS = ["method", *AUDIT_FIELDS, "test_acc", "test_acc_std", "forget_acc", "forget_acc_std", "backdoor_asr",
           "backdoor_asr_std", "retain_acc", "mia_efficacy", "js_to_retrain", "avg_gap", "speedup", "rounds",
           "messages_to_remaining", "wall_s", "skipped"]


@dataclass(frozen=True)
class FedJob:
    role: str            # original (the federation and every method on it) | retrain_a | retrain_b
    index: int
    seed: int


class SeededTransport(LocalTransport):
    """In-process clients whose local training draws from `seed` instead of the data's seed:
    the same clients and data, another run of the federation."""

    def __init__(self, cfg, seed: int):
        super().__init__(cfg)
        self.seed = seed
        self.rounds: list[dict] = []  # driver.serve reads it; no monitor here

    def _local(self, cid: int):
        return dataclasses.replace(local_data(self.cfg, cid), seed=self.seed)

    def train(self, client_ids, state, config):
        replies = {}
        for cid in client_ids:
            try:
                replies[cid] = local_train(self.cfg, self._local(cid), state, config)
            except Exception as err:  # noqa: BLE001 -- a failing client must not stop the round
                replies[cid] = err
        return replies

    def query(self, client_id, name, state, config):
        return answer_query(self._local(client_id), name, state, config)


def seeded(cfg, seed: int):
    """`cfg` whose run randomness (initial model, client sampling, methods' draws) is `seed`."""
    return dataclasses.replace(cfg, experiment=dataclasses.replace(cfg.experiment, seed=seed))


def model_factory(cfg, seed: int, input_shape, num_classes):
    from fedunlearn.models import build_model
    from fedunlearn.training import seed_everything

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, input_shape, num_classes)

    return make_model


def retrain_remaining(cfg, seed: int, sampling_seed: int | None = None, phase: str = "retrain",
                      desc: str = "retrain"):
    """FedAvg from scratch on every client but cfg.withdrawal.client (an id), for the retrain
    method's rounds: the initial model and each client's local training (shuffling) are drawn from
    `seed`, the clients of each round (partial participation) from `sampling_seed` (default: `seed`).
    `phase` is the round config's phase, part of each local training's seed (the driver's retrain
    method trains in phase "unlearn"). Returns (state, wall_s, rounds, make_model). Plain Python,
    without Ray: the audit's retrain ensembles and the matrix's second retraining
    (experiments/matrix_floor.py) both run it."""
    from fedunlearn.federated.fedavg import aggregate_replies, copy_state
    from fedunlearn.federated.rounds import round_lr, run_fedavg

    transport, data, fed = SeededTransport(cfg, seed), federation_data(cfg)[0], cfg.federation
    make_model = model_factory(cfg, seed, data.input_shape, data.num_classes)
    remaining = [c for c in range(fed.num_clients) if c != cfg.withdrawal.client]
    rounds = cfg.method_config("retrain").rounds or cfg.train_rounds

    def fit(ids, state, config):
        return aggregate_replies(state, transport.train(ids, state, {**config, "phase": phase}))

    start = time.perf_counter()
    state, _, _, _ = run_fedavg(fit, remaining, copy_state(make_model().state_dict()), rounds, desc=desc,
                                per_round=fed.clients_per_round, seed=seed if sampling_seed is None else sampling_seed,
                                lr_at=round_lr(fed))
    return state, time.perf_counter() - start, rounds, make_model


def probe(cfg, role: str, index: int, state: dict, make_model, wall_s: float, stats: dict | None = None) -> Member:
    """The oracle's evaluation of one global model and its logits on the audit's sets."""
    from fedunlearn.cluster.ray_env import worker_device
    from fedunlearn.federated.report import oracle_splits
    from fedunlearn.metrics import evaluate

    device = worker_device()
    splits, val = oracle_splits(cfg), federation_data(cfg)[0].val
    model = make_model()
    model.load_state_dict(state)
    row, _ = evaluate(model, splits, device, cfg.eval, seed=cfg.experiment.seed)
    if "backdoor_acc" in row:
        row["backdoor_asr"] = row.pop("backdoor_acc")
    sets = {"forget": splits.forget, "retain": splits.retain, "test": splits.test, **({"val": val} if val else {})}
    return Member(role, index, state, wall_s, dict(stats or {}), row,
                  {name: logits_on(model, data, device) for name, data in sets.items()})


def fed_member(job: FedJob, mapping: dict, methods: list[str]) -> list[Member]:
    """One Ray task: a retrain of the remaining clients, or a federation and every method on it.
    Plain Python: runs without Ray."""
    from fedunlearn.config import build
    from fedunlearn.contract import hook
    from fedunlearn.experiments.federated_matrix import InlineServer
    from fedunlearn.federated.config import Config
    from fedunlearn.federated.driver import timed_method, train_federation

    cfg = build(Config, mapping)
    if job.role in (RETRAIN_A, RETRAIN_B):
        state, wall_s, rounds, make_model = retrain_remaining(cfg, job.seed, desc=job.role)
        return [probe(cfg, job.role, job.index, state, make_model, wall_s, {"rounds": rounds})]
    run_cfg, transport = seeded(cfg, job.seed), SeededTransport(cfg, job.seed)
    data = federation_data(cfg)[0]
    make_model = model_factory(cfg, job.seed, data.input_shape, data.num_classes)
    with tempfile.TemporaryDirectory(prefix="fed-audit-") as tmp:
        trained = train_federation(run_cfg, transport, make_model, Path(tmp) / "history")
        members = [probe(cfg, ORIGINAL, job.index, trained["global_state"], make_model, trained["wall_s"],
                          {"rounds": cfg.train_rounds})]
        server, warmed, reuse = InlineServer(), [], {}  # reuse: server work the methods share (FedContext.reused)
        for name in methods:
            warm_up, method_cfg = hook(run_cfg.method(name), "warm_up"), run_cfg.method_config(name)
            try:
                if warm_up is not None and (warm_up, method_cfg) not in warmed:
                    warm_up(server, make_model, trained["global_state"], data.num_classes, data.input_shape,
                            job.seed, cfg=method_cfg)
                    warmed.append((warm_up, method_cfg))
                res = timed_method(run_cfg, run_cfg.method(name), method_cfg, name, transport, trained, make_model,
                                    server, reuse=reuse)
            except Exception as err:  # noqa: BLE001 -- one broken method must not cost every other row
                members.append(Member(name, job.index, {}, float("nan"), skipped=f"failed: {type(err).__name__}: {err}"))
                continue
            row = res["row"]
            stats = {k: v for k, v in row.items()
                     if k != "wall_s" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            members.append(probe(cfg, name, job.index, res["state"], make_model, row["wall_s"], stats))
    return members


def audit_methods(cfg) -> list[str]:
    from fedunlearn.contract import cooperative

    methods = [m for m in (cfg.audit.methods or cfg.experiment.methods) if m != "retrain"]
    needs = [m for m in methods if cooperative(cfg.method(m))]
    if needs and not cfg.withdrawal.departing_online:
        raise WithdrawalError(f"withdrawal.departing_online = false, but the audit lists {', '.join(needs)}, which "
                              "need(s) the departing client; remove them from audit.methods / experiment.methods")
    for name in methods:
        cfg.method_config(name)  # a bad [methods.<name>] section fails here, before any Ray task
    return methods


def run_federated_audit(cfg, out_dir: str | Path, progress: bool = True) -> dict:
    """`cfg` is a federated Config with cfg.audit.models > 0."""
    import ray

    from fedunlearn.cluster import current_resources, fan_out, ray_session

    methods = audit_methods(cfg)
    data, parts = federation_data(cfg)  # a partition that leaves a client empty fails before Ray starts
    cfg = dataclasses.replace(cfg, withdrawal=dataclasses.replace(cfg.withdrawal, client=departing_client(cfg)))
    audit, seed, n = cfg.audit, cfg.experiment.seed, cfg.audit.models
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = ([FedJob(ORIGINAL, i, seed + i) for i in range(n)] + [FedJob(RETRAIN_A, i, seed + n + i) for i in range(n)]
            + [FedJob(RETRAIN_B, i, seed + 2 * n + i) for i in range(n)])
    # Every task is checkpointed as it finishes, keyed by what produced it: a stopped audit resumes.
    ckpt = out / "checkpoints"
    exp = cfg.experiment
    key = config_hash([cfg.data, cfg.model, cfg.federation, cfg.withdrawal, cfg.backdoor, cfg.eval, exp.seed,
                       exp.timing_repeats, exp.repeat_below_s, exp.device, methods,
                       [cfg.method_config(name) for name in ["retrain", *methods]], checkpoint.code_key()])
    paths = [ckpt / f"audit-{job.role}-{job.index}-{config_hash([key, job])}" for job in jobs]
    done = [load_cached(path) for path in paths]
    todo = [i for i, hit in enumerate(done) if hit is None]
    start = time.perf_counter()
    if todo:
        with ray_session(audit.cluster):
            mapping = ray.put(to_dict(cfg))
            log.info("federated audit: %d federations with %s, %d retrains (%d tasks to run)", n,
                     ", ".join(methods) or "no method", 2 * n, len(todo))

            def keep(i, members):
                done[todo[i]] = members
                store(paths[todo[i]], members)

            fan_out(fed_member, [(jobs[i], mapping, methods) for i in todo], audit.cluster,
                    resources=current_resources(audit.cluster), desc="federated audit", progress=progress,
                    on_result=keep)
    seconds = time.perf_counter() - start
    by_role: dict[str, list[Member]] = {}
    for m in (m for members in done for m in members):
        by_role.setdefault(m.role, []).append(m)
    from fedunlearn.federated.report import oracle_splits

    splits = oracle_splits(cfg)
    labels = {"forget": splits.forget.y, "retain": splits.retain.y}
    if data.val is not None:
        labels["val"] = data.val.y
    ref = by_role[RETRAIN_A]
    rows = [audit_row(name, by_role[role], ref, labels, audit.klom_fit)
            for name, role in [("original", ORIGINAL), *[(m, m) for m in methods], ("retrain", RETRAIN_B)]]
    client = cfg.withdrawal.client
    label = f"client {client} withdraws ({len(parts[client])} samples)"
    for r in rows:
        r["forget"] = label
    plot = tradeoff_plot(rows, label, out / "audit_withdrawal.png")
    floor = rows[-1]
    notes = [f"{n} federations per ensemble: originals seeds {seed}..{seed + n - 1}, reference retrains "
             f"{seed + n}..{seed + 2 * n - 1}, noise-floor retrains {seed + 2 * n}..{seed + 3 * n - 1}; the data, "
             f"partition and client {client}'s backdoor are those of seed {seed} in every one",
             f"forget set: client {client}'s training data ({len(parts[client])} samples, "
             f"{cfg.backdoor.fraction:.0%} backdoored); retain: a sample of the remaining clients' data "
             f"({len(labels['retain'])}); validation split: {len(data.val) if data.val is not None else 0}; "
             f"test set: {len(data.test)}",
             "U-LiRA and KLoM compare each row's models with the reference retrains; the row `retrain` is the "
             "second retrain ensemble (the noise floor); other metrics are mean (and _std) over the seeds",
             f"noise floor: U-LiRA AUC {floor['ulira_auc']:.3f}, KLoM forget {floor['klom_forget']:.3f}; "
             f"original: U-LiRA AUC {rows[0]['ulira_auc']:.3f}, KLoM forget {rows[0]['klom_forget']:.3f}",
             "each federation (with its methods) and each retrain is one Ray task with in-process clients; speedup "
             "compares wall times measured in different tasks on a shared machine",
             f"whole audit: {seconds:.0f} s wall"
             + (f" ({len(jobs) - len(todo)} of {len(jobs)} tasks reused from checkpoints)" if len(todo) < len(jobs) else "")]
    from fedunlearn.metrics import write_report

    write_report(out, f"{cfg.experiment.name}: forgetting audit of a federated withdrawal on {data.name}",
                 to_dict(cfg), rows, extra={"forget_sizes": {label: len(parts[client])}, "audit_fields": AUDIT_FIELDS,
                                            "wall_s": seconds, "departing_client": client},
                 notes=notes, columns=COLUMNS, plots=[str(plot)])
    return {"results": rows, "config": to_dict(cfg), "columns": COLUMNS}

