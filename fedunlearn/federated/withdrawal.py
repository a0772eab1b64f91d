"""The withdrawal protocol: who is in the federation, and which requests can be honoured.

A client asks to leave; the server checks the request (a client it knows, not gone already),
marks it withdrawn, and from then on sends it nothing unless it stays reachable for a
cooperative method (`departing_online`). Every unlearning method then starts from the global
model as it was at the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedunlearn.errors import WithdrawalError

CLIENT_RULES = ("largest", "median")  # withdrawal.client by rule, over the clients' sample counts


def pick_client(rule: int | str, sizes: list[int]) -> int:
    """The departing client: an id as given, or the client with the largest / median sample count
    (ties go to the lowest id)."""
    if not isinstance(rule, str):
        return int(rule)
    order = sorted(range(len(sizes)), key=lambda c: (sizes[c], c))
    if rule == "largest":
        return max(range(len(sizes)), key=lambda c: (sizes[c], -c))
    if rule == "median":
        return order[(len(order) - 1) // 2]
    raise WithdrawalError(f"unknown withdrawal rule {rule!r}; give a client id or one of {', '.join(CLIENT_RULES)}")


def check_withdrawal(client: int, num_clients: int, withdrawn: set[int] | frozenset = frozenset()) -> None:
    """A withdrawal request must name a client of the federation that has not left already."""
    if isinstance(client, bool) or not isinstance(client, int) or not 0 <= client < num_clients:
        raise WithdrawalError(f"cannot withdraw client {client!r}: the federation has clients 0..{num_clients - 1} "
                              "(set withdrawal.client to one of them)")
    if client in withdrawn:
        raise WithdrawalError(f"client {client} has already withdrawn and its influence was removed "
                              f"(withdrawn so far: {sorted(withdrawn)}); nothing left to forget")


@dataclass
class Membership:
    num_clients: int
    withdrawn: set[int] = field(default_factory=set)

    @property
    def active(self) -> list[int]:
        return [c for c in range(self.num_clients) if c not in self.withdrawn]

    def withdraw(self, client: int) -> list[int]:
        """Record the request; returns the remaining clients."""
        check_withdrawal(client, self.num_clients, self.withdrawn)
        if len(self.active) <= 1:
            raise WithdrawalError(f"client {client} is the last one in the federation; nothing would remain")
        self.withdrawn.add(client)
        return self.active
