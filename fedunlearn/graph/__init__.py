"""Graph unlearning: node-classification tasks, GNNs on sparse adjacency, deletion requests
(nodes, edges, features) and the methods that honour them (the GRAPH_METHODS registry)."""

from fedunlearn.registry import Registry

GRAPH_METHODS = Registry("graph method", {
    "graph_retrain": "fedunlearn.graph.methods.retrain",
    "graph_finetune": "fedunlearn.graph.methods.finetune",
    "graph_eraser": "fedunlearn.graph.methods.eraser",
    "gif": "fedunlearn.graph.methods.gif",
    "certified_graph_unlearning": "fedunlearn.graph.methods.certified",
    "gnndelete": "fedunlearn.graph.methods.gnndelete",
})
