"""Centralized unlearning methods: one module each, one registry line each.

Each module has a frozen dataclass `Config` and `unlearn(task, cfg) -> MethodResult(model, stats)`,
and may have the optional hooks and flags of fedunlearn/contract.py. Adding a method = adding a
module here and a line to METHODS.
"""

from fedunlearn.registry import Registry
from fedunlearn.unlearn.base import MethodResult, Stats, UnlearnTask

METHODS = Registry("method", {
    "retrain": "fedunlearn.unlearn.retrain",
    "finetune": "fedunlearn.unlearn.finetune",
    "neggrad_plus": "fedunlearn.unlearn.neggrad_plus",
    "random_label": "fedunlearn.unlearn.random_label",
    "sisa": "fedunlearn.unlearn.sisa",
    "amun": "fedunlearn.unlearn.amun",
    "certified_removal": "fedunlearn.unlearn.certified_removal",
    "newton_source_free": "fedunlearn.unlearn.newton_source_free",
    "sekhari": "fedunlearn.unlearn.sekhari",
    "deltagrad": "fedunlearn.unlearn.deltagrad",
    "unrolling_sgd": "fedunlearn.unlearn.unrolling_sgd",
    "linear_filtration": "fedunlearn.unlearn.linear_filtration",
    "bad_teacher": "fedunlearn.unlearn.bad_teacher",
    "error_max_noise": "fedunlearn.unlearn.error_max_noise",
    "gradient_ascent": "fedunlearn.unlearn.gradient_ascent",
    "l1_sparse": "fedunlearn.unlearn.l1_sparse",
    "salun": "fedunlearn.unlearn.salun",
    "scrub": "fedunlearn.unlearn.scrub",
})

__all__ = ["METHODS", "MethodResult", "Stats", "UnlearnTask"]
