"""Source-free unlearning (seed 000): synthesize stand-in data from the model, then consolidate.

Plain PyTorch, no Ray or Flower: `train_generator` (phase 1) and `consolidate` (phase 2).
The federated methods `source_free_absent` / `source_free_cooperative` call these.
"""

from fedunlearn.unlearn.source_free.consolidate import (ConsolidateConfig, agreement, consolidate, freeze_batchnorm,
                                                        mixed_teacher, model_teacher)
from fedunlearn.unlearn.source_free.generator import (BatchNormMatcher, Generator, GeneratorConfig, draw_labels, sample,
                                                      train_generator)

__all__ = ["BatchNormMatcher", "ConsolidateConfig", "Generator", "GeneratorConfig", "agreement", "consolidate",
           "draw_labels", "freeze_batchnorm", "mixed_teacher", "model_teacher", "sample", "train_generator"]
