"""How strong is the departing client's backdoor in each cell of a matrix? Trains only the
original federation of each (scenario, seed) and reports its test accuracy and backdoor success,
with what explains a weak backdoor: how many rounds the attacker was sampled in, the last one,
and its share of the sample weight in the rounds it took part in.

This is the search behind the attacker of simulations/withdrawal_matrix.toml: run it on tuning
cells (seeds and a trigger position the matrix does not report), never on the reported ones.

    OMP_NUM_THREADS=1 python benchmarks/attacker_strength.py simulations/withdrawal_matrix.toml \
        --seeds 7 8 9 10 11 --set base.backdoor.position=top-left --set base.backdoor.mask_top=0.01

`--curve` adds each round's test accuracy / backdoor success, to tell a backdoor washed out after
the attacker's last round from a federation that swings between rounds. `--scenarios` narrows the
cells (e.g. the "largest, 30% per round" ones, where the attacker's last round can be many rounds
before the end); `--set` takes any override (backdoor.mask_top, backdoor.local_epochs,
backdoor.source, backdoor.boost ...). The settings in simulations/withdrawal_matrix.toml were
chosen with this script; the search is in that file's comments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def cell(args: tuple) -> dict:
    config_path, scenario, seed, overrides, want_curve = args
    import torch

    from fedunlearn.config import apply_overrides, build, load_toml
    from fedunlearn.data import ArrayDataset, triggered_test
    from fedunlearn.experiments.federated_matrix import Config
    from fedunlearn.federated.client import departing_client, federation_data
    from fedunlearn.federated.driver import train_federation
    from fedunlearn.federated.rounds import sample_clients
    from fedunlearn.federated.transport import LocalTransport
    from fedunlearn.models import build_model
    from fedunlearn.training import predict_probs, seed_everything

    torch.set_num_threads(1)
    mapping = apply_overrides(load_toml(config_path), list(overrides))
    mapping["matrix"] = {**mapping.get("matrix", {}), "seeds": [seed]}
    cfg = build(Config, mapping).federation(scenario, seed)
    attacker = departing_client(cfg)
    cfg = dataclasses.replace(cfg, withdrawal=dataclasses.replace(cfg.withdrawal, client=attacker))
    data, parts = federation_data(cfg)
    sizes = np.array([len(p) for p in parts])
    fed = cfg.federation
    clients = list(range(fed.num_clients))
    rounds_in, shares = [], []
    for rnd in range(1, cfg.train_rounds + 1):
        chosen = sample_clients(clients, fed.clients_per_round, seed, rnd)
        if attacker in chosen:
            rounds_in.append(rnd)
            shares.append(sizes[attacker] / sizes[chosen].sum())

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, data.input_shape, data.num_classes)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trained = train_federation(cfg, LocalTransport(cfg), make_model, Path(tmp))
    model = make_model()
    model.load_state_dict(trained["global_state"])
    model.eval()
    triggered = ArrayDataset(*triggered_test(data.test.x, data.test.y, cfg.backdoor))

    def acc(ds) -> float:
        return float((predict_probs(model, ds, torch.device("cpu")).argmax(1) == ds.y).float().mean())

    curve = []
    if want_curve:  # each round's global model: where the backdoor washes out, or the federation swings
        for state in trained["curve"]:
            model.load_state_dict(state)
            curve.append((acc(data.test), acc(triggered)))
        model.load_state_dict(trained["global_state"])
    return {"curve": curve, "rounds": rounds_in,
            "scenario": scenario, "seed": seed, "attacker": attacker, "attacker_n": int(sizes[attacker]),
            "median_n": float(np.median(sizes)), "rounds_in": len(rounds_in),
            "last_in": rounds_in[-1] if rounds_in else 0, "weight_share": float(np.mean(shares)) if shares else 0.0,
            "test_acc": acc(data.test), "asr": acc(triggered), "train_s": time.perf_counter() - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--scenarios", nargs="*", default=None, help="default: every scenario")
    parser.add_argument("--set", action="append", default=[], help="an override, e.g. base.backdoor.boost=0.5")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--curve", action="store_true",
                        help="also print each round's test accuracy / backdoor success (* = the attacker took part)")
    args = parser.parse_args(argv)
    from fedunlearn.config import load_toml

    overrides = tuple(args.set)
    scenarios = args.scenarios or list(load_toml(args.config)["scenarios"])
    jobs = [(args.config, s, seed, overrides, args.curve) for s in scenarios for seed in args.seeds]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(cell, jobs))
    print(f"# {args.config} {overrides} seeds {args.seeds}")
    print(f"{'scenario':28s} seed att  n  med  in last share  test   asr")
    for r in rows:
        print(f"{r['scenario']:28s} {r['seed']:4d} {r['attacker']:3d} {r['attacker_n']:3d} {r['median_n']:4.0f} "
              f"{r['rounds_in']:3d} {r['last_in']:4d} {r['weight_share']:.3f} {r['test_acc']:.3f} {r['asr']:.3f}")
        if r["curve"]:
            print("    " + " ".join(f"r{i}{'*' if i in r['rounds'] else ''} {t:.2f}/{a:.2f}"
                                    for i, (t, a) in enumerate(r["curve"], 1)))
    asr = [r["asr"] for r in rows]
    print(f"min asr {min(asr):.3f}, cells >= 0.8: {sum(a >= 0.8 for a in asr)}/{len(asr)}, "
          f"mean test {np.mean([r['test_acc'] for r in rows]):.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
