"""source_free_absent: source-free unlearning of a client that is gone.

The server uses only what it holds: the global model, the round-0 weights, the stored client
updates and sample counts. Its reference removes the departing client's stored steps: by
default all of them (`reference = "subtract"`, the subtract method), or only what later rounds
left of each (`"surviving"`, federated/removal.py). It then repairs without any data
(fedunlearn.unlearn.source_free.pipeline): a generator trained against the frozen global model
and the reference synthesizes stand-in samples; the teacher is the global model blended per
class with the reference by how well the remaining clients' own local models (global model
plus their stored update, from the last round they took part in) recognise that class. If the
reference already agrees with that teacher on most synthetic samples of every class it is
kept; otherwise a student starting at the reference (`start = "original"`: the global model)
is distilled from the teacher, and stamps that turn inputs into the backdoor's target class
(targeted.py: Neural Cleanse's per-class search on the global model alone, no data, no target
assumed; on with `trigger.weight > 0`, off by default) are held unable to change its class (with
`trigger.hold = "target"`: unable to send inputs to the target, hold.py).
The remaining clients get no message and the departing client is not asked
anything. Generator and distillation run on the server's Ray worker (a GPU fraction when the
cluster has one). What it reaches on the scenario matrix (with and without those options) and
where it falls short is in docs/findings.md.
Paper: Ahmed et al., Towards Source-Free Machine Unlearning, CVPR 2025.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import torch

from fedunlearn.config import config_hash
from fedunlearn.federated.context import FedContext, FedResult
from fedunlearn.federated.fedavg import State, copy_state
from fedunlearn.federated.methods import fedrecover, subtract
from fedunlearn.federated.methods.subtract import keep_valid_batchnorm
from fedunlearn.federated.removal import surviving_removal
from fedunlearn.training import get_device
from fedunlearn.unlearn.source_free.pipeline import RepairConfig, repair
from fedunlearn.unlearn.source_free.support import class_support, local_ensemble, local_models, shippable

COOPERATIVE = False


@dataclass(frozen=True)
class Config(RepairConfig):
    """[methods.source_free_absent]: generator.*, consolidate.*, trigger.*, skip_agreement, check_samples, reference."""

    reference: Literal["subtract", "surviving", "recovered"] = "subtract"  # the repair's start: every stored step
                                 # of the client removed, only what later rounds left of each (federated/removal.py),
                                 # or the remaining clients' stored updates replayed with diagonal corrections
                                 # (fedrecover.py, hessian = "diagonal")

    def __post_init__(self):
        super().__post_init__()
        check_reference(self.reference)


def unlearn(ctx: FedContext, cfg: Config) -> FedResult:
    state, _, stats, _ = repaired(ctx, cfg)
    return FedResult(state, 0, [], stats)


def repaired(ctx: FedContext, cfg: Config) -> tuple[State, object, dict, State]:
    """(repaired state, generator, stats, reference): the reference, then `repair` on the server's
    worker. Done once per withdrawal for both modes when they share the repair's settings
    (ctx.reused): source_free_cooperative starts with exactly this work, and a matrix that reports
    both would otherwise pay for it twice. Where it was reused, stats["reused_s"] is the time it took
    when it was done, counted in the method's wall time."""

    def compute():
        reference = reference_state(ctx, cfg.reference)
        state, generator, stats = ctx.run_task(server_repair, ctx.make_model, ctx.global_state, reference,
                                               ctx.num_classes, ctx.input_shape, cfg, ctx.seed,
                                               remaining_locals(ctx, cfg), start_state(ctx, cfg, reference))
        return state, generator, stats, reference

    key = config_hash(["source_free_repair", repair_settings(cfg), cfg.reference])
    (state, generator, stats, reference), seconds, reused = ctx.reused(key, compute)
    stats = {**stats, **({"reused_s": seconds} if reused else {})}
    return copy_state(state), generator, stats, reference


def repair_settings(cfg: RepairConfig) -> RepairConfig:
    """The RepairConfig inside a method's Config (which may add fields of its own)."""
    return RepairConfig(**{f.name: getattr(cfg, f.name) for f in fields(RepairConfig)})


def start_state(ctx: FedContext, cfg: Config, reference: State) -> State | None:
    """With start = "recovered": the corrected replay (fedrecover.py, per-coordinate secants), where
    the student starts; the reference keeps its other roles (generator judge, teacher blend,
    trigger check), since a replay that kept some of the backdoor would hide the stamps. When the
    reference is that replay already (reference = "recovered"), it is not computed again."""
    if cfg.start != "recovered":
        return None
    return reference if cfg.reference == "recovered" else reference_state(ctx, "recovered")


def remaining_locals(ctx: FedContext, cfg: RepairConfig):
    """The remaining clients' local models from their last stored rounds (support.py), when the
    repair's teacher is "remaining"; as numpy arrays, which Ray passes to the server's task
    without copying (support.shippable)."""
    if cfg.teacher not in ("remaining", "locals"):
        return None
    clients = sorted(ctx.remaining)
    if len(clients) > cfg.support_clients:  # a seeded sample: an unbiased estimate of the weighted mean
        clients = sorted(np.random.default_rng(ctx.seed + 811).choice(clients, cfg.support_clients, replace=False))
    return shippable(local_models(ctx.history, [int(c) for c in clients], ctx.sample_counts))


def warm_up(server, make_model, global_state: State, num_classes: int, input_shape, seed: int,
            cfg: RepairConfig | None = None) -> None:
    """Before any timing (driver.py): a two-step repair on the server's worker with the method's
    own settings (generator width and batch, check samples, teacher: the judge and the support
    check run too, on the global model as its own reference and only local model) but two steps
    each. The first steps in a fresh process pay torch's one-time set-up (oneDNN kernels are
    chosen per layer and batch shape), which a long-running server has long since paid."""
    cfg = cfg or RepairConfig()
    tiny = replace(cfg, generator=replace(cfg.generator, steps=2), consolidate=replace(cfg.consolidate, steps=2),
                   trigger=replace(cfg.trigger, steps=2), skip_agreement=2.0)
    locals_ = [(global_state, 1)] if cfg.teacher in ("remaining", "locals") else None
    server.run(server_repair, make_model, global_state, global_state, num_classes, input_shape,
               repair_settings(tiny), seed, locals_,
               global_state if cfg.start == "recovered" else None)


def reference_state(ctx: FedContext, kind: str = "subtract") -> State:
    """The `subtract` model, the surviving-step removal (removal.py) or the corrected replay
    (fedrecover.py); valid BatchNorm statistics either way (see subtract.py)."""
    if kind == "recovered":
        return fedrecover.unlearn(ctx, fedrecover.Config(hessian="diagonal", keep_curve=False)).state
    if kind == "surviving":
        state, _ = surviving_removal(ctx.history, ctx.departing, ctx.global_state)
        keep_valid_batchnorm(state, ctx.global_state)
        return state
    return subtract.unlearn(ctx, subtract.Config(rescale=True)).state


def check_reference(kind: str) -> None:
    if kind not in ("subtract", "surviving", "recovered"):
        raise ValueError(f"reference must be 'subtract', 'surviving' or 'recovered', got {kind!r}")


def to_state(model: torch.nn.Module) -> State:
    """On the CPU, in the default memory layout (the repair may have made a model channels-last)."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def server_repair(make_model, global_state: State, reference_state: State, num_classes: int, input_shape,
                  cfg: RepairConfig, seed: int, locals_=None, start: State | None = None):
    """The server task: models from states, `repair`; returns (state, generator on the CPU, stats)."""
    device = get_device("auto")  # on the server's Ray worker: the GPU Ray assigned, if any
    original, reference = make_model(), make_model()
    original.load_state_dict(global_state)
    reference.load_state_dict(reference_state)
    start_model = None
    if start is not None:
        start_model = make_model()
        start_model.load_state_dict(start)
    support_fn = ensemble = None
    if locals_:
        support_fn = lambda x, labels: class_support(make_model, locals_, x, labels, num_classes, device)  # noqa: E731
        if "locals" in (cfg.unsupported, cfg.teacher):
            ensemble = local_ensemble(make_model, locals_, device, cfg.consolidate.temperature)
    student, generator, stats = repair(original, reference, num_classes, input_shape, cfg, device, seed=seed,
                                       support_fn=support_fn, ensemble=ensemble, start_model=start_model)
    stats["threads"] = torch.get_num_threads()
    return to_state(student), generator.cpu(), stats
