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

    removed_samples: int = 0                    # samples of purged clients' updates, still part of the round

    def total_samples(self) -> int:
        return sum(n for _, n in self.updates.values()) + self.removed_samples

    def counts(self) -> dict[int, int]:
        """client id -> num_samples (a disk store's round answers this without reading an update)."""
        return {cid: n for cid, (_, n) in self.updates.items()}


@dataclass
class History:
    store_every: int = 1
    rounds: list[StoredRound] = field(default_factory=list)
    purged: set[int] = field(default_factory=set)  # clients whose updates were deleted after their withdrawal

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

    def record(self, rnd: int, global_state: State, updates: dict[int, tuple[State, int]], span: int) -> None:
        """One finished round; kept when span > 0 (a stored round standing for `span` rounds)."""
        if span > 0:
            self.rounds.append(StoredRound(rnd, {k: v.detach().cpu().clone() for k, v in global_state.items()},
                                           dict(updates), span))

    def client_sum(self, client_id: int) -> tuple[State, float, int]:
        """(sum over stored rounds of span * n_k / n_r * u_k, mean share n_k / n_r over every round, stored rounds used)."""
        if client_id in self.purged:
            from fedunlearn.errors import FedUnlearnError

            raise FedUnlearnError(f"client {client_id}'s stored updates were purged after its withdrawal; "
                                  "nothing of it is left to use")
        stored = self.client_rounds(client_id)
        removed: State = {}
        share = 0.0
        # the client's mean share of the whole trajectory: rounds it was not sampled in count as 0
        total_span = sum(r.span for r in self.rounds)
        for rnd in stored:
            update, n_k = rnd.updates[client_id]
            weight = rnd.span * n_k / rnd.total_samples()
            for k, v in update.items():
                removed[k] = removed[k] + weight * v if k in removed else weight * v
            share += weight / total_span
        return removed, share, len(stored)

    def purge(self, client_id: int) -> dict:
        """Drop every stored update of `client_id` (the totals of its rounds are kept)."""
        dropped = 0
        self.purged.add(int(client_id))
        for rnd in self.rounds:
            if client_id in rnd.updates:
                rnd.removed_samples += rnd.updates.pop(client_id)[1]
                dropped += 1
        return {"client": int(client_id), "updates_deleted": dropped, "purged": not self.client_rounds(client_id)}

