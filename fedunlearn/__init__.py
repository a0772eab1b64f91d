"""fedunlearn: machine unlearning on Ray, federated (Flower) and centralized (SISA, AMUN, baselines)."""

__version__ = "0.1.0"
