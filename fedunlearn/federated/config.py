"""The federated withdrawal experiment's config: one frozen dataclass per TOML section.

    kind = "federated"
    [experiment]  name, seed, device, methods (the rows of the report; retrain always runs)
    [data] [model] [eval]              as in the centralized experiment
    [federation]  clients, partition, FedAvg rounds, stored history, local recipe, resources
    [withdrawal]  which client leaves, after which round, and whether it is still reachable;
                  [[withdrawal.requests]] makes it a stream: several clients leave at given rounds
    [backdoor]    the departing client's trigger (fraction 0 = none)
    [methods.<name>]                  that method's Config
    [audit]       models = N > 0: an ensemble audit of the withdrawal (fedunlearn/audit/federated.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from fedunlearn.audit.config import FedAuditConfig
from fedunlearn.config import check_range
from fedunlearn.errors import WithdrawalError
from fedunlearn.data import BackdoorConfig, DataConfig
from fedunlearn.experiments.pipeline import MethodsSection
from fedunlearn.federated.methods import FED_METHODS
from fedunlearn.federated.withdrawal import CLIENT_RULES, check_withdrawal
from fedunlearn.metrics import EvalConfig
from fedunlearn.models import ModelConfig
from fedunlearn.training import TrainConfig

LOCAL_RECIPE = TrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="constant")


@dataclass(frozen=True)
class ExperimentSection:
    name: str = "withdrawal"
    seed: int = 0
    device: str = "auto"  # auto = CUDA when present, else CPU
    methods: tuple[str, ...] = ("retrain", "continue", "federaser", "pga", "subtract")
    timing_repeats: int = 3         # a method faster than repeat_below_s runs this many times: median wall time
    repeat_below_s: float = 10.0

    def __post_init__(self):
        check_range("experiment.timing_repeats", self.timing_repeats, 1)
        check_range("experiment.repeat_below_s", self.repeat_below_s, 0.0)


@dataclass(frozen=True)
class FederationConfig:
    num_clients: int = 10
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = 0.3             # Dirichlet concentration (partition = "dirichlet"); smaller = more skew
    rounds: int = 6                # FedAvg rounds of training
    clients_per_round: int = 0     # clients sampled (seeded) each round; 0 = every client
    store_every: int = 1           # the server stores client updates every this many rounds (FedEraser)
    local: TrainConfig = LOCAL_RECIPE  # each client's local training per round
    round_lr: Literal["constant", "cosine"] = "constant"  # the local lr across rounds (rounds.round_lr):
                                   # cosine anneals it to ~0 by the last round, in training and retraining
    client_cpus: float = 1.0       # Ray resources per simulated client
    client_gpus: float = -1.0      # -1 = auto: a GPU fraction when CUDA is present, else 0
    server_gpus: float = 0.1       # GPU fraction of the server's Ray worker (ctx.run_task), when GPUs exist
    history: Literal["memory", "disk"] = "memory"  # where stored updates live: RAM, or OUT/history (store.py)
    history_dtype: Literal["float32", "float16"] = "float32"  # disk store: float16 halves the client files
    history_topk: float = 0.0      # disk store: keep this fraction of each stored round update's entries (0 = all)
    round_timeout_s: float = 0.0   # a round ends after this many seconds without the missing clients (0 = wait)
    server_cpus: float = 1.0       # CPUs the server's Ray worker reserves; its torch uses as many threads
    fail_client: int = -1          # fault injection: this client raises during training round fail_round
    fail_round: int = 0
    hang_client: int = -1          # fault injection: this client sleeps hang_s in training round hang_round
    hang_round: int = 0
    hang_s: float = 0.0

    def __post_init__(self):
        check_range("federation.num_clients", self.num_clients, 2)
        check_range("federation.alpha", self.alpha, 1e-6)
        check_range("federation.rounds", self.rounds, 1)
        check_range("federation.clients_per_round", self.clients_per_round, 0, self.num_clients)
        check_range("federation.store_every", self.store_every, 1)
        check_range("federation.client_cpus", self.client_cpus, 0.01)
        check_range("federation.server_gpus", self.server_gpus, 0.0, 1.0)
        check_range("federation.round_timeout_s", self.round_timeout_s, 0.0)
        check_range("federation.hang_s", self.hang_s, 0.0)
        check_range("federation.server_cpus", self.server_cpus, 0.0)
        check_range("federation.history_topk", self.history_topk, 0.0, 1.0)
        if self.history_topk > 0 and self.history != "disk":
            raise ValueError("'federation.history_topk' compresses the disk store; set federation.history = \"disk\"")


@dataclass(frozen=True)
class WithdrawalRequest:
    """One request of a stream ([[withdrawal.requests]]): `client` leaves after round `round`."""

    client: int | str = 0          # partition id, or "largest" / "median" among the clients still in
    round: int = 1                 # the request arrives after this training round
    backdoor: bool = False         # this client carries the backdoor trigger (an attacker)

    def __post_init__(self):
        check_range("withdrawal.requests.round", self.round, 1)
        if isinstance(self.client, str) and self.client not in CLIENT_RULES:
            raise ValueError(f"'withdrawal.requests.client' = {self.client!r}: give a client id or one of "
                             f"{', '.join(CLIENT_RULES)}")


@dataclass(frozen=True)
class WithdrawalConfig:
    client: int | str = 0          # partition id of the departing client, or "largest" / "median" (by sample count)
    after_round: int = 0           # the request arrives after this round (0 = after the last); training stops there
    departing_online: bool = True  # false: the client is gone, cooperative methods cannot ask it anything
    purge: bool = True             # delete the client's stored updates once every method has run
    requests: tuple[WithdrawalRequest, ...] = ()  # a stream of requests (federated/requests.py); replaces
                                   # client / after_round, and the backdoor goes to requests marked `backdoor`

    def __post_init__(self):
        check_range("withdrawal.after_round", self.after_round, 0)
        if self.requests and self.after_round:
            raise ValueError("give either withdrawal.after_round (one request) or [[withdrawal.requests]] (a stream), "
                             "not both")
        if isinstance(self.client, str) and self.client not in CLIENT_RULES:
            raise ValueError(f"'withdrawal.client' = {self.client!r}: give a client id or one of {', '.join(CLIENT_RULES)}")


@dataclass(frozen=True)
class Config(MethodsSection):
    kind: str = "federated"
    experiment: ExperimentSection = ExperimentSection()
    data: DataConfig = DataConfig(train_size=12000, test_size=2000)
    model: ModelConfig = ModelConfig()
    federation: FederationConfig = FederationConfig()
    withdrawal: WithdrawalConfig = WithdrawalConfig()
    backdoor: BackdoorConfig = BackdoorConfig(fraction=0.2)
    eval: EvalConfig = EvalConfig()
    methods: dict = field(default_factory=dict)  # [methods.<name>] sections: that method's Config
    audit: FedAuditConfig = FedAuditConfig()  # [audit] models = N > 0 makes the run an ensemble audit

    registry = FED_METHODS

    def __post_init__(self):
        if not isinstance(self.withdrawal.client, str):
            check_withdrawal(self.withdrawal.client, self.federation.num_clients)
        check_stream(self)
        if self.withdrawal.after_round > self.federation.rounds:
            raise ValueError(f"'withdrawal.after_round' = {self.withdrawal.after_round} is after the last round "
                             f"(federation.rounds = {self.federation.rounds})")
        self.check_methods()

    @property
    def train_rounds(self) -> int:
        """Rounds of training before the (first) request."""
        if self.withdrawal.requests:
            return self.withdrawal.requests[0].round
        return self.withdrawal.after_round or self.federation.rounds


def check_stream(cfg: "Config") -> None:
    """The stream's requests, before any work: in round order, within training, no client twice,
    and (with a longer-training attacker) only the first request an attacker."""
    requests = cfg.withdrawal.requests
    rounds = [r.round for r in requests]
    if rounds != sorted(rounds):
        raise ValueError(f"withdrawal.requests must be in round order; got rounds {rounds}")
    if rounds and rounds[-1] > cfg.federation.rounds:
        raise ValueError(f"a withdrawal request arrives after round {rounds[-1]}, after the last training round "
                         f"(federation.rounds = {cfg.federation.rounds})")
    if len(requests) >= cfg.federation.num_clients:
        raise ValueError(f"{len(requests)} withdrawal requests would leave no client of {cfg.federation.num_clients}")
    seen: set[int] = set()
    for i, req in enumerate(requests, 1):
        if isinstance(req.client, str):
            continue  # a rule picks among the clients still in (client.stream_requests), never a withdrawn one
        try:
            check_withdrawal(req.client, cfg.federation.num_clients, seen)
        except WithdrawalError as err:
            raise ValueError(f"withdrawal request {i}: {err}") from None
        seen.add(req.client)
    strengthened = cfg.backdoor.local_epochs or cfg.backdoor.boosted or cfg.backdoor.mask_top
    if strengthened and any(r.backdoor for r in requests[1:]):
        # retraining for an earlier request runs in unlearning rounds, where an attacker trains with the
        # plain recipe: a later attacker would not be the same client there as in training
        raise ValueError("with backdoor.local_epochs, boost or mask_top only the first withdrawal request may "
                         "carry the backdoor")
