"""continue: keep training the current global model for m rounds without the departing client.

The naive baseline: nothing is removed on purpose; the client's influence only fades as the
remaining clients' updates overwrite it (registered under the name `continue`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.config import check_range
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.rounds import run_fedavg


@dataclass(frozen=True)
class Config:
    rounds: int = 2

    def __post_init__(self):
        check_range("rounds", self.rounds, 1)


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    state, _, curve, failures = run_fedavg(ctx.fit, ctx.remaining, ctx.global_state, cfg.rounds, desc="continue",
                                          per_round=getattr(ctx.fed_cfg, "clients_per_round", 0), seed=ctx.seed)
    return FedResult(state, cfg.rounds, curve, {"failed_client_rounds": len(failures)})
