"""retrain: federated training from scratch without the departing client (the gold standard).

Same initial weights, same local recipe and as many rounds as the original training, with the
remaining clients only. Every other method is compared with this model.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.config import check_range
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.rounds import round_lr, run_fedavg


@dataclass(frozen=True)
class Config:
    rounds: int = 0  # 0 = as many rounds as the original training

    def __post_init__(self):
        check_range("rounds", self.rounds, 0)


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    rounds = cfg.rounds or ctx.train_rounds
    state, _, curve, failures = run_fedavg(ctx.fit, ctx.remaining, ctx.initial_state, rounds, desc="retrain",
                                          per_round=getattr(ctx.fed_cfg, "clients_per_round", 0), seed=ctx.seed,
                                          lr_at=round_lr(ctx.fed_cfg))
    return FedResult(state, rounds, curve, {"failed_client_rounds": len(failures)})
