"""The server's view during unlearning: what a federated unlearning method may use, and nothing else.

A method gets a `FedContext` and returns a `FedResult`. The context holds the trained global
model, the round-0 weights and the stored history; it talks to clients only through `fit`
(one FedAvg round on chosen clients) and `query` (one named computation on one client's
own data, see fedunlearn/federated/queries.py), and it counts every message and byte sent to
the remaining clients and to the departing client. Heavy server-side work (a generator, a
distillation) goes through `run_task`, on the server's Ray worker (a GPU fraction when the cluster has one).
The oracle that evaluates models for the report is not part of the context.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from fedunlearn.errors import WithdrawalError
from fedunlearn.federated.fedavg import RoundResult, State, aggregate_replies, copy_state, state_nbytes
from fedunlearn.federated.history import History

if TYPE_CHECKING:
    from fedunlearn.federated.config import Config, FederationConfig
    from fedunlearn.federated.resources import ServerWorker
    from fedunlearn.federated.transport import Transport

@dataclass
class Traffic:
    """What the server sent during one method's unlearning (replies are not counted)."""

    messages_to_remaining: int = 0
    bytes_to_remaining: int = 0
    messages_to_departing: int = 0
    bytes_to_departing: int = 0

    def add(self, to_departing: bool, nbytes: int) -> None:
        if to_departing:
            self.messages_to_departing += 1
            self.bytes_to_departing += nbytes
        else:
            self.messages_to_remaining += 1
            self.bytes_to_remaining += nbytes


@dataclass
class FedResult:
    """A federated method's answer. It stays apart from MethodResult (fedunlearn.contract):
    the server holds a state dict, not a module, and the report plots the rounds it used."""

    state: State                                  # the unlearned global model
    rounds: int = 0                               # federated rounds used (0 = none)
    curve: list[State] = field(default_factory=list)  # global model after each round, for the plot
    stats: dict = field(default_factory=dict)     # free-form numbers the method reports


@dataclass
class FedContext:
    global_state: State                  # trained global model at withdrawal (never modified)
    initial_state: State                 # round-0 weights every client started from
    history: History                     # stored client updates (every store_every rounds)
    departing: int                       # the withdrawing client's id
    remaining: list[int]                 # ids of the clients that stay
    num_clients: int
    num_classes: int
    input_shape: tuple[int, ...]
    make_model: Callable[[], nn.Module]  # a fresh model of the federation's architecture
    fed_cfg: FederationConfig | None     # the federation section
    device: torch.device
    transport: Transport
    departing_online: bool = True
    train_rounds: int = 0                # rounds of federated training before the withdrawal
    sample_counts: dict[int, int] = field(default_factory=dict)  # client id -> samples it reported
    seed: int = 0
    traffic: Traffic = field(default_factory=Traffic)
    server: ServerWorker | None = None   # the server's Ray worker, shared by the methods of a run
    reuse: dict | None = None            # server work shared by the methods of one withdrawal (see `reused`)
    _round: int = 0

    @classmethod
    def create(cls, cfg: Config, transport: Transport, trained: dict, make_model: Callable[[], nn.Module],
               server: ServerWorker | None = None, departing_online: bool | None = None,
               withdrawn=(), reuse: dict | None = None) -> "FedContext":
        """The context one method gets: the experiment `cfg`, the transport (its handshake gives
        the task's shape and the clients' sample counts) and the trained federation `trained`
        ({"global_state", "initial_state", "history"}, as driver.train_federation returns it).
        `withdrawn`: clients gone at earlier requests, neither remaining nor reachable. `reuse`: one
        dict per withdrawal, shared by the contexts of its methods (None: nothing is reused)."""
        from fedunlearn.training import get_device

        info = transport.info
        first = info[min(info)]
        fed, departing = cfg.federation, cfg.withdrawal.client
        online = cfg.withdrawal.departing_online if departing_online is None else departing_online
        return cls(global_state=copy_state(trained["global_state"]), initial_state=copy_state(trained["initial_state"]),
                   history=trained["history"], departing=departing,
                   remaining=[c for c in range(fed.num_clients) if c != departing and c not in set(withdrawn)],
                   num_clients=fed.num_clients,
                   num_classes=int(first["num_classes"]), input_shape=tuple(int(d) for d in first["input_shape"]),
                   make_model=make_model, fed_cfg=fed, device=get_device(cfg.experiment.device), transport=transport,
                   departing_online=online, train_rounds=cfg.train_rounds,
                   sample_counts={c: int(v["num_examples"]) for c, v in info.items()}, seed=cfg.experiment.seed,
                   server=server, reuse=reuse)

    def model(self, state: State | None = None) -> nn.Module:
        """A fresh model loaded with `state` (default: the global model at withdrawal)."""
        model = self.make_model()
        model.load_state_dict(state if state is not None else self.global_state)
        return model

    def fit(self, client_ids: list[int], state: State, config: dict | None = None) -> RoundResult:
        """One FedAvg round: send `state` to each client, train locally, aggregate the replies.

        `config` overrides the local recipe for this round: epochs, lr, data_fraction (share of
        the local data to train on: fewer local steps). A client that raises is logged and left
        out of the aggregate; if every client fails the round raises.
        """
        config = dict(config or {})
        self._round += 1
        config.setdefault("round", self._round)
        config.setdefault("phase", "unlearn")
        for cid in client_ids:
            self._check_reachable(cid)
            self.traffic.add(cid == self.departing, state_nbytes(state))
        replies = self.transport.train(list(client_ids), state, config)
        return aggregate_replies(state, replies)

    def query(self, client_id: int, name: str, state: State | None = None,
              config: dict | None = None) -> tuple[State, dict]:
        """Run the client-side function CLIENT_QUERIES[name] on `client_id`'s own data.

        `state` is loaded into a fresh model on the client (empty: an untrained model); only
        the returned tensors and metrics come back. Asking the departing client while it is
        offline raises WithdrawalError.
        """
        self._check_reachable(client_id)
        state = state or {}
        self.traffic.add(client_id == self.departing, state_nbytes(state))
        return self.transport.query(client_id, name, state, dict(config or {}))

    def run_task(self, fn: Callable, *args, **kwargs):
        """Run fn(*args, **kwargs) in the server's Ray worker (GPU fraction if the cluster has one)."""
        from fedunlearn.federated.resources import ServerWorker

        if self.server is None:  # a context built by hand (tests): a worker of its own
            self.server = ServerWorker(getattr(self.fed_cfg, "server_gpus", 0.1))
        return self.server.run(fn, *args, **kwargs)

    def reused(self, key: str, compute: Callable[[], object]) -> tuple[object, float, bool]:
        """(compute()'s value, the seconds computing it took, whether it was reused): server work that
        two methods of one withdrawal both start with (source_free_cooperative is source_free_absent's
        repair plus one exchange) is done once. The seconds are those of the run that did the work,
        so a method that reuses it still reports them (driver.timed_method adds "reused_s" to its
        wall time). `key` must name everything the value depends on besides the withdrawal itself."""
        if self.reuse is not None and key in self.reuse:
            value, seconds = self.reuse[key]
            return value, seconds, True
        start = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - start
        if self.reuse is not None:
            self.reuse[key] = (value, seconds)
        return value, seconds, False

    def _check_reachable(self, client_id: int) -> None:
        if client_id == self.departing and not self.departing_online:
            raise WithdrawalError(
                f"client {client_id} has withdrawn and is offline, so a cooperative method cannot ask it "
                "for anything; use a method that works without it (e.g. subtract, continue, source_free_absent) "
                "or set withdrawal.departing_online = true")
        if client_id != self.departing and client_id not in self.remaining:
            raise WithdrawalError(f"client {client_id} is not in this federation (remaining clients: {self.remaining})")
