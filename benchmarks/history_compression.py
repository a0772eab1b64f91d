"""What float16 storage of client updates costs each method: its gap to retrain, float32 vs float16.

Runs the same small federation twice over the in-process transport (no Flower, no Ray), with
the on-disk history in float32 and in float16, and prints each method's avg_gap (mean of
|test, retain, forget accuracy, MIA - retrain's|), its distance to retrain and the bytes the
history held. Both runs train identically (the store only keeps what training produced), so
any difference comes from the stored updates' precision. Retrain is each run's own
reference; the training and retraining are deterministic and the same in both runs.

    python benchmarks/history_compression.py
    python benchmarks/history_compression.py --set federation.num_clients=10 --methods subtract,pga
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
    "withdrawal": {"client": 0},
    "backdoor": {"fraction": 0.3, "target": 0, "size": 2},
    "eval": {"mia_max_samples": 300},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="subtract,federaser,pga", help="comma-separated (retrain always runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = {}
    for dtype in ("float32", "float16"):
        mapping = apply_overrides(json.loads(json.dumps(BASE)), args.set + [f"federation.history_dtype={dtype}"])
        mapping["experiment"]["methods"] = args.methods.split(",")
        cfg = build(Config, mapping)
        with tempfile.TemporaryDirectory() as out:
            report = serve(cfg, LocalTransport(cfg), Path(out), progress=False)
        rows[dtype] = {r["method"]: r for r in report["results"]}
        rows[dtype]["_history_bytes"] = report["history_bytes"]
    print(f"{'method':<12} {'avg_gap f32':>12} {'avg_gap f16':>12} {'js f32':>10} {'js f16':>10} "
          f"{'backdoor f32':>13} {'backdoor f16':>13}")
    summary = {}
    for name in ["original", *args.methods.split(",")]:
        a, b = rows["float32"][name], rows["float16"][name]
        print(f"{name:<12} {a['avg_gap']:>12.4f} {b['avg_gap']:>12.4f} {a['js_to_retrain']:>10.5f} "
              f"{b['js_to_retrain']:>10.5f} {a.get('backdoor_asr', float('nan')):>13.3f} "
              f"{b.get('backdoor_asr', float('nan')):>13.3f}")
        summary[name] = {"avg_gap_float32": a["avg_gap"], "avg_gap_float16": b["avg_gap"],
                         "js_float32": a["js_to_retrain"], "js_float16": b["js_to_retrain"]}
    print(f"history bytes at the report (after the purge): float32 {rows['float32']['_history_bytes']}, "
          f"float16 {rows['float16']['_history_bytes']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
