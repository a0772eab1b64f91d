"""The `[audit]` section: how many models per ensemble, which forget sets, which methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fedunlearn.cluster.ray_env import ClusterConfig
from fedunlearn.config import check_range
from fedunlearn.data.forget import ForgetConfig


@dataclass(frozen=True)
class AuditConfig:
    models: int = 0                       # N per ensemble; 0 = no audit (a plain one-seed run)
    forget: tuple[ForgetConfig, ...] = ()  # [[audit.forget]] tables: the forget sets audited; empty = [forget]
    methods: tuple[str, ...] = ()         # empty = experiment.methods; `retrain` is always the reference
    klom_fit: Literal["gaussian", "bins"] = "gaussian"  # bins need far more models than a few
    cluster: ClusterConfig = ClusterConfig()  # [audit.cluster]: where the ensembles' Ray tasks run
    # Methods' diagnose hooks compare a result with its exact solution (untimed; newton_source_free's
    # costs more than the method). The audit judges against retraining, so they are off by default.
    diagnose: bool = False

    def __post_init__(self):
        check_range("audit.models", self.models, 0)
        if 0 < self.models < 3:
            raise ValueError(f"'audit.models' must be 0 (off) or at least 3 (U-LiRA fits each side on all but one "
                             f"model), got {self.models}")
        for name in self.methods:
            self.method_registry().check(name)

    @staticmethod
    def method_registry():
        from fedunlearn.unlearn import METHODS

        return METHODS


@dataclass(frozen=True)
class FedAuditConfig(AuditConfig):
    """The federated kind's `[audit]`: the forget set is the departing client's training data,
    and `methods` are federated methods."""

    def __post_init__(self):
        if self.forget:
            raise ValueError("a federated audit forgets the departing client's data (set [withdrawal] client); "
                             "remove the [[audit.forget]] tables")
        super().__post_init__()

    @staticmethod
    def method_registry():
        from fedunlearn.federated.methods import FED_METHODS

        return FED_METHODS
