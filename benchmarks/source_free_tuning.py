"""Tuning harness for the source-free federated methods, in process (no Ray, no Flower).

Takes the trained federation (and `retrain`) from a `fedunlearn run` checkpoints folder
(--from-run), or trains it here with the in-process transport (the same client code as the
Flower app) and caches it under --cache. Prints test accuracy / backdoor success /
departing-client accuracy for the original, retrain, subtract and both source-free modes
(the server tasks called directly, not through Ray) over a grid of method settings. Wall
times are only comparable within one run on an otherwise idle machine.

Settings are selected on the validation split (data.val_size, carved from the training data
before the federation is partitioned) and scored against retraining: the distance of
validation accuracy and departing-client accuracy from retrain's. Neither the test set nor
the backdoor trigger takes part in the selection; both are printed for the chosen setting only.

    fedunlearn run simulations/withdrawal_noniid.toml --out /tmp/noniid
    python benchmarks/source_free_tuning.py simulations/withdrawal_noniid.toml --from-run /tmp/noniid/checkpoints \
        --grid consolidate.steps=60,100 --grid forget_weight=10.0,30.0 --set data.val_size=1000
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from fedunlearn import checkpoint
from fedunlearn.config import apply_overrides, build, load_toml
from fedunlearn.data import ArrayDataset, triggered_test
from fedunlearn.federated.client import federation_data, local_data
from fedunlearn.federated.config import Config as FedConfig
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.driver import train_federation
from fedunlearn.federated.transport import LocalTransport
from fedunlearn.federated.methods import retrain, source_free_cooperative, subtract
from fedunlearn.federated.methods.source_free_absent import server_repair
from fedunlearn.federated.methods.source_free_cooperative import server_refine
from fedunlearn.models import build_model
from fedunlearn.training import accuracy, seed_everything


def cached(path: Path, work):
    if path.exists():
        return torch.load(path, weights_only=False)
    value = work()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(value, path)
    return value


def set_nested(cfg, dotted: str, value):
    """dataclasses.replace along a dotted path: ('consolidate.steps', 100)."""
    head, _, rest = dotted.partition(".")
    inner = set_nested(getattr(cfg, head), rest, value) if rest else value
    return dataclasses.replace(cfg, **{head: inner})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[], help="config override, as with `fedunlearn run`")
    ap.add_argument("--grid", action="append", default=[], help="method key=v1,v2 (e.g. consolidate.steps=100,200)")
    ap.add_argument("--modes", default="absent,cooperative")
    ap.add_argument("--cache", default="/tmp/sf_cache")
    ap.add_argument("--from-run", default="", help="a run's checkpoints folder: use its federation and retrain")
    ap.add_argument("--skip-retrain", action="store_true", help="no retrain unless it is cached")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared: two spinning threads per process thrash

    mapping = apply_overrides(load_toml(args.config), args.set + ['experiment.methods=["retrain","subtract"]'])
    cfg = build(FedConfig, mapping)
    if not cfg.data.val_size:
        raise SystemExit("error: settings are chosen on a validation split; pass --set data.val_size=N (e.g. 1000)")
    transport = LocalTransport(cfg)
    data, _ = federation_data(cfg)
    k = cfg.withdrawal.client
    forget = local_data(cfg, k).train
    trig = ArrayDataset(*triggered_test(data.test.x, data.test.y, cfg.backdoor))
    seed = cfg.experiment.seed

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, data.input_shape, data.num_classes)

    def context():
        return FedContext.create(cfg, transport, trained, make_model)

    def timed_retrain():
        start = time.perf_counter()
        state = retrain.unlearn(context(), retrain.Config()).state
        return {"state": state, "wall_s": time.perf_counter() - start}

    if args.from_run:
        # the exact federation (and retrain) of a `fedunlearn run` of the same config
        ckpts = Path(args.from_run)
        trained = checkpoint.load(sorted(ckpts.glob("federation-*.pt"))[-1])[0]
        found = sorted(ckpts.glob("method-retrain-*.pt"))
        ret = {"state": (r := checkpoint.load(found[-1])[0])[0].state, "wall_s": r[1]["wall_s"]} if found else None
    else:
        # keyed by the file and the overrides: a change in the package's config classes keeps the cache
        key = hashlib.sha1(repr([Path(args.config).name, sorted(args.set)]).encode()).hexdigest()[:10]
        cache = Path(args.cache)
        trained = cached(cache / f"fed-{key}.pt", lambda: train_federation(cfg, transport, make_model))
        path = cache / f"retrain-{key}.pt"
        ret = None if args.skip_retrain and not path.exists() else cached(path, timed_retrain)
    cpu = torch.device("cpu")
    sizes = [len(local_data(cfg, c).train) for c in range(cfg.federation.num_clients)]
    print(f"{args.config} {args.set}: client sizes {sizes}; departing client's labels "
          f"{np.bincount(forget.y.numpy(), minlength=data.num_classes).tolist()}")

    if ret is None:
        raise SystemExit("error: settings are scored against retraining; run without --skip-retrain once")
    candidates: dict[str, dict] = {}

    def model_of(state):
        model = make_model()
        model.load_state_dict(state)
        return model

    target = model_of(ret["state"])
    target = (accuracy(target, data.val, cpu), accuracy(target, forget, cpu))

    def show(name, state, seconds=float("nan")):
        model = model_of(state)
        val, fgt = accuracy(model, data.val, cpu), accuracy(model, forget, cpu)
        score = abs(val - target[0]) + abs(fgt - target[1])  # lower = closer to retraining
        candidates[name] = {"state": state, "score": score}
        print(f"{name:58s} val {val:.4f} forget {fgt:.4f} gap-to-retrain {score:.4f} {seconds:6.1f}s", flush=True)

    show("original", trained["global_state"], trained["wall_s"])
    show("retrain", ret["state"], ret["wall_s"])
    start = time.perf_counter()
    reference = subtract.unlearn(context(), subtract.Config()).state
    show("subtract", reference, time.perf_counter() - start)

    grid = [(g.split("=")[0], [float(v) if "." in v else int(v) for v in g.split("=")[1].split(",")]) for g in args.grid]
    for values in itertools.product(*[vals for _, vals in grid]):
        base = source_free_cooperative.Config()
        for (name, _), value in zip(grid, values):
            base = set_nested(base, name, value)
        label = " ".join(f"{n}={v}" for (n, _), v in zip(grid, values))
        start = time.perf_counter()
        state, generator, stats = server_repair(make_model, trained["global_state"], reference, data.num_classes,
                                                data.input_shape, base, seed)
        repair_s = time.perf_counter() - start
        show(f"absent {label} ref-agree {stats['reference_agreement']:.2f}", state, repair_s)
        if "cooperative" in args.modes and stats["consolidated"]:
            start = time.perf_counter()
            fisher, metrics = transport.query(k, "source_free_forget", state,
                                              {"max_confidence": base.max_confidence, "max_flagged": base.max_flagged})
            refine_cfg = dataclasses.replace(base.consolidate, steps=base.refine_steps, forget_weight=base.forget_weight)
            state, _ = server_refine(make_model, trained["global_state"], state, generator, fisher, refine_cfg, seed)
            show(f"cooperative {label} flagged {int(metrics['flagged'])}", state, repair_s + time.perf_counter() - start)

    tuned = {k: v for k, v in candidates.items() if k.startswith(("absent", "cooperative"))}
    if tuned:
        best = min(tuned, key=lambda k: tuned[k]["score"])
        model = model_of(tuned[best]["state"])
        print(f"\nchosen on validation: {best}\n  reported only: test {accuracy(model, data.test, cpu):.4f} "
              f"backdoor success {accuracy(model, trig, cpu):.4f}")


if __name__ == "__main__":
    main()
