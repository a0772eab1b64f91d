"""Graph unlearning: train a GNN, apply deletion requests (nodes, edges, features), run
graph retraining (the reference) and every listed graph method on each, judged side by side.

For each model in experiment.models and each request in [[forget]]: the original is trained
once on the whole graph; every method gets the same GraphTask; methods with a `prepare`
(GraphEraser's shards) run it untimed before the request. A second retraining from another
seed is the noise floor for the distances. Methods that do not support a model (the certified
method needs SGC, GNNDelete a GCN) or a request target are skipped for it, with a note.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fedunlearn.cluster import ClusterConfig, ray_session, warm_up
from fedunlearn.config import build, to_dict
from fedunlearn.contract import supports
from fedunlearn.errors import ConfigError
from fedunlearn.experiments.pipeline import MethodsSection, run_method, timed
from fedunlearn.graph import GRAPH_METHODS
from fedunlearn.graph.data import GraphDataConfig, load_graph
from fedunlearn.graph.metrics import GraphEvaluation, compare
from fedunlearn.graph.models import MODELS, GraphModelConfig, GraphTrainConfig, build_graph_model, train_graph
from fedunlearn.graph.requests import GraphForgetConfig, select_request
from fedunlearn.graph.task import GraphTask
from fedunlearn.metrics.report import write_report

log = logging.getLogger("fedunlearn")
REFERENCE, NOISE_FLOOR = "graph_retrain", "retrain_other_seed"
COLUMNS = ["model", "request", "method", "test_acc", "retain_acc", "forget_acc", "neighbour_acc", "edge_mia_auc",
           "js_x1000", "l2_to_retrain", "avg_gap", "wall_s", "speedup"]


@dataclass(frozen=True)
class ExperimentSection:
    name: str = "graph"
    seed: int = 0
    models: tuple[str, ...] = ("gcn", "sgc")
    methods: tuple[str, ...] = ("graph_retrain", "graph_finetune", "graph_eraser", "gif", "certified_graph_unlearning",
                                "gnndelete")
    noise_floor: bool = True   # also retrain from another seed: the distances' noise floor


@dataclass(frozen=True)
class Config(MethodsSection):
    kind: str = "graph"
    experiment: ExperimentSection = ExperimentSection()
    data: GraphDataConfig = GraphDataConfig()
    model: GraphModelConfig = GraphModelConfig()
    train: GraphTrainConfig = GraphTrainConfig()
    recipes: dict = field(default_factory=dict)   # [recipes.<model>]: train keys that differ for that model
    forget: tuple[GraphForgetConfig, ...] = (GraphForgetConfig(name="nodes"),
                                             GraphForgetConfig(name="edges", target="edges", count=50))
    cluster: ClusterConfig = ClusterConfig()
    methods: dict = field(default_factory=dict)   # [methods.<name>]: that method's Config

    registry, reference = GRAPH_METHODS, REFERENCE  # MethodsSection checks every listed method and section

    def __post_init__(self):
        self.check_methods()
        for name in (*self.experiment.models, *self.recipes):
            if name not in MODELS:
                raise ConfigError(f"unknown graph model '{name}'; valid choices: {', '.join(MODELS)}")
        if not self.forget:
            raise ConfigError("a graph config needs at least one [[forget]] request")
        for name in self.experiment.models:
            self.recipe(name)

    def recipe(self, model: str) -> GraphTrainConfig:
        return build(GraphTrainConfig, {**to_dict(self.train), **self.recipes.get(model, {})}, f"recipes.{model}")


def run(cfg: Config, out_dir: str | Path, progress: bool = True) -> dict:
    out = Path(out_dir)
    seed = cfg.experiment.seed
    graph = load_graph(cfg.data, seed)
    log.info("graph %s: %d nodes, %d edges, %d training nodes", graph.name, graph.n, graph.edges.shape[1],
             int(graph.train.sum()))
    # Under checkpoints/, which only fedunlearn writes: --out may name a folder holding a user's own "work".
    work = out / "checkpoints" / "graph-work"
    shutil.rmtree(work, ignore_errors=True)  # shard checkpoints of an earlier run would make deletions free
    rows, notes = [], []
    with ray_session(cfg.cluster):
        if "graph_eraser" in cfg.experiment.methods:
            warm_up(cfg.cluster, modules=("fedunlearn.graph.methods.eraser",))
        for model_name in cfg.experiment.models:
            recipe, model_cfg = cfg.recipe(model_name), dataclasses.replace(cfg.model, name=model_name)

            def make_model(model_cfg=model_cfg, s=seed):
                return build_graph_model(model_cfg, graph.x.shape[1], graph.num_classes, s)

            original, original_s = timed(lambda: train_graph(make_model(), graph, recipe, seed=seed))
            for i, spec in enumerate(cfg.forget):
                label = spec.name or f"{spec.target}-{spec.kind}"
                request = select_request(graph, spec, seed + i)
                after = request.apply(graph)
                task = GraphTask(original, graph, after, request, recipe, make_model, model_name, seed,
                                 str(work / model_name), cfg.cluster)
                rows += _run_request(cfg, task, label, original, original_s, notes)
    write_report(out, f"{cfg.experiment.name}: graph unlearning on {graph.name}", to_dict(cfg), rows,
                 extra={"nodes": graph.n, "edges": int(graph.edges.shape[1])}, notes=notes, columns=COLUMNS)
    return {"results": rows, "config": to_dict(cfg), "columns": COLUMNS}


def _run_request(cfg: Config, task: GraphTask, label: str, original, original_s: float, notes: list) -> list[dict]:
    evaluation = GraphEvaluation(task.before, task.after, task.request, task.seed)
    head = {"model": task.model_name, "request": label, "request_size": task.request.size()}
    models, rows = {"original": original}, [{**head, "method": "original", "train_s": original_s}]
    for name in cfg.method_names():
        method = cfg.method(name)
        if not supports(method, "MODELS", task.model_name):
            notes.append(f"{name} skipped for {task.model_name}: it needs model {' or '.join(method.MODELS)}")
            continue
        if not supports(method, "TARGETS", task.request.target):
            notes.append(f"{name} skipped for request {label}: it handles {' and '.join(method.TARGETS)} only")
            continue
        # prepare (GraphEraser's shards on the graph before the request) runs untimed inside run_method
        models[name], row = run_method(method, task, cfg.method_config(name))
        rows.append({**head, "method": name, **row})
        log.info("%s / %s / %s: %.2f s", task.model_name, label, name, row["wall_s"])
    if cfg.experiment.noise_floor:
        def other():
            model = build_graph_model(dataclasses.replace(cfg.model, name=task.model_name), task.before.x.shape[1],
                                      task.before.num_classes, task.seed + 1000)
            return train_graph(model, task.after, task.train_cfg, seed=task.seed + 1000)
        models[NOISE_FLOOR], seconds = timed(other)
        rows.append({**head, "method": NOISE_FLOOR, "wall_s": seconds})
    ref_model = models[REFERENCE]
    ref_row = next(r for r in rows if r["method"] == REFERENCE)
    ref_row.update(evaluation.evaluate(ref_model))
    ref_out = evaluation.outputs(ref_model)
    for row in rows:
        if row["method"] != REFERENCE:
            row.update(evaluation.evaluate(models[row["method"]]))
        compare(row, evaluation.outputs(models[row["method"]]), models[row["method"]], ref_row, ref_out, ref_model)
        row["js_x1000"] = 1000 * row["js_to_retrain"]  # JS in thousandths: the table prints 4 decimals
        if row["method"] == "graph_eraser" and row.get("shard_count_factor", float("inf")) < float("inf"):
            row["speedup_of_shard_factor"] = row["speedup"] / row["shard_count_factor"]
    return rows
