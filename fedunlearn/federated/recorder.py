"""Record client updates in any Flower ServerApp: a strategy wrapper over the on-disk store.

    strategy = RecordingStrategy(FedAvg(...), history_dir="/data/run-7/history")
    strategy.start(grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=..., timeout=60)

`RecordingStrategy` wraps any Flower Message-API strategy (FedAvg, FedProx, ...). When a
training round is configured it keeps the model sent (and, in round 1, stores it as the
round-0 model); when the replies are aggregated it writes each client's update (its model
minus the model sent) and sample count into the store (store.py: a running sum per client,
full updates every `store_every` rounds), then lets the wrapped strategy aggregate, and
stores the new global model. Replies that carry an error are recorded as failures with their
reason. A client is named by the metric `client_key` (e.g. partition-id) when its reply
carries one, else by its node id. Afterwards `fedunlearn withdraw --history DIR --client ID`
removes a client from the run's model. Flower's own `timeout` argument of `start` ends a
round without the nodes that do not answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated import fedavg
from fedunlearn.federated.store import META, DiskHistory

log = logging.getLogger("fedunlearn")


def _only(records: dict, kind: str, reply: Message):
    if len(records) != 1:
        raise FedUnlearnError(f"the reply from node {reply.metadata.src_node_id} holds {len(records)} {kind}s; "
                              "RecordingStrategy expects exactly one (the local model / its metrics)")
    return next(iter(records.values()))


class RecordingStrategy(Strategy):
    def __init__(self, strategy: Strategy, history_dir: str | Path, store_every: int = 1, dtype: str = "float32",
                 client_key: str = "partition-id", overwrite: bool = False, topk: float = 0.0):
        root = Path(history_dir)
        if (root / META).exists() and not overwrite:
            raise FedUnlearnError(f"'{root}' already holds a history; choose a new folder or pass overwrite=True")
        if overwrite and root.exists():
            import shutil

            shutil.rmtree(root)
        self.inner, self.client_key = strategy, client_key
        self.weight_key = getattr(strategy, "weighted_by_key", "num-examples")
        self.store = DiskHistory(root, store_every, dtype, topk=topk)
        self._sent: dict | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent = arrays.to_torch_state_dict()
        if "initial_extras" not in self.store.meta:
            self.store.set_model("initial", self._sent)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self._asked = {m.metadata.dst_node_id for m in messages}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        good = [r for r in replies if not r.has_error()]
        for reply in replies:
            if reply.has_error():
                log.warning("round %d: node %d failed: %s", server_round, reply.metadata.src_node_id,
                            reply.error.reason)
                self.store.add_failure(server_round, reply.metadata.src_node_id, str(reply.error.reason))
        for node in sorted(getattr(self, "_asked", set()) - {r.metadata.src_node_id for r in replies}):
            log.warning("round %d: node %d sent no reply before the round's timeout", server_round, node)
            self.store.add_failure(server_round, node, "no reply before the round's timeout")
        if good and self._sent is not None:
            self._record(server_round, good)
            self.store.meta["rounds"][str(server_round)]["sent"] = len(getattr(self, "_asked", replies))
            self.store.save_meta()
        arrays, metrics = self.inner.aggregate_train(server_round, replies)
        if arrays is not None:
            self.store.set_model("final", arrays.to_torch_state_dict())
        return arrays, metrics

    def _record(self, server_round: int, replies: list[Message]) -> None:
        every = self.store.store_every
        span = every if (server_round - 1) % every == 0 else 0
        named = {}
        for reply in replies:
            metrics = _only(reply.content.metric_records, "MetricRecord", reply)
            cid = int(metrics[self.client_key]) if self.client_key in metrics else int(reply.metadata.src_node_id)
            named[cid] = (reply, int(metrics[self.weight_key]))
        self.store.begin_round(server_round, self._sent, {cid: n for cid, (_, n) in named.items()}, span)
        for cid, (reply, _) in named.items():  # one update in memory at a time
            local = _only(reply.content.array_records, "ArrayRecord", reply).to_torch_state_dict()
            self.store.add_update(server_round, cid, fedavg.delta(local, self._sent))
        self.store.save_meta()
        log.info("round %d: recorded %d client updates in %s", server_round, len(named), self.store.root)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()
