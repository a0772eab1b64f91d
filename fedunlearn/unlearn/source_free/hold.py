"""What the student is held to on stamped inputs: the trigger block's forget term for `consolidate`.

Two holds, by TriggerConfig.hold:

- "invariant" (the classic "unlearn the reversed trigger" mitigation, Neural Cleanse section VI):
  on fresh synthetic samples x, the student's prediction on each stamped x' is held to the
  teacher's prediction on the clean x (KL): the stamp must not change the class at all.
- "target": the stamp must not send inputs to its target, and nothing more. For each stamp whose
  target t is known (the searches set it: the targeted search's class; for a difference stamp, the
  class the original sends stamped inputs to more often than the model it was searched against),
  on the inputs the teacher does not put in t, the loss is -log(1 - p_student(t | x')). Stamps
  with no target keep the invariant hold.

Why "target": the found stamps cover up to 8% of the pixels; on an 8x8 digit that is five pixels,
enough to be a real stroke. Holding the whole prediction invariant to them taught the student to
ignore those pixels for every class, and cost up to 22 points of test accuracy when distilling the
original into itself (docs/findings.md, session 14: mean |test gap| to retrain 0.051 without the
term, 0.091 with it, on the validation-split tuning cells). What only the departing client taught
is the way to t; the other ways a stroke changes a digit were taught by everyone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.unlearn.source_free.generator import Generator, draw

HOLDS = ("invariant", "target")


def check_hold(hold: str) -> None:
    if hold not in HOLDS:
        raise ValueError(f"trigger.hold must be one of {', '.join(HOLDS)}, got {hold!r}")


def hold_term(stamps: list, teacher, generator: Generator, classes, batch_size: int, device,
              hold: str = "invariant", shift: float = 0.0):
    """A forget term for `consolidate` (a function of the student): the mean over stamps of the
    hold's loss on fresh synthetic samples; teacher is a probabilities function
    (consolidate.model_teacher). With shift > 0 each call moves every stamp by a random offset of
    up to that fraction of the side (TriggerConfig.hold_shift; global RNG)."""
    check_hold(hold)
    classes = torch.as_tensor(list(classes), dtype=torch.long)
    reach = max(1, round(shift * generator.input_shape[-2])) if shift > 0 else 0

    def term(student: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            x = draw(generator, classes, batch_size, device)
            target = teacher(x)
        held = [stamp.moved(*(int(v) for v in torch.randint(-reach, reach + 1, (2,)))) if reach else stamp
                for stamp in stamps]
        # every stamp's inputs in one batch (BatchNorm is frozen in distillation, so the batch's
        # make-up changes no output)
        log_s = F.log_softmax(student(torch.cat([stamp(x) for stamp in held])), dim=1).split(len(x))
        losses = [away_from(log_p, target, stamp.target) if hold == "target" and stamp.target is not None
                  else F.kl_div(log_p, target, reduction="batchmean") for log_p, stamp in zip(log_s, held)]
        return torch.stack(losses).mean()

    return term


def away_from(log_p: torch.Tensor, teacher_probs: torch.Tensor, target: int) -> torch.Tensor:
    """mean of -log(1 - p(target)) over the inputs the teacher puts elsewhere (0 if there are none)."""
    others = teacher_probs.argmax(1) != target
    if not others.any():
        return log_p.sum() * 0.0
    p_target = log_p[others, target].exp().clamp(max=1.0 - 1e-6)
    return -torch.log1p(-p_target).mean()


def off_target_samples(stamps: list):
    """A `keep` for consolidate, or None where no stamp names a target: a synthetic sample stays
    unless the teacher puts it in a stamp's target while the generator drew it as another class.

    Why: the teacher (the original, or a blend that trusts it on the classes the remaining clients
    support) puts some samples of other classes in the target because they carry part of the
    trigger's features, and its soft labels on them teach the student the way to the target again,
    through inputs no stamp covers (docs/findings.md, session 18: a student whose start had shed the
    backdoor sent 47% of synthetic and 22% of real triggered inputs to the target after distillation,
    while the one stamp found, held, sent none)."""
    targets = sorted({stamp.target for stamp in stamps if stamp.target is not None})
    if not targets:
        return None

    def keep(labels: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        named = torch.as_tensor(targets, device=labels.device)
        return ~(torch.isin(teacher_probs.argmax(1), named) & ~torch.isin(labels, named))

    return keep


@torch.no_grad()
def departs_to(original: nn.Module, other: nn.Module, stamp, x: torch.Tensor) -> int:
    """The class the original sends stamped inputs to more often than `other` does."""
    stamped = stamp(x)
    out = original(stamped)
    ours = torch.bincount(out.argmax(1), minlength=out.shape[1])
    theirs = torch.bincount(other(stamped).argmax(1), minlength=out.shape[1])
    return int((ours - theirs).argmax())


@torch.no_grad()
def flip_rate(model: nn.Module, stamps: list, x: torch.Tensor) -> float:
    """Share of inputs whose predicted class a stamp changes (mean over stamps)."""
    clean = model(x).argmax(1)
    return float(sum(float((model(s(x)).argmax(1) != clean).float().mean()) for s in stamps) / max(1, len(stamps)))
