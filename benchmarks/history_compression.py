"""What compressing the stored client updates costs each method: its gap to retrain, per storage.

Runs the same small federation once per storage of the on-disk history, over the in-process
transport (no Flower, no Ray): `none` (float32), `float16` (federation.history_dtype), `topk`
(federation.history_topk: each tensor of a stored round update keeps its largest-magnitude
fraction of entries) and both (`f16+topk`). It prints each method's avg_gap (mean of |test,
retain, forget accuracy, MIA - retrain's|), its output distance (JS) to retrain, its backdoor
success, and the bytes the history held. Every run trains identically (the store only keeps what
training produced), so a difference comes from the stored updates alone. Retrain is each
run's own reference; training and retraining are deterministic and the same in every run.
The running sums stay dense under top-k, so subtract differs only through float16.

    python benchmarks/history_compression.py
    python benchmarks/history_compression.py --topk 0.05 --set federation.num_clients=10 --methods subtract,pga
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from fedunlearn.config import apply_overrides, build
from fedunlearn.federated.config import Config
from fedunlearn.federated.driver import serve
from fedunlearn.federated.transport import LocalTransport

BASE = {
    "kind": "federated",
    "experiment": {"name": "compression"},
    "data": {"name": "digits", "train_size": 0, "test_size": 0},
    "model": {"name": "cnn", "hidden": 32},
    "federation": {"num_clients": 5, "rounds": 4, "history": "disk",
                   "local": {"epochs": 1, "batch_size": 32, "lr": 0.05, "schedule": "constant"}},
    "withdrawal": {"client": 0, "purge": False},  # keep the departing client's files: they are measured too
    "backdoor": {"fraction": 0.3, "target": 0, "size": 2},
    "eval": {"mia_max_samples": 300},
}


def storages(topk: float) -> dict[str, list[str]]:
    return {"none": ["federation.history_dtype=float32"], "float16": ["federation.history_dtype=float16"],
            "topk": ["federation.history_dtype=float32", f"federation.history_topk={topk}"],
            "f16+topk": ["federation.history_dtype=float16", f"federation.history_topk={topk}"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="subtract,federaser,pga,replay",
                        help="comma-separated (retrain always runs)")
    parser.add_argument("--topk", type=float, default=0.1, help="fraction of each tensor's entries kept by topk")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    methods = args.methods.split(",")
    rows, sizes, update_sizes = {}, {}, {}
    for storage, overrides in storages(args.topk).items():
        mapping = apply_overrides(json.loads(json.dumps(BASE)), args.set + overrides)
        mapping["experiment"]["methods"] = methods
        cfg = build(Config, mapping)
        with tempfile.TemporaryDirectory() as out:
            report = serve(cfg, LocalTransport(cfg), Path(out), progress=False)
            update_sizes[storage] = sum(f.stat().st_size for f in Path(out).glob("history-*/rounds/*/client-*.npy"))
        rows[storage] = {r["method"]: r for r in report["results"]}
        sizes[storage] = report["history_bytes"]
    names = list(rows)
    print(f"{'method':<12}" + "".join(f" {'gap ' + s:>13}" for s in names) + "".join(f" {'js ' + s:>12}" for s in names)
          + "".join(f" {'bd ' + s:>11}" for s in names))
    summary = {"history_bytes": sizes, "round_update_bytes": update_sizes, "topk_fraction": args.topk, "methods": {}}
    for name in ["original", *methods]:
        got = [rows[s][name] for s in names]
        print(f"{name:<12}" + "".join(f" {r['avg_gap']:>13.4f}" for r in got)
              + "".join(f" {r['js_to_retrain']:>12.5f}" for r in got)
              + "".join(f" {r.get('backdoor_asr', float('nan')):>11.3f}" for r in got))
        summary["methods"][name] = {f"avg_gap_{s}": r["avg_gap"] for s, r in zip(names, got)} | {
            f"js_{s}": r["js_to_retrain"] for s, r in zip(names, got)}
    print("history bytes on disk: " + ", ".join(f"{s} {sizes[s]:,}" for s in names))
    print("of which stored round updates: " + ", ".join(f"{s} {update_sizes[s]:,}" for s in names))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
