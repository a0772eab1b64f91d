"""The method contract: what an unlearning method module must have, what it may have, what it returns.

A method is one module plus one registry line (`METHODS` in fedunlearn/unlearn/__init__.py for
centralized methods, `FED_METHODS` in fedunlearn/federated/methods/__init__.py for federated
ones, `GRAPH_METHODS` in fedunlearn/graph/__init__.py for graph methods, `FL_METHODS` in
fedunlearn/features_labels/__init__.py for feature/label methods). Every experiment kind runs
a method through `fedunlearn.experiments.pipeline.run_method`, so a method gets every hook
below in every kind, with no edit outside its module.

Required:
    Config                   a frozen dataclass whose defaults work; [methods.<name>] in a
                             config file overrides its fields.
    unlearn(task, cfg)       centralized: task is an UnlearnTask (fedunlearn.unlearn.base), the
                             answer a MethodResult(model, stats) (a plain (model, stats) tuple is
                             accepted); federated: task is a FedContext (fedunlearn.federated.context),
                             the answer a FedResult; graph: task is a GraphTask
                             (fedunlearn.graph.task), feature/label: an FLTask
                             (fedunlearn.features_labels.task), both answering a MethodResult.
                             Timed: this is the unlearning cost.

Optional hooks (functions) and flags (module attributes), read only through the accessors here:
    prepare(task, cfg) -> stats
        Training-time bookkeeping that a deployment would do before any deletion request
        (SISA's shards, DeltaGrad's trajectory, Sekhari's statistics). Runs once before the first
        `unlearn`, untimed; its stats join the method's row.
    diagnose(task, cfg, model) -> stats
        Numbers that need what the method must not use (e.g. the exact Newton update), computed
        after `unlearn`, untimed; its stats join the method's row.
    benchmark(task, cfg, result) -> stats
        Extra timing experiments that need the cluster to themselves (parallel against one
        worker); `result` is the timed request's {"wall_s", **stats}. Runs alone after every
        method when the experiment asks for benchmarks (experiment.benchmark).
    warm_up(server, make_model, global_state, num_classes, input_shape, seed, cfg) -> None
        Federated only: start and exercise the server's Ray worker (ServerWorker) before any
        method is timed, so process start-up is not billed to the method.
    CLASS_FORGETTING_ONLY: bool = False
        The method only removes whole classes; kinds that forget random samples skip it.
    COOPERATIVE: bool = False
        Federated only: the method asks the departing client for help (`ctx.query`), so it
        cannot run when that client is offline (withdrawal.departing_online = false).

Optional restrictions (module attributes; None = no restriction), read through `supports`:
    MODELS: tuple[str, ...] | None = None
        Graph only: the model names the method works on (a certified bound needs SGC's linear
        model); the kind skips it, with a note, for any other model.
    TARGETS: tuple[str, ...] | None = None
        Graph only: the request targets (nodes, edges, features) the method handles.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable, NamedTuple, Protocol

HOOKS = ("prepare", "diagnose", "benchmark", "warm_up")
FLAGS = {"CLASS_FORGETTING_ONLY": False, "COOPERATIVE": False}
RESTRICTIONS = ("MODELS", "TARGETS")


class MethodResult(NamedTuple):
    """A centralized method's answer. A NamedTuple, so `model, stats = unlearn(...)` still works."""

    model: Any   # the unlearned torch module
    stats: dict  # numbers the method reports (steps, epsilons, retrained shards, ...)


class Method(Protocol):
    """What a method module provides (a module satisfies this Protocol structurally)."""

    Config: type

    def unlearn(self, task: Any, cfg: Any) -> Any:
        """Centralized: (UnlearnTask, Config) -> MethodResult. Federated: (FedContext, Config) -> FedResult."""


def hook(method: ModuleType, name: str) -> Callable | None:
    """The method's optional hook `name` (one of HOOKS), or None when it has none."""
    if name not in HOOKS:
        raise ValueError(f"unknown method hook '{name}'; hooks: {', '.join(HOOKS)}")
    fn = getattr(method, name, None)
    return fn if callable(fn) else None


def flag(method: ModuleType, name: str) -> bool:
    """The method's flag `name` (one of FLAGS), its default when the module does not set it."""
    if name not in FLAGS:
        raise ValueError(f"unknown method flag '{name}'; flags: {', '.join(FLAGS)}")
    return bool(getattr(method, name, FLAGS[name]))


def class_forgetting_only(method: ModuleType) -> bool:
    return flag(method, "CLASS_FORGETTING_ONLY")


def cooperative(method: ModuleType) -> bool:
    return flag(method, "COOPERATIVE")


def supports(method: ModuleType, restriction: str, value: str) -> bool:
    """Whether the method's restriction `restriction` (one of RESTRICTIONS) admits `value`."""
    if restriction not in RESTRICTIONS:
        raise ValueError(f"unknown method restriction '{restriction}'; restrictions: {', '.join(RESTRICTIONS)}")
    allowed = getattr(method, restriction, None)
    return allowed is None or value in allowed


def as_result(out: Any) -> Any:
    """A centralized answer as MethodResult (a plain 2-tuple is normalised); a FedResult as it is."""
    if isinstance(out, MethodResult) or not isinstance(out, tuple):
        return out
    model, stats = out
    return MethodResult(model, dict(stats))
