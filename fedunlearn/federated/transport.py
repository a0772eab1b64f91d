"""How the server reaches clients: the Transport protocol and its two implementations.

`FlowerTransport` (Flower's Message API) maps partition ids (the client ids of the config) to
Flower node ids with a `query.hello` handshake, then sends `train` messages (model arrays + a
config record) and `query.call` messages (a named client-side computation, see queries.py). A
reply that carries an error (the ClientApp raised) comes back as an exception for that client,
so one failing client does not stop a round; with `round_timeout_s` a client that does not
answer in time is left out of the round (the caller sees it missing from the replies).

`LocalTransport` calls the same client functions as the ClientApp directly, in-process: for
unit tests of a method without Flower or Ray, and for debugging a method step by step. The
FedContext counts messages exactly as it does over Flower's grid.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated.client import answer_query, client_info, local_data, local_train
from fedunlearn.federated.fedavg import State


class Transport(Protocol):
    """What FedContext and the driver use to reach clients."""

    info: dict[int, dict]  # client id -> its handshake reply (num_examples, num_classes, input_shape)

    def train(self, client_ids: list[int], state: State, config: dict) -> dict[int, Any]:
        """client id -> (local state, num_samples, metrics), or the exception it raised."""

    def query(self, client_id: int, name: str, state: State, config: dict) -> tuple[State, dict]:
        ...


# --- Flower's grid ---------------------------------------------------------------------------

class ClientError(RuntimeError):
    """A client's reply carried an error instead of a result."""


class FlowerTransport:
    def __init__(self, grid, num_clients: int, wait_s: float = 120.0):
        self.grid = grid
        self.round_timeout_s = 0.0  # > 0: send_and_receive returns after this long without the late replies
        self.unanswered = 0  # messages that got no reply within the timeout (their ClientApp call may still run)
        self.info: dict[int, dict] = {}  # partition id -> what the client reported in the handshake
        self.node_of = self._handshake(num_clients, wait_s)

    def _handshake(self, num_clients: int, wait_s: float) -> dict[int, int]:
        deadline = time.monotonic() + wait_s
        nodes = list(self.grid.get_node_ids())
        while len(nodes) < num_clients and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = list(self.grid.get_node_ids())
        if len(nodes) < num_clients:
            raise FedUnlearnError(f"only {len(nodes)} Flower nodes connected, the config needs "
                                  f"{num_clients}; start more SuperNodes or lower federation.num_clients")
        msgs = [Message(RecordDict({"config": ConfigRecord({})}), node, "query.hello") for node in nodes]
        node_of = {}
        for reply in self.grid.send_and_receive(msgs):
            if reply.has_error():
                raise FedUnlearnError(f"node {reply.metadata.src_node_id} failed the handshake: {reply.error.reason}")
            metrics = dict(reply.content["metrics"])
            node_of[int(metrics["partition-id"])] = reply.metadata.src_node_id
            self.info[int(metrics["partition-id"])] = metrics
        missing = sorted(set(range(num_clients)) - set(node_of))
        if missing:
            raise FedUnlearnError(f"no Flower node holds partition(s) {missing}; each node needs "
                                  "node_config partition-id in 0..num_clients-1")
        return node_of

    def _send(self, client_ids: list[int], kind: str, state: State, config: dict) -> dict[int, Message]:
        by_node = {self.node_of[cid]: cid for cid in client_ids}
        content = lambda: RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord(config)})  # noqa: E731
        msgs = [Message(content(), node, kind) for node in by_node]
        replies = list(self.grid.send_and_receive(msgs, timeout=self.round_timeout_s or None))
        self.unanswered += len(msgs) - len(replies)
        return {by_node[r.metadata.src_node_id]: r for r in replies}

    def train(self, client_ids: list[int], state: State, config: dict) -> dict:
        replies = {}
        for cid, reply in self._send(client_ids, "train", state, config).items():
            if reply.has_error():
                replies[cid] = ClientError(f"client {cid}: {reply.error.reason}")
            else:
                metrics = dict(reply.content["metrics"])
                replies[cid] = (reply.content["arrays"].to_torch_state_dict(), int(metrics["num_examples"]), metrics)
        return replies

    def query(self, client_id: int, name: str, state: State, config: dict) -> tuple[State, dict]:
        reply = self._send([client_id], "query.call", state, {**config, "query": name}).get(client_id)
        if reply is None:
            raise ClientError(f"client {client_id} did not answer query '{name}' within {self.round_timeout_s:g} s")
        if reply.has_error():
            raise ClientError(f"client {client_id} failed query '{name}': {reply.error.reason}")
        arrays = reply.content["arrays"]
        return (arrays.to_torch_state_dict() if len(arrays) else {}), dict(reply.content["metrics"])


# --- in-process ------------------------------------------------------------------------------

class LocalTransport:
    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def info(self) -> dict[int, dict]:
        """What each client reports in the handshake (see app.py's query.hello)."""
        return {cid: client_info(local_data(self.cfg, cid)) for cid in range(self.cfg.federation.num_clients)}

    def train(self, client_ids: list[int], state: State, config: dict) -> dict:
        replies = {}
        for cid in client_ids:
            try:
                replies[cid] = local_train(self.cfg, local_data(self.cfg, cid), state, config)
            except Exception as err:  # a failing client must not stop the round
                replies[cid] = err
        return replies

    def query(self, client_id: int, name: str, state: State, config: dict) -> tuple[State, dict]:
        return answer_query(local_data(self.cfg, client_id), name, state, config)
