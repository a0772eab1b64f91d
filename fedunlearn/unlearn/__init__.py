"""Centralized unlearning methods: one module each, one registry line each.

Each module has a frozen dataclass `Config` and `unlearn(task, cfg) -> (model, stats)`.
Adding a method = adding a module here and a line to METHODS.
"""

from fedunlearn.registry import Registry
from fedunlearn.unlearn.base import Stats, UnlearnTask

METHODS = Registry("method", {
    "retrain": "fedunlearn.unlearn.retrain",
    "finetune": "fedunlearn.unlearn.finetune",
    "neggrad_plus": "fedunlearn.unlearn.neggrad_plus",
    "random_label": "fedunlearn.unlearn.random_label",
    "sisa": "fedunlearn.unlearn.sisa",
    "amun": "fedunlearn.unlearn.amun",
})

__all__ = ["METHODS", "Stats", "UnlearnTask"]
