"""source_free_cooperative: source-free unlearning with the departing client's help, once.

As `source_free_absent` (remove the client's stored steps, then repair without data: a
generator, distillation from the per-class blend of the global model and the reference, and
optionally reverse-engineered trigger stamps held invariant), then, when a repair was needed,
one exchange with the departing client: the server sends it the repaired model; the client
flags its samples to which that model gives their label a low probability (what only this
client taught, such as backdoored samples: its ordinary samples, which a model trained
without it still classifies, are not flagged) and replies with the diagonal Fisher
information of the model's predictions on them: a statistic the size of the model, no
sample. The server then distils further from the global model while the penalty
0.5 * sum F (theta - theta_repaired)^2 holds the student where the client's data says it
must stay (fedunlearn.unlearn.source_free.forget), and the repair's stamps stay held invariant:
the extra steps win back accuracy without re-teaching the backdoor. The remaining clients get
no message.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from fedunlearn.config import check_range
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.fedavg import State
from fedunlearn.federated.methods import source_free_absent
from fedunlearn.federated.methods.source_free_absent import check_reference, remaining_locals, repaired, to_state
from fedunlearn.training import get_device
from fedunlearn.unlearn.source_free.consolidate import ConsolidateConfig
from fedunlearn.unlearn.source_free.forget import flag_unknown, local_fisher
from fedunlearn.unlearn.source_free.generator import sample
from fedunlearn.unlearn.source_free.pipeline import RepairConfig, predicted, refine
from fedunlearn.unlearn.source_free.stamps import TriggerConfig
from fedunlearn.unlearn.source_free.support import blended_teacher, class_support, local_ensemble

COOPERATIVE = True
warm_up = source_free_absent.warm_up  # the same server work, warmed once before timing (driver.py)


@dataclass(frozen=True)
class Config(RepairConfig):
    """[methods.source_free_cooperative]: RepairConfig's keys, the refinement, the client's flagging rule.

    The refinement uses `consolidate`'s settings with refine_steps and forget_weight."""

    refine_steps: int = 150      # distillation steps after the client's reply, with its forget term
    forget_weight: float = 30.0  # lambda of that forget term
    max_confidence: float = 0.1  # the client flags a sample when the model gives its label less than this
    max_flagged: int = 128       # the client computes the Fisher on at most this many flagged samples
    reference: Literal["subtract", "surviving", "recovered"] = "subtract"  # as source_free_absent's

    def __post_init__(self):
        super().__post_init__()
        check_reference(self.reference)
        check_range("max_confidence", self.max_confidence, 0.0, 1.0)
        check_range("max_flagged", self.max_flagged, 1)
        check_range("refine_steps", self.refine_steps, 0)
        check_range("forget_weight", self.forget_weight, 0.0)


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    state, generator, stats, reference = repaired(ctx, cfg)  # source_free_absent's repair (done once for both)
    stats["client_asked"] = bool(stats["consolidated"])
    if stats["consolidated"]:  # nothing was distilled, so nothing can have been re-taught
        fisher, metrics = ctx.query(ctx.departing, "source_free_forget", state,
                                    {"max_confidence": cfg.max_confidence, "max_flagged": cfg.max_flagged})
        state, more = ctx.run_task(server_refine, ctx.make_model, ctx.global_state, state, generator, fisher,
                                   replace(cfg.consolidate, steps=cfg.refine_steps, forget_weight=cfg.forget_weight),
                                   ctx.seed, reference, remaining_locals(ctx, cfg), cfg.check_samples, cfg.teacher,
                                   cfg.unsupported, cfg.trigger)
        stats.update(more)
        stats.update({f"client_{k}": v for k, v in metrics.items()})
    return FedResult(state, 0, [], stats)


def server_refine(make_model, global_state: State, student_state: State, generator, fisher: dict,
                  cfg: ConsolidateConfig, seed: int, reference_state: State | None = None, locals_=None,
                  check_samples: int = 1000, teacher_kind: str = "remaining", unsupported: str = "reference",
                  trigger: TriggerConfig = TriggerConfig()):
    """The second server task: `refine` with the client's Fisher statistics; returns (state, stats).
    With the remaining clients' local models, the teacher is the repair's: their ensemble alone
    (teacher_kind = "locals") or the same per-class blend."""
    device = get_device("auto")
    original, student = make_model(), make_model()
    original.load_state_dict(global_state)
    student.load_state_dict(student_state)
    teacher = None
    if locals_ and teacher_kind == "locals":
        teacher = local_ensemble(make_model, locals_, device, cfg.temperature)
    elif locals_ and reference_state is not None:
        reference = make_model()
        reference.load_state_dict(reference_state)
        x, _ = sample(generator, range(generator.num_classes), check_samples, device, seed=seed + 1)
        support = class_support(make_model, locals_, x, predicted(original, x, device), generator.num_classes, device)
        other = (local_ensemble(make_model, locals_, device, cfg.temperature) if unsupported == "locals"
                 else reference.to(device))
        teacher = blended_teacher(original.to(device), other, support, cfg.temperature)
    refined, stats = refine(student, original, generator.to(device), fisher, cfg, device, seed=seed, teacher=teacher,
                            trigger=trigger)
    return to_state(refined), stats


def client_forget(model, local, config: dict):
    """On the departing client: Fisher statistics of the sent model on the flagged samples."""
    flagged = flag_unknown(model, local.train, local.device, float(config["max_confidence"]))
    fisher = local_fisher(model, local.train.subset(flagged), local.device, int(config["max_flagged"]),
                          seed=local.seed)
    return fisher, {"flagged": float(len(flagged)), "samples": float(len(local.train))}
