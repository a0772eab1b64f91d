"""Unlearning features and labels (Warnecke, Pirch, Wressnegger, Rieck; NDSS 2023): requests
that correct part of the training data (zero a pixel region, relabel mislabelled samples)
rather than delete whole samples, and the closed-form updates that honour them."""

from fedunlearn.registry import Registry

FL_METHODS = Registry("feature/label method", {
    "fl_retrain": "fedunlearn.features_labels.methods.retrain",
    "first_order": "fedunlearn.features_labels.methods.first_order",
    "second_order": "fedunlearn.features_labels.methods.second_order",
    "fl_finetune": "fedunlearn.features_labels.methods.finetune",
})
