"""One module per graph unlearning method; GRAPH_METHODS in fedunlearn.graph names them."""
