"""Source-free repair of a model from which some data's influence was roughly removed.

The federated methods start from a *reference*: the global model with the departing client's
stored updates subtracted. With IID clients it is close to retraining; with label skew it can
lose whole classes that the departing client held most of (docs/findings.md). The repair
gives that back without any training data:

1. `repair`: a label-conditioned generator is trained against the frozen original model
   (which holds everyone's knowledge) and, with teacher = "remaining", against the reference
   too, so that its samples show what the federation without the client still recognises
   (a trigger that only the original knows no longer earns a sample its label). The teacher
   is then the per-class blend of support.py: on a sample the original puts in class c,
   support_c * p_original + (1 - support_c) * p_reference, where support_c is how well the
   remaining clients' own local models (from their stored updates) recognise c. Classes the
   remaining clients hold are restored from the original; a class only the departing client
   held stays as the reference has it, as retraining would leave it. If, in every class, the
   reference already agrees with that teacher on at least `skip_agreement` of the synthetic
   samples, the reference is kept; otherwise a student initialised at the reference is
   distilled from the teacher for a short, fixed budget (long distillation from a teacher that
   still carries a backdoor slowly re-teaches it). teacher = "original" is the plain variant:
   the original as the teacher and the generator's only judge.
2. `refine` (when the departing client cooperates): more distillation steps, with a forget
   term from the client's statistics (`forget.fisher_penalty`) holding the student where the
   client's own data says it must stay, so the extra steps restore accuracy without the backdoor.
Paper: Ahmed et al., Towards Source-Free Machine Unlearning, CVPR 2025.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from torch import nn

from fedunlearn.config import check_range
from fedunlearn.training import clone
from fedunlearn.unlearn.source_free.consolidate import (ConsolidateConfig, consolidate, model_teacher, predicted,
                                                       worst_class_agreement)
from fedunlearn.unlearn.source_free.forget import fisher_penalty
from fedunlearn.unlearn.source_free.generator import Generator, GeneratorConfig, sample, train_generator
from fedunlearn.unlearn.source_free.inference import logits
from fedunlearn.unlearn.source_free.support import blend, blended_teacher


@dataclass(frozen=True)
class RepairConfig:
    generator: GeneratorConfig = GeneratorConfig()
    consolidate: ConsolidateConfig = ConsolidateConfig()
    skip_agreement: float = 0.5  # keep the reference when, in every class, it agrees with the teacher on
                                 # at least this share of the synthetic samples; > 1: always distil
    check_samples: int = 1000    # synthetic samples for that check (about 100 per class)
    teacher: Literal["remaining", "original"] = "remaining"  # remaining: per-class blend by the remaining
                                 # clients' support (support.py); original: the global model as it is
    support_clients: int = 20    # the support is estimated from at most this many remaining clients (seeded sample)

    def __post_init__(self):
        check_range("skip_agreement", self.skip_agreement, 0.0)
        check_range("check_samples", self.check_samples, 1)
        check_range("support_clients", self.support_clients, 1)


def repair(original: nn.Module, reference: nn.Module, num_classes: int, input_shape, cfg: RepairConfig, device,
           classes=None, seed: int = 0, support_fn=None) -> tuple[nn.Module, Generator, dict]:
    """Returns (student, generator, stats); `original` and `reference` are not modified.

    `support_fn(x, labels) -> per-class support in [0, 1]` (support.class_support over the
    remaining clients' local models) is needed for teacher = "remaining"; without it the
    original is the teacher."""
    start = time.perf_counter()
    classes = list(range(num_classes)) if classes is None else list(classes)
    remaining = cfg.teacher == "remaining" and support_fn is not None
    # the reference judges the samples too: they show what the federation without the client knows
    generator, stats = train_generator(original, input_shape, num_classes, cfg.generator, device,
                                       classes=classes, seed=seed, judge=reference if remaining else None)
    x, y = sample(generator, classes, cfg.check_samples, device, seed=seed + 1)
    # each model's logits on the check samples, computed once (inference.py) and reused below
    original_logits, reference_logits = logits(original, x, device), logits(reference, x, device)
    said, ref_said = original_logits.argmax(1), reference_logits.argmax(1)
    stats["synthetic_label_agreement"] = float((said == y).float().mean())
    stats["reference_agreement"] = float((ref_said == said).float().mean())
    if remaining:
        support = support_fn(x, said)
        teacher = blended_teacher(original.to(device), reference.to(device), support, cfg.consolidate.temperature)
        stats["support_min"], stats["support_mean"] = float(support.min()), float(support.mean())
        taught = blend(original_logits, reference_logits, support, cfg.consolidate.temperature).argmax(1)
    else:
        teacher, taught = model_teacher(original, cfg.consolidate.temperature), said
    stats["reference_worst_class_agreement"] = worst_class_agreement(ref_said, taught, num_classes)
    stats["consolidated"] = stats["reference_worst_class_agreement"] < cfg.skip_agreement
    if stats["consolidated"]:
        student, more = consolidate(reference, teacher, generator, classes, cfg.consolidate, device, seed=seed + 2)
        stats.update(more)
        stats["student_agreement"] = float((predicted(student, x, device) == said).float().mean())
    else:
        student = clone(reference).to(device).eval()
    stats["repair_s"] = time.perf_counter() - start
    return student, generator, stats


def refine(student: nn.Module, original: nn.Module, generator: Generator, fisher: dict, cfg: ConsolidateConfig,
           device, classes=None, seed: int = 0, teacher=None) -> tuple[nn.Module, dict]:
    """Distil further from the original, holding the student near its current weights where the
    Fisher statistics `fisher` (from the departing client's flagged samples) say it matters."""
    classes = list(range(generator.num_classes)) if classes is None else list(classes)
    term = fisher_penalty(student.to(device), fisher)
    teacher = teacher or model_teacher(original, cfg.temperature)
    refined, stats = consolidate(student, teacher, generator, classes, cfg, device, forget_term=term, seed=seed + 3)
    return refined, {f"refine_{k.removeprefix('consolidate_')}": v for k, v in stats.items()}
