"""Client-side computations the server may ask one client for, by name (`ctx.query`).

A query function runs on the client, on its own data, and returns only tensors and metrics:

    fn(model: nn.Module, local: LocalData, config: dict) -> (dict[str, Tensor], dict[str, float])

`model` is a fresh model loaded with the state the server sent; `local` is the client's
LocalData (its training set, backdoored samples included, and its local recipe). Entries are
"module:function" strings, imported when first used, so that every client process (a Ray
actor, a SuperNode) resolves the same function: adding a query is adding one line here.
"""

from __future__ import annotations

import importlib
from typing import Callable

from fedunlearn.errors import unknown_choice

CLIENT_QUERIES: dict[str, str] = {
    "pga_ascent": "fedunlearn.federated.methods.pga:client_ascent",
    "source_free_forget": "fedunlearn.federated.methods.source_free_cooperative:client_forget",
}


def get_query(name: str) -> Callable:
    if name not in CLIENT_QUERIES:
        raise unknown_choice("client query", name, CLIENT_QUERIES)
    module, _, attr = CLIENT_QUERIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
