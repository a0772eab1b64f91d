"""Shard training and AMUN's adversarial search on W Ray workers against one worker.

The same work both ways (SISA: every shard trained from scratch in a fresh folder; AMUN: the
search over the same chunks), interleaved `--repeats` times so that a busy spell of a shared
machine hits both; prints every run, the fastest of each and the ratio, beside the CPU seconds
the tasks used (wall time on a shared machine measures the neighbours too).

    python benchmarks/parallel_speedup.py --repeats 3
    python benchmarks/parallel_speedup.py --train-size 20000 --shards 8 --workers 4   # on a bigger machine
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time

import torch

from fedunlearn.cluster import ClusterConfig, current_resources, ray_session, task_cpu_seconds, warm_up
from fedunlearn.data import DataConfig, ForgetConfig, complement, load_dataset, select_forget
from fedunlearn.models import ModelConfig, fresh_model
from fedunlearn.training import TrainConfig, train
from fedunlearn.unlearn import UnlearnTask, amun, sisa


def timed(work) -> tuple[float, float]:
    start, cpu = time.perf_counter(), task_cpu_seconds()
    work()
    return time.perf_counter() - start, task_cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--epochs-per-slice", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0, help="0 = as many as the cluster holds")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data = load_dataset(DataConfig(name="fashion-mnist", train_size=args.train_size, test_size=1000), 0)
    forget_idx = select_forget(data.train.y.numpy(), ForgetConfig(fraction=0.1), 0)
    retain_idx = complement(len(data.train), forget_idx)
    make_model = functools.partial(fresh_model, ModelConfig(name="mlp", hidden=256), data.input_shape, 10, 0)
    recipe = TrainConfig(epochs=10, batch_size=128)
    original = train(make_model(), data.train, recipe, torch.device("cpu"), progress=False)
    cluster = ClusterConfig(workers=args.workers)
    workdir = tempfile.mkdtemp(prefix="fedunlearn-bench-")
    task = UnlearnTask(original=original, retain=data.train.subset(retain_idx), forget=data.train.subset(forget_idx),
                       train_cfg=recipe, make_model=make_model, num_classes=10, device=torch.device("cpu"),
                       retain_idx=retain_idx, forget_idx=forget_idx, workdir=workdir, cluster=cluster)
    sisa_cfg = sisa.Config(shards=args.shards, slices=4, epochs_per_slice=args.epochs_per_slice)
    amun_cfg = amun.Config(steps=20)
    shard_data, alive = sisa._positions(task, with_forget=False)

    def sisa_run(limit: int):
        shutil.rmtree(f"{workdir}/shards", ignore_errors=True)
        sisa.fit(shard_data, alive, sisa_cfg, task, f"{workdir}/shards", max_parallel=limit)

    with ray_session(cluster):
        res = current_resources(cluster)
        warm_up(cluster)
        print(f"{res.describe()}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for name, work in [("SISA shard training", sisa_run),
                           ("AMUN search", lambda limit: amun.search(task, original, amun_cfg, max_parallel=limit))]:
            runs = {res.slots: [], 1: []}
            for _ in range(args.repeats):
                for limit in runs:
                    runs[limit].append(timed(lambda: work(limit)))
            for limit, times in runs.items():
                print(f"{name}, {limit} worker(s): wall " + ", ".join(f"{w:.2f}" for w, _ in times)
                      + " s; CPU " + ", ".join(f"{c:.2f}" for _, c in times) + " s")
            best = {limit: min(w for w, _ in times) for limit, times in runs.items()}
            print(f"{name}: {res.slots} workers vs 1, fastest runs: {best[1] / best[res.slots]:.2f}x "
                  f"(ideal {min(res.slots, args.shards if 'SISA' in name else res.slots)}x)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
