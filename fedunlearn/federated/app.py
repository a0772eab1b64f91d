"""The Flower apps (Message API): a ServerApp that runs the whole withdrawal experiment and a ClientApp.

ClientApp handlers, each on the client's own partition (rebuilt from node_config partition-id):
  query.hello  -> its partition id and sample count (how the server maps partitions to nodes)
  train        -> one round of local training from the sent model; replies with the local model
  query.call   -> CLIENT_QUERIES[config.query] on its data (queries.py); replies with arrays + metrics
The ServerApp trains with FedAvg, processes the withdrawal and runs every method (driver.py).

Config: `fedunlearn run` builds both apps around the validated config (make_*_app(mapping));
`flwr run .` uses the module-level `server_app` / `client_app`, which read the run config keys
`config` (a TOML path, relative to the project), `overrides` ("k=v; k=v") and `out-dir`
from [tool.flwr.app.config] in pyproject.toml or `flwr run . --run-config`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedunlearn.config import apply_overrides, build, load_toml
from fedunlearn.federated.client import answer_query, client_info, local_data, local_train

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _build(mapping: dict, client: bool):
    from fedunlearn.federated.config import Config

    if client:
        # A client needs its data, model and recipe, not the server's choice of methods: a method
        # registered only in the server's process (or not importable on the clients) must not stop it.
        mapping = {**mapping, "methods": {}, "experiment": {**mapping.get("experiment", {}), "methods": ["retrain"]},
                   "audit": {}}
    return build(Config, mapping)


@lru_cache(maxsize=4)
def _config_from_json(text: str, client: bool = False):
    return _build(json.loads(text), client)


@lru_cache(maxsize=4)
def _config_from_run_config(path: str, overrides: str, client: bool = False):
    file = Path(path)
    if not file.is_absolute() and not file.exists():
        file = PROJECT_ROOT / path
    mapping = apply_overrides(load_toml(file), [o.strip() for o in overrides.split(";") if o.strip()])
    return _build(mapping, client)


def _config(context: Context, mapping: dict | None, client: bool = False):
    if mapping is not None:
        return _config_from_json(json.dumps(mapping, sort_keys=True), client)
    run_config = context.run_config
    return _config_from_run_config(str(run_config.get("config", "simulations/withdrawal.toml")),
                                   str(run_config.get("overrides", "")), client)


def make_client_app(mapping: dict | None = None) -> ClientApp:
    app = ClientApp()

    def own(context: Context):
        cfg = _config(context, mapping, client=True)
        return cfg, local_data(cfg, int(context.node_config["partition-id"]))

    @app.query("hello")
    def hello(msg: Message, context: Context) -> Message:
        _, local = own(context)
        return Message(RecordDict({"metrics": MetricRecord(client_info(local))}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg, local = own(context)
        state = msg.content["arrays"].to_torch_state_dict()
        new, num, metrics = local_train(cfg, local, state, dict(msg.content["config"]))
        return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": MetricRecord({**metrics, "num_examples": num})}),
                       reply_to=msg)

    @app.query("call")
    def call(msg: Message, context: Context) -> Message:
        _, local = own(context)
        config = dict(msg.content["config"])
        arrays = msg.content["arrays"]
        state = arrays.to_torch_state_dict() if len(arrays) else {}
        tensors, metrics = answer_query(local, str(config.pop("query")), state, config)
        return Message(RecordDict({"arrays": ArrayRecord(tensors), "metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


def make_server_app(mapping: dict | None = None, out_dir: str | None = None, progress: bool = True,
                    on_exit=None) -> ServerApp:
    """`on_exit(unanswered)` is called when the ServerApp's work has ended, whether it succeeded or
    raised, with the number of messages that got no reply before their round's timeout."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from fedunlearn.federated.driver import serve
        from fedunlearn.federated.transport import FlowerTransport

        transport = None
        try:
            cfg = _config(context, mapping)
            if cfg.audit.models:
                from fedunlearn.errors import ConfigError

                raise ConfigError("[audit] runs its federations as Ray tasks with in-process clients: run it with "
                                  "`fedunlearn run`, not on a Flower deployment")
            out = out_dir or str(context.run_config.get("out-dir", "") or f"results/{cfg.experiment.name}")
            transport = FlowerTransport(grid, cfg.federation.num_clients)
            serve(cfg, transport, out, progress=progress)
        finally:
            if on_exit is not None:
                on_exit(transport.unanswered if transport is not None else 0)

    return app


# For `flwr run .` ([tool.flwr.app.components] in pyproject.toml).
server_app = make_server_app()
client_app = make_client_app()
