"""Experiment kinds, chosen by the top-level `kind` key of a config file.

An experiment module has a frozen dataclass `Config` (the whole file) and
`run(cfg, out_dir, progress=True) -> dict` that writes report.json / report.md / plots. Each
kind is a thin driver over the shared pieces in pipeline.py (the methods section, make_task,
run_method, cached checkpoints, evaluate_against_reference).
"""

from fedunlearn.registry import Registry

EXPERIMENTS = Registry("experiment kind", {
    "centralized": "fedunlearn.experiments.centralized",
    "cluster": "fedunlearn.experiments.cluster",
    "federated": "fedunlearn.experiments.federated",
    "federated_matrix": "fedunlearn.experiments.federated_matrix",
    "survey": "fedunlearn.experiments.survey",
    "graph": "fedunlearn.experiments.graph",
    "features_labels": "fedunlearn.experiments.features_labels",
})
