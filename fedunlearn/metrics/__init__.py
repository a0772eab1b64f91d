"""One evaluation for every method: accuracies, MIA, distances, Avg Gap, speedup, reports, plots."""

from fedunlearn.metrics.distance import avg_gap, js_divergence, l2_distance, speedup
from fedunlearn.metrics.evaluate import EvalConfig, Outputs, Splits, compare_to_reference, evaluate
from fedunlearn.metrics.mia import MiaResult, sample_feature, svc_mia
from fedunlearn.metrics.report import markdown_table, write_report

__all__ = ["EvalConfig", "MiaResult", "Outputs", "Splits", "avg_gap", "compare_to_reference", "evaluate",
           "js_divergence", "l2_distance", "markdown_table", "sample_feature", "speedup", "svc_mia",
           "write_report"]
