"""Experiment kinds, chosen by the top-level `kind` key of a config file.

An experiment module has a frozen dataclass `Config` (the whole file) and
`run(cfg, out_dir, progress=True) -> dict` that writes report.json / report.md / plots.
"""

from fedunlearn.registry import Registry

EXPERIMENTS = Registry("experiment kind", {
    "centralized": "fedunlearn.experiments.centralized",
    "cluster": "fedunlearn.experiments.cluster",
    "federated": "fedunlearn.federated.experiment",
    "survey": "fedunlearn.experiments.survey",
    "graph": "fedunlearn.experiments.graph",
    "features_labels": "fedunlearn.experiments.features_labels",
})
