"""An in-process transport: the same client functions as the ClientApp, called directly.

For unit tests of a method without Flower or Ray, and for debugging a method step by step.
The FedContext counts messages exactly as it does over Flower's grid.
"""

from __future__ import annotations

from fedunlearn.federated.client import answer_query, client_info, local_data, local_train
from fedunlearn.federated.history import State


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
