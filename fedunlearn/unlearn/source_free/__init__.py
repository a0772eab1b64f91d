"""Source-free unlearning: synthesize stand-in data from the model, then consolidate.

Plain PyTorch, no Ray or Flower: `train_generator` (phase 1), `consolidate` (phase 2), the
forget terms in `forget`, and `pipeline.repair` / `pipeline.refine`, which the federated
methods `source_free_absent` / `source_free_cooperative` run on the server; `support` (what the
remaining clients know, per class) and `inference` (the repair's forward passes, channels-last).
Paper: Ahmed et al., Towards Source-Free Machine Unlearning, CVPR 2025.
"""

from fedunlearn.unlearn.source_free.consolidate import (ConsolidateConfig, agreement, consolidate, freeze_batchnorm,
                                                        model_teacher)
from fedunlearn.unlearn.source_free.generator import (BatchNormMatcher, Generator, GeneratorConfig, draw_labels,
                                                      random_view, sample, train_generator)

__all__ = ["BatchNormMatcher", "ConsolidateConfig", "Generator", "GeneratorConfig", "agreement", "consolidate",
           "draw_labels", "freeze_batchnorm", "model_teacher", "random_view", "sample", "train_generator"]
