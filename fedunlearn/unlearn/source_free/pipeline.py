"""Source-free repair of a model from which some data's influence was roughly removed (seed 000).

The federated methods start from a *reference*: the global model with the departing client's
stored updates subtracted, which is already close to retraining (design.md) but loses
accuracy where the client's updates and the others' interacted (non-IID data, BatchNorm).
The repair gives that accuracy back without any training data:

1. a label-conditioned generator is trained against the frozen original model (which holds
   everyone's knowledge) to synthesize stand-in data;
2. a student initialised at the reference is distilled on those samples from a teacher that
   mixes the original and the reference in log space. Pure distillation from the original
   re-teaches a little of what was removed (a backdoor: 0.4% -> 1.7% in the prototype); the
   reference's share damps what only the original believes. An optional forget term (e.g.
   `forget.fisher_penalty` from the departing client's statistics) holds the student to the
   reference where the departing client's own data says the two must differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import nn

from fedunlearn.config import check_range
from fedunlearn.unlearn.source_free.consolidate import ConsolidateConfig, ForgetTerm, consolidate, mixed_teacher
from fedunlearn.unlearn.source_free.generator import GeneratorConfig, sample, train_generator


@dataclass(frozen=True)
class RepairConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    consolidate: ConsolidateConfig = field(default_factory=ConsolidateConfig)
    reference_weight: float = 0.5   # teacher = p_orig^(1-w) * p_ref^w; 0 = the original alone

    def __post_init__(self):
        check_range("reference_weight", self.reference_weight, 0.0, 1.0)


def repair(original: nn.Module, reference: nn.Module, num_classes: int, input_shape, cfg: RepairConfig, device,
           classes=None, forget_term: ForgetTerm | None = None, seed: int = 0) -> tuple[nn.Module, dict]:
    """Returns the repaired student (a new module; `original` and `reference` are unchanged) and stats."""
    start = time.perf_counter()
    classes = list(range(num_classes)) if classes is None else list(classes)
    generator, stats = train_generator(original, input_shape, num_classes, cfg.generator, device,
                                       classes=classes, seed=seed)
    teacher = mixed_teacher(original, reference, cfg.reference_weight, cfg.consolidate.temperature)
    student, more = consolidate(reference, teacher, generator, classes, cfg.consolidate, device,
                                forget_term=forget_term, seed=seed + 1)
    stats.update(more)
    # How faithfully the synthetic data stands for the original's knowledge, for the report.
    x, y = sample(generator, classes, 256, device, seed=seed + 2)
    original.to(device).eval()
    stats["synthetic_label_agreement"] = float((original(x.to(device)).argmax(1).cpu() == y).float().mean())
    stats["repair_s"] = time.perf_counter() - start
    return student, stats
