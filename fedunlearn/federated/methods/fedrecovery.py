"""fedrecovery: remove the departing client's weighted gradient residuals, then add calibrated noise.

FedRecovery (Zhang et al., IEEE TIFS 2023, "FedRecovery: Differentially Private Machine
Unlearning for Federated Learning Frameworks"). In round r with aggregate update
g^r = sum_i p_i u_i^r (p_i = n_i / n_r), the aggregate without client k would have been
(g^r - p_k u_k^r) / (1 - p_k) = g^r - p_k / (1 - p_k) * (u_k^r - g^r). The server removes
these weighted residuals of every round k took part in from the final model,

    w_u = w_T - sum_r span_r * p_k / (1 - p_k) * (u_k^r - g^r),

then adds Gaussian noise N(0, sigma^2 I) so that w_u is (epsilon, delta)-indistinguishable from
the retrained model when their distance is at most the sensitivity S:
sigma = S * sqrt(2 ln(1.25 / delta)) / epsilon. The paper bounds S from smoothness constants a
CNN does not have; here S defaults to `sensitivity_frac` times the root mean square, per
coordinate, of the removed residual (a stated heuristic, reported with the row). No data, no
messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedunlearn.config import check_range
from fedunlearn.errors import FedUnlearnError
from fedunlearn.federated import fedavg
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.methods.subtract import keep_valid_batchnorm


@dataclass(frozen=True)
class Config:
    epsilon: float = 1.0
    delta: float = 1e-5
    sensitivity: float = 0.0        # per-coordinate sensitivity S; 0 = sensitivity_frac * RMS of the removed residual
    sensitivity_frac: float = 0.1

    def __post_init__(self):
        check_range("epsilon", self.epsilon, 1e-6)
        check_range("delta", self.delta, 1e-12, 1.0)
        check_range("sensitivity", self.sensitivity, 0.0)
        check_range("sensitivity_frac", self.sensitivity_frac, 0.0)


def residuals(ctx: FedContext) -> fedavg.State:
    """sum over the stored rounds k took part in of span * p_k / (1 - p_k) * (u_k - g)."""
    removed: fedavg.State = {}
    for stored in ctx.history.client_rounds(ctx.departing):
        update, n_k = stored.updates[ctx.departing]
        p_k = n_k / stored.total_samples()
        if p_k >= 1.0:  # the round had no one else: its whole step goes
            term = {k: v * stored.span for k, v in update.items()}
        else:
            counts = stored.counts()  # the round's updates, read one at a time from a disk store
            mean = fedavg.weighted_sum((stored.updates[cid] for cid in counts), sum(counts.values()))
            scale = stored.span * p_k / (1.0 - p_k)
            term = {k: (update[k] - mean[k]) * scale for k in update}
        removed = fedavg.add(removed, term) if removed else term
    return removed


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    if not ctx.history.client_rounds(ctx.departing):
        raise FedUnlearnError(f"fedrecovery needs the departing client's stored updates, but the history holds none "
                              f"for client {ctx.departing}; set federation.store_every >= 1")
    removed = residuals(ctx)
    state = fedavg.add(ctx.global_state, removed, -1.0)
    weights = [k for k in removed if "running" not in k]  # noise on the parameters, not on BatchNorm statistics
    count = sum(removed[k].numel() for k in weights)
    rms = math.sqrt(sum(float((removed[k].double() ** 2).sum()) for k in weights) / max(1, count))
    sens = cfg.sensitivity or cfg.sensitivity_frac * rms
    sigma = sens * math.sqrt(2.0 * math.log(1.25 / cfg.delta)) / cfg.epsilon
    gen = torch.Generator().manual_seed(ctx.seed + 4099)
    for k in weights:
        state[k] = state[k] + sigma * torch.randn(state[k].shape, generator=gen, dtype=state[k].dtype)
    kept = keep_valid_batchnorm(state, ctx.global_state)
    return FedResult(state, 0, [], {"noise_sigma": sigma, "residual_norm": fedavg.norm(removed),
                                    "batchnorm_layers_kept": kept})
