"""source_free_cooperative: source-free unlearning with the departing client's help, once.

As `source_free_absent` (subtract the client's stored updates, then repair the result with a
generator and distillation, no data), plus a forget term computed by the departing client on
its own data. The server sends it the reference model (one message); the client flags its
samples that the reference confidently gets wrong (what only this client taught: backdoored
or memorised samples; not its ordinary samples, which a model retrained without it still
classifies well) and replies with the diagonal Fisher information of the reference's
predictions on them: a statistic the size of the model, no sample. On the server the
penalty 0.5 * sum F (theta - theta_ref)^2 then holds the student to the reference on those
samples while distillation restores accuracy elsewhere (fedunlearn.unlearn.source_free.forget).
The remaining clients get no message.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedunlearn.config import check_range
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.methods import subtract
from fedunlearn.federated.methods.source_free_absent import server_repair
from fedunlearn.unlearn.source_free.forget import flag_unknown, local_fisher
from fedunlearn.unlearn.source_free.pipeline import RepairConfig

COOPERATIVE = True


@dataclass(frozen=True)
class Config(RepairConfig):
    """[methods.source_free_cooperative]: RepairConfig's keys plus the client's flagging rule."""

    max_confidence: float = 0.1  # flag a sample when the reference gives its label less than this
    max_flagged: int = 256       # the client computes the Fisher on at most this many flagged samples

    def __post_init__(self):
        super().__post_init__()
        check_range("max_confidence", self.max_confidence, 0.0, 1.0)
        check_range("max_flagged", self.max_flagged, 1)


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    reference = subtract.unlearn(ctx, subtract.Config(rescale=True)).state
    fisher, metrics = ctx.query(ctx.departing, "source_free_forget", reference,
                                {"max_confidence": cfg.max_confidence, "max_flagged": cfg.max_flagged})
    state, stats = ctx.run_task(server_repair, ctx.make_model, ctx.global_state, reference, ctx.num_classes,
                                ctx.input_shape, cfg, fisher, ctx.seed)
    stats.update({f"client_{k}": v for k, v in metrics.items()})
    return FedResult(state, 0, [], stats)


def client_forget(model, local, config: dict):
    """On the departing client: Fisher statistics of the sent reference model on the flagged samples."""
    flagged = flag_unknown(model, local.train, local.device, float(config["max_confidence"]))
    fisher = local_fisher(model, local.train.subset(flagged), local.device, int(config["max_flagged"]),
                          seed=local.seed)
    return fisher, {"flagged": float(len(flagged)), "samples": float(len(local.train))}
