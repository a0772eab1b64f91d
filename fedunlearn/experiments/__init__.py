"""Experiment kinds, chosen by the top-level `kind` key of a config file.

An experiment module has a frozen dataclass `Config` (the whole file) and
`run(cfg, out_dir, progress=True) -> dict` that writes report.json / report.md / plots.
"""

from fedunlearn.registry import Registry

EXPERIMENTS = Registry("experiment kind", {
    "centralized": "fedunlearn.experiments.centralized",
    "cluster": "fedunlearn.experiments.cluster",
    "federated": "fedunlearn.federated.experiment",
    "federated_matrix": "fedunlearn.experiments.federated_matrix",
    "survey": "fedunlearn.experiments.survey",
})
