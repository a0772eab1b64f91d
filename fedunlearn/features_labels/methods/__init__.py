"""One module per feature/label unlearning method; FL_METHODS in fedunlearn.features_labels names them."""
