"""The update history at ResNet-18 scale: the on-disk store against the in-memory History.

Synthetic float32 updates with ResNet-18's tensor shapes (11.2M parameters, 44.7 MB a model)
for `--clients` clients, `--per-round` sampled each round, `--rounds` rounds, every round
stored (`--store-every`). Each version runs in its own subprocess so that each peak RSS is its
own: record every round as it finishes, subtract one client (the disk store streams it
from the files; the in-memory one runs the `subtract` method), then replay the stored rounds
without that client as FedEraser does (each remaining client's stored update rescaled to a
calibration norm and added with FedAvg weights; the calibration updates are synthetic, since
the benchmark has no clients). The in-memory History of 50 rounds (about 25 GB) does not fit
a 24 GB machine: it runs `--memory-rounds` rounds, and its peak at `--rounds` is extrapolated
linearly (it grows by one global model and `--per-round` updates per stored round).

    python benchmarks/history_scale.py                                   # 100 clients, 10 a round, 50 rounds
    python benchmarks/history_scale.py --rounds 5 --memory-rounds 5      # a quick look
    python benchmarks/history_scale.py --dtype float16                   # half the disk

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1e6


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # kB on Linux


def shapes() -> dict:
    import torch
    import torchvision

    with torch.device("meta"):
        model = torchvision.models.resnet18(num_classes=10)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_floating_point(v)}


def schedule(args) -> list[dict]:
    """Per round: the sampled clients and their sample counts (seeded)."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    return [{int(c): int(rng.integers(50, 150)) for c in rng.choice(args.clients, args.per_round, replace=False)}
            for _ in range(args.rounds)]


def child(args) -> dict:
    import torch

    from fedunlearn.federated.history import History
    from fedunlearn.federated.rounds import stored_rounds

    layout = shapes()
    plan = schedule(args)
    departing = min(plan[0])
    baseline = rss_mb()
    gen = torch.Generator().manual_seed(args.seed)
    random_state = lambda scale: {k: torch.randn(s, generator=gen) * scale for k, s in layout.items()}  # noqa: E731
    initial = random_state(0.05)
    model_mb = sum(v.numel() * 4 for v in initial.values()) / MB
    state = {k: v.clone() for k, v in initial.items()}
    if args.mode == "disk":
        from fedunlearn.federated.store import DiskHistory

        history = DiskHistory(Path(args.dir) / "history", args.store_every, args.dtype)
        history.set_model("initial", initial)
        del initial  # on disk now; the streamed subtract reads it from there
    else:
        history = History(args.store_every)
    stored = stored_rounds(args.rounds, args.store_every)
    start = time.perf_counter()
    for rnd, counts in enumerate(plan, 1):
        span = (stored + [args.rounds + 1])[stored.index(rnd) + 1] - rnd if rnd in stored else 0
        total = sum(counts.values())
        if args.mode == "disk":  # one update in memory at a time, as a streaming server would hold it
            history.begin_round(rnd, state, counts, span)  # the sent model is on disk now: aggregate in place
            for cid, n in counts.items():
                update = random_state(1e-3)
                history.add_update(rnd, cid, update)
                for k in state:
                    state[k].add_(update[k], alpha=n / total)
                del update
            history.save_meta()
        else:
            updates = {cid: (random_state(1e-3), n) for cid, n in counts.items()}
            history.record(rnd, state, updates, span)
            for k in state:
                state[k].add_(sum(u[k] * (n / total) for u, n in updates.values()))
            del updates
    write_s = time.perf_counter() - start
    if args.mode == "disk":
        history.set_model("final", state)
    after_write = rss_mb()
    peaks = {"write": peak_mb()}

    start = time.perf_counter()
    if args.mode == "disk":
        from fedunlearn.federated.stream import stream_subtract

        stream_subtract(history, departing, Path(args.dir) / "unlearned.npy")
    else:
        from fedunlearn.federated.context import FedContext
        from fedunlearn.federated.methods import subtract

        ctx = FedContext(global_state=state, initial_state=initial, history=history, departing=departing,
                         remaining=[], num_clients=args.clients, num_classes=10, input_shape=(3, 32, 32),
                         make_model=None, fed_cfg=None, device=torch.device("cpu"), transport=None)
        subtract.unlearn(ctx, subtract.Config())
    subtract_s = time.perf_counter() - start
    peaks["subtract"] = peak_mb()

    del state
    start = time.perf_counter()
    replayed = replay(history, departing)
    replay_s = time.perf_counter() - start
    peaks["replay"] = peak_mb()
    disk = history.nbytes() if args.mode == "disk" else 0
    return {"mode": args.mode, "rounds": args.rounds, "baseline_rss_mb": baseline, "peak_rss_mb": peak_mb(),
            "rss_after_write_mb": after_write, "model_mb": model_mb, "disk_mb": disk / MB,
            "history_mb": history.nbytes() / MB, "write_s": write_s, "subtract_s": subtract_s, "replay_s": replay_s,
            "replayed_updates": replayed, "peak_after_phase_mb": peaks}


def replay(history, departing: int) -> int:
    """FedEraser's server-side replay: each remaining client's stored update, rescaled per tensor to a
    (synthetic: half its own) calibration norm, added with FedAvg weights; one update in memory at a time."""
    rounds = history.rounds
    state = rounds[0].global_state
    count = 0
    for stored in rounds:
        kept = [cid for cid in stored.updates if cid != departing]
        counts = stored.counts() if hasattr(stored, "counts") else {c: n for c, (_, n) in stored.updates.items()}
        total = sum(counts[cid] for cid in kept)
        for cid in kept:
            update, n = stored.updates[cid]
            for k, u in update.items():
                calib_norm = 0.5 * float(u.norm())
                state[k].add_(u, alpha=(n / total) * calib_norm / max(float(u.norm()), 1e-12))
            del update
            count += 1
    return count


def run_child(args, mode: str, rounds: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--rounds", str(rounds), "--clients", str(args.clients),
           "--per-round", str(args.per_round), "--store-every", str(args.store_every), "--dtype", args.dtype,
           "--seed", str(args.seed), "--dir", args.dir]
    # glibc raises its mmap threshold after model-sized frees and then keeps freed tensors in the
    # heap, which alone adds about a model and a half to the peak; a fixed threshold returns them.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)} if args.mmap_threshold else None
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--store-every", type=int, default=1)
    parser.add_argument("--memory-rounds", type=int, default=5, help="rounds the in-memory version runs (RAM)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mmap-threshold", type=int, default=131072,
                        help="glibc MALLOC_MMAP_THRESHOLD_ for both versions (0 = glibc's dynamic default)")
    parser.add_argument("--dir", default=None, help="scratch folder for the store (default: a new folder in /tmp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return

    model_mb = 11_181_642 * 4 / MB  # ResNet-18 (10 classes), floating-point entries
    stored = len(range(1, args.rounds + 1, args.store_every)) + 1
    client_mb = model_mb / (2 if args.dtype == "float16" else 1)
    need_mb = stored * (model_mb + args.per_round * client_mb) + args.clients * client_mb + 2 * model_mb
    args.dir = tempfile.mkdtemp(prefix="history_scale_", dir=args.dir)
    free_mb = shutil.disk_usage(args.dir).free / MB
    print(f"disk: {free_mb / 1e3:.1f} GB free at {args.dir}, the store needs about {need_mb / 1e3:.1f} GB")
    if free_mb < 1.2 * need_mb:
        shutil.rmtree(args.dir)
        raise SystemExit("not enough free disk; lower --rounds or use --dtype float16")
    try:
        disk = run_child(args, "disk", args.rounds)
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    memory = run_child(args, "memory", args.memory_rounds)
    grown = memory["peak_rss_mb"] - memory["baseline_rss_mb"]
    extrapolated = memory["baseline_rss_mb"] + grown * args.rounds / args.memory_rounds
    beyond = disk["peak_rss_mb"] - disk["baseline_rss_mb"]
    print(f"model: {disk['model_mb']:.1f} MB; {args.clients} clients, {args.per_round} a round, "
          f"stored every {args.store_every} round(s), client files {args.dtype}")
    for row in (disk, memory):
        print(f"{row['mode']:>6} ({row['rounds']} rounds): peak RSS {row['peak_rss_mb']:.0f} MB "
              f"(baseline {row['baseline_rss_mb']:.0f} MB, +{(row['peak_rss_mb'] - row['baseline_rss_mb']) / row['model_mb']:.2f} "
              f"models), history {row['history_mb']:.0f} MB, write {row['write_s']:.1f} s, "
              f"subtract one client {row['subtract_s']:.2f} s, replay {row['replayed_updates']} updates "
              f"{row['replay_s']:.1f} s")
    print(f"disk store: {disk['disk_mb']:.0f} MB on disk, peak {beyond / disk['model_mb']:.2f} models beyond "
          f"baseline (goal <= 3); in-memory at {args.rounds} rounds extrapolated from {args.memory_rounds}: "
          f"{extrapolated:.0f} MB peak RSS")
    print(json.dumps({"peak_rss_mb": round(disk["peak_rss_mb"], 1), "baseline_rss_mb": round(disk["baseline_rss_mb"], 1),
                      "model_mb": round(disk["model_mb"], 1), "disk_mb": round(disk["disk_mb"], 1),
                      "in_memory_peak_rss_mb": round(memory["peak_rss_mb"], 1),
                      "in_memory_rounds": args.memory_rounds,
                      "in_memory_peak_rss_mb_extrapolated": round(extrapolated, 1), "rounds": args.rounds,
                      "dtype": args.dtype, "mmap_threshold": args.mmap_threshold,
                      "peak_after_phase_mb": disk["peak_after_phase_mb"], "subtract_s": round(disk["subtract_s"], 2),
                      "in_memory_subtract_s": round(memory["subtract_s"], 2), "replay_s": round(disk["replay_s"], 1),
                      "in_memory_replay_s": round(memory["replay_s"], 1),
                      "replay_updates_per_round_ratio": round(disk["replayed_updates"] / max(1, args.rounds), 2)}))


if __name__ == "__main__":
    main()
