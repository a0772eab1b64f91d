"""Client-side computations the server may ask one client for, by name (`ctx.query`).

A query function runs on the client, on its own data, and returns only tensors and metrics:

    fn(model: nn.Module, local: LocalData, config: dict) -> (dict[str, Tensor], dict[str, float])

`model` is a fresh model loaded with the state the server sent; `local` is the client's
LocalData (its training set, backdoored samples included, and its local recipe). Entries are
"module:function" strings, imported when first used, so that every client process (a Ray
actor, a SuperNode) resolves the same function: adding a query is adding one line here (the
function usually lives in the module of the method that asks for it).
"""

from __future__ import annotations

from typing import Callable

from fedunlearn.registry import Registry

CLIENT_QUERIES = Registry("client query", {
    "pga_ascent": "fedunlearn.federated.methods.pga:client_ascent",
    "source_free_forget": "fedunlearn.federated.methods.source_free_cooperative:client_forget",
})


def get_query(name: str) -> Callable:
    return CLIENT_QUERIES.get(name)
