"""Source-free repair of a model from which some data's influence was roughly removed.

The federated methods start from a *reference*: the global model with the departing client's
stored updates subtracted. With IID clients it is close to retraining; with label skew it can
lose whole classes that the departing client held most of (docs/findings.md). The repair
gives that back without any training data:

1. `repair`: a label-conditioned generator is trained against the frozen original model
   (which holds everyone's knowledge) to synthesize stand-in data. If, in every class, the
   reference agrees with the original on most of the synthetic samples the original puts in
   that class (`skip_agreement`), subtraction lost nothing the synthetic data can show, and
   the reference is kept as it is: any distillation from the original then costs accuracy
   and re-teaches some backdoor. The check is per class because label skew loses whole
   classes while the overall agreement stays high (docs/findings.md).
   Otherwise a student initialised at the reference is distilled from the original on
   synthetic samples for a short, fixed budget (long distillation slowly re-teaches the backdoor).
2. `refine` (when the departing client cooperates): more distillation steps, with a forget
   term from the client's statistics (`forget.fisher_penalty`) holding the student where the
   client's own data says it must stay, so the extra steps restore accuracy without the backdoor.
Paper: Ahmed et al., Towards Source-Free Machine Unlearning, CVPR 2025.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from fedunlearn.config import check_range
from fedunlearn.training import clone
from fedunlearn.unlearn.source_free.consolidate import (ConsolidateConfig, consolidate, model_teacher, predicted,
                                                       worst_class_agreement)
from fedunlearn.unlearn.source_free.forget import fisher_penalty
from fedunlearn.unlearn.source_free.generator import Generator, GeneratorConfig, sample, train_generator


@dataclass(frozen=True)
class RepairConfig:
    generator: GeneratorConfig = GeneratorConfig()
    consolidate: ConsolidateConfig = ConsolidateConfig()
    skip_agreement: float = 0.5  # keep the reference when, in every class, it agrees with the original on
                                 # at least this share of the synthetic samples; > 1: always distil
    check_samples: int = 1000    # synthetic samples for that check (about 100 per class)

    def __post_init__(self):
        check_range("skip_agreement", self.skip_agreement, 0.0)
        check_range("check_samples", self.check_samples, 1)


def repair(original: nn.Module, reference: nn.Module, num_classes: int, input_shape, cfg: RepairConfig, device,
           classes=None, seed: int = 0) -> tuple[nn.Module, Generator, dict]:
    """Returns (student, generator, stats); `original` and `reference` are not modified."""
    start = time.perf_counter()
    classes = list(range(num_classes)) if classes is None else list(classes)
    generator, stats = train_generator(original, input_shape, num_classes, cfg.generator, device,
                                       classes=classes, seed=seed)
    x, y = sample(generator, classes, cfg.check_samples, device, seed=seed + 1)
    said, ref_said = predicted(original, x, device), predicted(reference, x, device)
    stats["synthetic_label_agreement"] = float((said == y).float().mean())
    stats["reference_agreement"] = float((ref_said == said).float().mean())
    stats["reference_worst_class_agreement"] = worst_class_agreement(ref_said, said, num_classes)
    stats["consolidated"] = stats["reference_worst_class_agreement"] < cfg.skip_agreement
    if stats["consolidated"]:
        teacher = model_teacher(original, cfg.consolidate.temperature)
        student, more = consolidate(reference, teacher, generator, classes, cfg.consolidate, device, seed=seed + 2)
        stats.update(more)
        stats["student_agreement"] = float((predicted(student, x, device) == said).float().mean())
    else:
        student = clone(reference).to(device).eval()
    stats["repair_s"] = time.perf_counter() - start
    return student, generator, stats


def refine(student: nn.Module, original: nn.Module, generator: Generator, fisher: dict, cfg: ConsolidateConfig,
           device, classes=None, seed: int = 0) -> tuple[nn.Module, dict]:
    """Distil further from the original, holding the student near its current weights where the
    Fisher statistics `fisher` (from the departing client's flagged samples) say it matters."""
    classes = list(range(generator.num_classes)) if classes is None else list(classes)
    term = fisher_penalty(student.to(device), fisher)
    refined, stats = consolidate(student, model_teacher(original, cfg.temperature), generator, classes, cfg, device,
                                 forget_term=term, seed=seed + 3)
    return refined, {f"refine_{k.removeprefix('consolidate_')}": v for k, v in stats.items()}
