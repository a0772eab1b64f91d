"""Federated unlearning methods: one module each, one registry line each.

A method module has a frozen dataclass `Config` (defaults that work) and
`unlearn(ctx: FedContext, cfg) -> FedResult` (see fedunlearn/federated/context.py), and may
have the optional hooks and flags of fedunlearn/contract.py. It sees only the server's view;
the context counts what it sends to the remaining and the departing clients. A method that
needs the departing client asks it through `ctx.query`, which fails with WithdrawalError when
that client is offline; set `COOPERATIVE = True` in such a module so the runner can say so up front.
"""

from fedunlearn.registry import Registry

FED_METHODS = Registry("federated method", {
    "retrain": "fedunlearn.federated.methods.retrain",
    "continue": "fedunlearn.federated.methods.continue_training",
    "federaser": "fedunlearn.federated.methods.federaser",
    "pga": "fedunlearn.federated.methods.pga",
    "subtract": "fedunlearn.federated.methods.subtract",
    "source_free_absent": "fedunlearn.federated.methods.source_free_absent",
    "source_free_cooperative": "fedunlearn.federated.methods.source_free_cooperative",
    "replay": "fedunlearn.federated.methods.replay",
    "fedrecovery": "fedunlearn.federated.methods.fedrecovery",
    "fedrecover": "fedunlearn.federated.methods.fedrecover",
})



def load_method(name: str):
    """The method's module, or a one-line ConfigError if it is listed but cannot be imported."""
    return FED_METHODS.load(name)


__all__ = ["FED_METHODS", "load_method"]
