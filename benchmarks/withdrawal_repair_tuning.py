"""Tuning cells for the source-free repair: federations that are NOT in simulations/withdrawal_matrix.toml.

The matrix's cells (seeds 0 and 1, a 2x2 bottom-right square trigger, 10 / 20 clients) are what
gets reported, so nothing is chosen on them. This script takes the matrix's base config and runs
other cells: seeds 7 and 8, a centred / checkerboard / blended trigger, 15 clients, Dirichlet 0.5.
Per cell it trains the federation and retrains without the departing client (in process, the
same client code as the Flower app; cached under --cache), then runs each method variant
through its real module (`unlearn(ctx, cfg)`, the server's work inline) and prints per-cell
gaps to retrain and whether the cell meets the matrix's targets (test within 2 points, forget
and backdoor at most 3 points above retrain).

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/withdrawal_repair_tuning.py \
        --variant source_free_absent --variant 'source_free_absent:reference=surviving' \
        --variant subtract --cells all
A variant is METHOD[:key=value,key=value] with keys of the method's Config (dotted for nested:
consolidate.steps=60). Wall times are on a loaded machine: compare within one run only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from fedunlearn.config import build, load_toml, to_dict
from fedunlearn.data import ArrayDataset, triggered_test
from fedunlearn.experiments.federated_matrix import InlineServer, merge
from fedunlearn.federated.client import departing_client, federation_data, local_data
from fedunlearn.federated.config import Config as FedConfig
from fedunlearn.federated.context import FedContext
from fedunlearn.federated.driver import train_federation
from fedunlearn.federated.methods import load_method
from fedunlearn.federated.transport import LocalTransport
from fedunlearn.models import build_model
from fedunlearn.training import accuracy, seed_everything

# Not matrix cells: other seeds, other trigger positions / patterns, other client counts and skew.
CELLS = {
    "dir0.5-15c-median-centre-s7": {"experiment": {"seed": 7},
                                    "federation": {"partition": "dirichlet", "alpha": 0.5, "num_clients": 15},
                                    "withdrawal": {"client": "median"}, "backdoor": {"position": "centre"}},
    "dir0.1-10c-largest-30pct-checker-s8": {"experiment": {"seed": 8},
                                            "federation": {"partition": "dirichlet", "alpha": 0.1, "num_clients": 10,
                                                           "clients_per_round": 3},
                                            "withdrawal": {"client": "largest"},
                                            "backdoor": {"pattern": "checkerboard", "position": "top-left"}},
    "iid-15c-largest-blended-s7": {"experiment": {"seed": 7},
                                   "federation": {"partition": "iid", "num_clients": 15, "clients_per_round": 5},
                                   "withdrawal": {"client": "largest"}, "backdoor": {"pattern": "blended"}},
    "dir0.3-15c-median-centre-s8": {"experiment": {"seed": 8},
                                    "federation": {"partition": "dirichlet", "alpha": 0.3, "num_clients": 15},
                                    "withdrawal": {"client": "median"},
                                    "backdoor": {"position": "centre", "pattern": "checkerboard"}},
    "dir1.0-10c-largest-topright-s7": {"experiment": {"seed": 7},
                                       "federation": {"partition": "dirichlet", "alpha": 1.0, "num_clients": 10},
                                       "withdrawal": {"client": "largest"}, "backdoor": {"position": "top-right"}},
    "dir0.1-15c-median-30pct-s8": {"experiment": {"seed": 8},
                                   "federation": {"partition": "dirichlet", "alpha": 0.1, "num_clients": 15,
                                                  "clients_per_round": 5},
                                   "withdrawal": {"client": "median"}, "backdoor": {"position": "bottom-left"}},
}


def set_nested(cfg, dotted: str, value):
    head, _, rest = dotted.partition(".")
    inner = set_nested(getattr(cfg, head), rest, value) if rest else value
    return dataclasses.replace(cfg, **{head: inner})


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def variant_config(spec: str):
    name, _, rest = spec.partition(":")
    module = load_method(name)
    cfg = module.Config()
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        cfg = set_nested(cfg, key.strip(), parse_value(value.strip()))
    return name, module, cfg


def cell_config(base: dict, over: dict) -> FedConfig:
    mapping = merge(json.loads(json.dumps(base)), over)
    mapping["kind"] = "federated"
    mapping["experiment"] = {**mapping.get("experiment", {}), "methods": ["retrain"]}
    cfg = build(FedConfig, mapping)
    return dataclasses.replace(cfg, withdrawal=dataclasses.replace(cfg.withdrawal, client=departing_client(cfg)))


def run_cell(name: str, cfg: FedConfig, variants, cache: Path, tol=(0.02, 0.03, 0.03),
             per_class: bool = False) -> list[dict]:
    seed = cfg.experiment.seed
    transport = LocalTransport(cfg)
    data, _ = federation_data(cfg)
    forget = local_data(cfg, cfg.withdrawal.client).train
    # with data.val_size (e.g. --set data.val_size=500) test and backdoor are judged on that split,
    # carved from the training data before partitioning (no client trains on it), not on the test set
    held = data.val if data.val is not None else data.test
    trig = ArrayDataset(*triggered_test(held.x, held.y, cfg.backdoor))
    cpu = torch.device("cpu")

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, data.input_shape, data.num_classes)

    key = hashlib.sha1(repr(to_dict(cfg)).encode()).hexdigest()[:10]
    path = cache / f"{name}-{key}.pt"
    if path.exists():
        trained, ret = torch.load(path, weights_only=False)
    else:
        trained = train_federation(cfg, transport, make_model, cache / f"history-{key}")
        ctx = FedContext.create(cfg, transport, trained, make_model, server=InlineServer())
        start = time.perf_counter()
        ret = {"state": load_method("retrain").unlearn(ctx, load_method("retrain").Config()).state,
               "wall_s": time.perf_counter() - start}
        cache.mkdir(parents=True, exist_ok=True)
        torch.save((trained, ret), path)

    def judge(state):
        model = make_model()
        model.load_state_dict(state)
        return accuracy(model, held, cpu), accuracy(model, forget, cpu), accuracy(model, trig, cpu)

    def classes(label, state):  # --per-class: each class's accuracy on the judged split (a class the start lost)
        if per_class:
            model = make_model()
            model.load_state_dict(state)
            with torch.no_grad():
                said = model.eval()(held.x).argmax(1)
            print(f"{'':36s} {label[-60:]:60s} per class " + " ".join(
                f"{float((said[held.y == c] == c).float().mean()):.2f}" for c in range(data.num_classes)), flush=True)

    ref = judge(ret["state"])
    rows = []

    def show(label, state, wall):
        test, fgt, bd = judge(state)
        ok = abs(test - ref[0]) <= tol[0] and fgt <= ref[1] + tol[1] and bd <= ref[2] + tol[2]
        row = {"cell": name, "variant": label, "test": test, "forget": fgt, "backdoor": bd,
               "test_gap": test - ref[0], "forget_gap": fgt - ref[1], "backdoor_gap": bd - ref[2],
               "ok": ok, "wall_s": wall, "speedup": ret["wall_s"] / max(wall, 1e-9)}
        rows.append(row)
        print(f"{name:36s} {label:60s} test {test:.3f} ({test - ref[0]:+.3f}) forget {fgt:.3f} ({fgt - ref[1]:+.3f}) "
              f"backdoor {bd:.3f} ({bd - ref[2]:+.3f}) {'OK ' if ok else 'no '} {wall:5.1f}s", flush=True)
        return row

    orig = judge(trained["global_state"])
    print(f"{name:36s} {'original':60s} test {orig[0]:.3f} forget {orig[1]:.3f} backdoor {orig[2]:.3f} | retrain test "
          f"{ref[0]:.3f} forget {ref[1]:.3f} backdoor {ref[2]:.3f} {ret['wall_s']:.1f}s", flush=True)
    classes("original", trained["global_state"])
    classes("retrain", ret["state"])
    for label, method, mcfg in variants:
        ctx = FedContext.create(cfg, transport, trained, make_model, server=InlineServer())
        start = time.perf_counter()
        result = method.unlearn(ctx, mcfg)
        row = show(label, result.state, time.perf_counter() - start)
        classes(label, result.state)
        row["stats"] = {k: v for k, v in result.stats.items() if isinstance(v, (int, float, bool))}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--matrix", default="simulations/withdrawal_matrix.toml", help="its [base] is the base config")
    ap.add_argument("--variant", action="append", default=[], help="METHOD[:key=value,...]")
    ap.add_argument("--cells", default="all", help="comma-separated cell names, or all")
    ap.add_argument("--scenario-seeds", default="", help="instead of CELLS: the matrix's own scenarios at these seeds "
                    "(comma-separated; the matrix's reported seeds are refused)")
    ap.add_argument("--set", action="append", default=[], help="base override key=value (dotted), e.g. backdoor.fraction=0.5")
    ap.add_argument("--cache", default="/tmp/s6d-tune")
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument("--per-class", action="store_true", help="also print each class's accuracy per model")
    args = ap.parse_args()
    torch.set_num_threads(1)
    matrix = load_toml(args.matrix)
    base = matrix["base"]
    for item in args.set:
        key, _, value = item.partition("=")
        merge(base, _nested(key.split("."), parse_value(value)))
    variants = [(spec, *variant_config(spec)[1:]) for spec in (args.variant or ["subtract", "source_free_absent"])]
    cells = scenario_cells(matrix, args.scenario_seeds) if args.scenario_seeds else CELLS
    names = list(cells) if args.cells == "all" else args.cells.split(",")
    rows = []
    for name in names:
        rows += run_cell(name, cell_config(base, cells[name]), variants, Path(args.cache), per_class=args.per_class)
    print("\nper variant: cells within target, mean |test gap|, mean forget gap, mean backdoor gap, median speedup")
    for label, *_ in variants:
        mine = [r for r in rows if r["variant"] == label]
        print(f"  {label:60s} {sum(r['ok'] for r in mine)}/{len(mine)}  {np.mean([abs(r['test_gap']) for r in mine]):.3f}  "
              f"{np.mean([r['forget_gap'] for r in mine]):+.3f}  {np.mean([r['backdoor_gap'] for r in mine]):+.3f}  "
              f"{np.median([r['speedup'] for r in mine]):.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


def scenario_cells(matrix: dict, seeds: str) -> dict:
    """The matrix's scenarios at other seeds: the same federations' kinds, none of its reported cells."""
    reported = set(matrix.get("matrix", {}).get("seeds", []))
    chosen = [int(s) for s in seeds.split(",")]
    if reported & set(chosen):
        raise SystemExit(f"seeds {sorted(reported & set(chosen))} are the matrix's reported cells: tune on others")
    return {f"{name}-s{seed}": {**over, "experiment": {**over.get("experiment", {}), "seed": seed}}
            for seed in chosen for name, over in matrix["scenarios"].items()}


def _nested(keys, value):
    return {keys[0]: _nested(keys[1:], value)} if len(keys) > 1 else {keys[0]: value}


if __name__ == "__main__":
    main()
