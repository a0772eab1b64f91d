"""The report of a stream of withdrawals: one row per (request, method), curves over rounds.

Each request is judged by the oracle of report.py (outside the federation) on its own splits:
forget accuracy and MIA on that request's client's data, retain accuracy on the data of the
clients still in after it, backdoor success on triggered test inputs; every row is compared
with that request's retrain. The plot follows the federation (which continues as retraining leaves
it after each request) round by round, and each method's model at each request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedunlearn.config import to_dict
from fedunlearn.data import ArrayDataset, triggered_test
from fedunlearn.experiments.pipeline import evaluate_against_reference
from fedunlearn.federated.client import federation_data, local_data
from fedunlearn.federated.report import COLUMNS, _num_classes, curve_sets, forgotten, quick_point
from fedunlearn.metrics import Splits, write_report
from fedunlearn.metrics.plots import curves

STREAM_COLUMNS = ["request", "round", "client", *COLUMNS]


class StreamReport:
    def __init__(self, cfg, out: Path, requests: list[tuple[int, int, bool]], make_model, device):
        self.cfg, self.out, self.requests, self.make_model, self.device = cfg, out, requests, make_model, device
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.purges: list[dict] = []
        self.round_log: list[dict] = []
        self.federation: list[tuple[int, tuple[float, float]]] = []  # (round, curve point) of the federation
        self.points: dict[str, list[tuple[int, tuple[float, float]]]] = {}  # method -> (round, point) per request
        self.history_bytes: list[int] = []
        data, _ = federation_data(cfg)
        backdoor = cfg.backdoor.fraction > 0
        self.test = data.test
        self.backdoor = ArrayDataset(*triggered_test(data.test.x, data.test.y, cfg.backdoor)) if backdoor else None
        self.curve_test, self.curve_backdoor = curve_sets(self.splits(requests[0][0], []), cfg.experiment.seed)

    def splits(self, client: int, withdrawn: list[int]) -> Splits:
        """Forget: the request's client's data (as it trained on it); retain: the clients still in."""
        _, parts = federation_data(self.cfg)
        gone = {client, *withdrawn}
        others = np.sort(np.concatenate([p for c, p in enumerate(parts) if c not in gone]))
        size = self.cfg.eval.eval_retain_size
        if size and len(others) > size:
            others = np.sort(np.random.default_rng(self.cfg.experiment.seed).choice(others, size, replace=False))
        extra = {"backdoor": self.backdoor} if self.backdoor is not None else {}
        return Splits(retain=federation_data(self.cfg)[0].train.subset(others),
                      forget=local_data(self.cfg, client).train, test=self.test, extra=extra)

    def model_of(self, state):
        model = self.make_model()
        model.load_state_dict(state)
        return model.to(self.device).eval()

    def add_request(self, k: int, cfg_k, trained: dict, results: dict, withdrawn: list[int]) -> list[dict]:
        """Judge every method of request k; returns its rows (original first, then retrain)."""
        client, rnd, attacker = self.requests[k - 1]
        splits = self.splits(client, withdrawn)
        entries = [("retrain", results["retrain"]), ("original", {"state": trained["global_state"], "row": {
            "wall_s": trained["wall_s"], "rounds": rnd}})]
        entries += [(name, res) for name, res in results.items() if name != "retrain"]
        judged = [row for row, _ in evaluate_against_reference(
            ((name, self.model_of(res["state"]), res["row"]) for name, res in entries), splits, self.device,
            self.cfg.eval, self.cfg.experiment.seed, rename={"backdoor_acc": "backdoor_asr"})]
        next(r for r in judged if r["method"] == "original").pop("speedup")
        order = ["original", "retrain", *[n for n in results if n != "retrain"]]
        judged.sort(key=lambda r: order.index(r["method"]))
        rows = [{"request": k, "round": rnd, "client": client, **r} for r in judged]
        self.rows += rows
        self.notes.append(f"Request {k} (after round {rnd}): "
                          + forgotten(judged, client, len(splits.forget), attacker and self.backdoor is not None))
        point = lambda state: quick_point(self.model_of(state), self.curve_test, self.curve_backdoor,  # noqa: E731
                                          self.device)
        start = self.requests[k - 2][1] if k > 1 else 0
        self.federation += [(r, point(trained["curve"][r - 1])) for r in range(start + 1, rnd + 1)]
        for name, res in [("original", {"state": trained["global_state"]}), *results.items()]:
            self.points.setdefault(name, []).append((rnd, point(res["state"])))
        self.round_log += [{**row, "request": k} for row in trained.get("round_log", [])]
        self.history_bytes.append(trained["history"].nbytes())
        self.num_classes = _num_classes(self.model_of(trained["global_state"]), splits.test, self.device)
        return rows

    def write(self) -> dict:
        cfg, fed = self.cfg, self.cfg.federation
        plot = self.plot()
        stream = ", ".join(f"client {c} after round {r}{' (attacker)' if b else ''}" for c, r, b in self.requests)
        notes = [
            f"a stream of {len(self.requests)} withdrawals from {fed.num_clients} clients "
            f"({fed.partition}{', alpha ' + str(fed.alpha) if fed.partition == 'dirichlet' else ''}"
            f"{', ' + str(fed.clients_per_round) + ' per round' if fed.clients_per_round else ''}): {stream}",
            "at each request every method removes that client from the same global model: the federation as "
            "training without the clients withdrawn so far has made it (after each request the federation continues "
            "as retraining leaves it: FedAvg from round 0 over the clients still in, so a method's error is not "
            "carried into the next request); each request's rows are compared with that request's retrain",
            "evaluation is an oracle outside the federation: forget_acc and MIA on the request's client's data, "
            "retain_acc on the clients still in, backdoor_asr on triggered test inputs",
            *self.notes,
        ]
        purged = [p["client"] for p in self.purges if p.get("purged")]
        if purged:
            notes.append(f"after each request that client's stored updates were deleted from every history the "
                         f"server held (clients {purged}); deletions.jsonl has one entry per request")
        extra = {"requests": [{"request": k, "client": c, "round": r, "backdoor": b}
                              for k, (c, r, b) in enumerate(self.requests, 1)],
                 "purge": self.purges, "round_log": self.round_log, "history_bytes": self.history_bytes,
                 "client_samples": {str(c): len(p) for c, p in enumerate(federation_data(cfg)[1])},
                 "device": str(self.device), "num_classes": self.num_classes,
                 "columns": STREAM_COLUMNS}  # `fedunlearn report` prints request, round and client too
        write_report(self.out, f"{cfg.experiment.name}: a stream of federated client withdrawals", to_dict(cfg),
                     self.rows, extra=extra, notes=notes, columns=STREAM_COLUMNS, plots=[str(plot)])
        return {"results": self.rows, "config": to_dict(cfg), **extra}

    def plot(self) -> Path:
        series: dict[str, dict] = {"test_acc": {}, "backdoor_asr": {}}

        def add(label, pairs):
            xs = [r for r, _ in pairs]
            series["test_acc"][label] = (xs, [p[0] for _, p in pairs])
            series["backdoor_asr"][label] = (xs, [p[1] for _, p in pairs])

        add("federation (continues as retraining leaves it)", self.federation)
        for name, pairs in self.points.items():
            add(f"{name} at each request", pairs)
        self.out.mkdir(parents=True, exist_ok=True)
        rounds = ", ".join(str(r) for _, r, _ in self.requests)
        return curves(series, "federated round", self.out / "curves.png",
                      title=f"withdrawal requests after rounds {rounds}")
