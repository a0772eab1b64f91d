"""Forgetting audit: retrain ensembles on Ray, per-example U-LiRA and KLoM, a noise floor, seeds everywhere."""

from fedunlearn.audit.config import AuditConfig

__all__ = ["AuditConfig"]
