"""What the server keeps from training: client updates every `store_every` rounds (FedEraser's history).

A stored round holds the global model the clients started from and, per client, its update
(local model minus that global model) with its sample count. Only floating-point entries are
deltas; integer buffers (BatchNorm's num_batches_tracked) are not stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedunlearn.federated.fedavg import State, state_nbytes


@dataclass
class StoredRound:
    round: int                                  # 1-based federated round
    global_state: State                         # the global model at the start of this round
    updates: dict[int, tuple[State, int]]       # client id -> (delta = local - global, num_samples)
    span: int = 1                               # rounds this stored round stands for (store_every, less at the end)

    def total_samples(self) -> int:
        return sum(n for _, n in self.updates.values())


@dataclass
class History:
    store_every: int = 1
    rounds: list[StoredRound] = field(default_factory=list)

    def nbytes(self) -> int:
        """Bytes the server holds: stored global models plus every stored client update."""
        total = 0
        for stored in self.rounds:
            total += state_nbytes(stored.global_state)
            total += sum(state_nbytes(delta) for delta, _ in stored.updates.values())
        return total

    def client_rounds(self, client_id: int) -> list[StoredRound]:
        """The stored rounds in which `client_id` took part (its update arrived)."""
        return [r for r in self.rounds if client_id in r.updates]
