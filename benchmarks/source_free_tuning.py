"""Tuning harness for source-free federated unlearning, in plain PyTorch (no Ray, no Flower).

A sequential FedAvg with stored per-client updates, one departing client with a backdoor,
then: the original, retrain without the client, subtraction of the client's stored updates
(renormalised over the remaining clients), and source-free variants built on the pure
algorithm in fedunlearn.unlearn.source_free. Originals and retrains are cached under --cache
so that variants can be compared quickly. Wall times are only comparable within one run.

    python benchmarks/source_free_tuning.py --partition dirichlet --batchnorm
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fedunlearn.data import BackdoorConfig, DataConfig, load_dataset, partition, poison, triggered_test
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.models import ModelConfig, build_model
from fedunlearn.training import TrainConfig, accuracy, seed_everything, train
from fedunlearn.unlearn.source_free import (ConsolidateConfig, GeneratorConfig, consolidate, mixed_teacher, sample,
                                            train_generator)
from fedunlearn.unlearn.source_free.forget import fisher_penalty, flag_unique, local_fisher


def fedavg(clients, rounds, make_model, local: TrainConfig, seed: int, skip=None):
    """Returns the final state, the initial state and history[round][client] = update (state delta)."""
    seed_everything(seed)
    model = make_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in initial.items()}
    history = []
    for r in range(rounds):
        updates, sizes = {}, {}
        for c, data in enumerate(clients):
            if c == skip:
                continue
            local_model = make_model()
            local_model.load_state_dict(state)
            train(local_model, data, local, torch.device("cpu"), seed=seed * 1000 + r * 100 + c, progress=False)
            updates[c] = {k: v - state[k] for k, v in local_model.state_dict().items()}
            sizes[c] = len(data)
        total = sum(sizes.values())
        for k in state:
            if state[k].dtype.is_floating_point:
                state[k] = state[k] + sum(sizes[c] / total * updates[c][k] for c in updates)
            else:
                state[k] = state[k] + max(updates[c][k] for c in updates)
        history.append(updates)
    return state, initial, history


def subtract(state, initial, history, sizes, k):
    """w_0 + sum over rounds of the remaining clients' updates, weighted among themselves."""
    out = {key: v.clone() for key, v in state.items()}
    rest = sum(n for c, n in enumerate(sizes) if c != k)
    for key in out:
        if not out[key].dtype.is_floating_point:
            continue
        out[key] = initial[key].clone()
        for updates in history:
            out[key] += sum(sizes[c] / rest * updates[c][key] for c in updates if c != k)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partition", default="iid", choices=["iid", "dirichlet"])
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--batchnorm", action="store_true")
    ap.add_argument("--train-size", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-steps", type=int, default=200)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ref-weights", default="0,0.5,1")
    ap.add_argument("--cache", default="/tmp/sf_cache")
    args = ap.parse_args()
    torch.set_num_threads(2)

    data = load_dataset(DataConfig("fashion-mnist", train_size=args.train_size, test_size=5000), seed=args.seed)
    parts = partition(data.train.y.numpy(), args.clients, args.partition, args.alpha, args.seed)
    clients = [data.train.subset(p) for p in parts]
    bd = BackdoorConfig(fraction=0.2, target=0)
    x, y, poisoned = poison(clients[0].x, clients[0].y, bd, args.seed)
    clients[0] = ArrayDataset(x, y)
    trig = ArrayDataset(*triggered_test(data.test.x, data.test.y, bd))
    sizes = [len(c) for c in clients]
    mcfg = ModelConfig("cnn", batchnorm=args.batchnorm)
    make = lambda: build_model(mcfg, data.input_shape, data.num_classes)  # noqa: E731
    local = TrainConfig(epochs=1, batch_size=64, lr=0.05, schedule="constant")
    print(f"client sizes {sizes}; departing client 0 labels {np.bincount(clients[0].y.numpy(), minlength=10)}")

    key = f"{args.partition}{args.alpha if args.partition != 'iid' else ''}_bn{int(args.batchnorm)}_n{args.train_size}_c{args.clients}_r{args.rounds}_s{args.seed}"
    path = Path(args.cache) / f"{key}.pt"
    if path.exists():
        saved = torch.load(path)
    else:
        t = time.perf_counter()
        state, initial, history = fedavg(clients, args.rounds, make, local, args.seed)
        t_orig = time.perf_counter() - t
        t = time.perf_counter()
        retrain, _, _ = fedavg(clients, args.rounds, make, local, args.seed, skip=0)
        saved = dict(state=state, initial=initial, history=history, retrain=retrain,
                     t_orig=t_orig, t_retrain=time.perf_counter() - t)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(saved, path)

    def load(state):
        m = make()
        m.load_state_dict(state)
        return m.eval()

    cpu = torch.device("cpu")

    def show(name, model, seconds=float("nan")):
        print(f"{name:42s} test {accuracy(model, data.test, cpu):.4f}  asr {accuracy(model, trig, cpu):.4f}  "
              f"forget {accuracy(model, clients[0], cpu):.4f}  {seconds:7.2f}s", flush=True)

    original, retrain = load(saved["state"]), load(saved["retrain"])
    show("original", original)
    show("retrain", retrain, saved["t_retrain"])
    t = time.perf_counter()
    ref = load(subtract(saved["state"], saved["initial"], saved["history"], sizes, 0))
    show("subtract (renormalised)", ref, time.perf_counter() - t)

    gcfg = GeneratorConfig(steps=args.gen_steps)
    gen, gstats = train_generator(original, data.input_shape, data.num_classes, gcfg, cpu, seed=args.seed)
    xs, ys = sample(gen, range(10), 1000, cpu)
    agree = lambda m: float((m(xs).argmax(1) == ys).float().mean())  # noqa: E731
    print(f"generator {gstats['generator_s']:.1f}s ce {gstats['gen_ce']:.3f}; label agreement orig {agree(original):.3f} "
          f"retrain {agree(retrain):.3f} subtract {agree(ref):.3f}; trigger-corner mean {xs[..., -3:, -3:].mean():.3f}")
    ccfg = ConsolidateConfig(steps=args.steps, lr=args.lr)
    for w in [float(v) for v in args.ref_weights.split(",")]:
        teacher = mixed_teacher(original, ref, w, ccfg.temperature)
        student, st = consolidate(ref, teacher, gen, range(10), ccfg, cpu, seed=args.seed)
        show(f"sf absent  teacher w_ref={w}", student, gstats["generator_s"] + st["consolidate_s"])
        # cooperative: the departing client flags samples where original and reference disagree
        flags = flag_unique(original, ref, clients[0], cpu)
        fisher = local_fisher(ref, clients[0].subset(flags), cpu)
        term = fisher_penalty(ref, fisher)
        student, st = consolidate(ref, teacher, gen, range(10), ccfg, cpu, forget_term=term, seed=args.seed)
        hit = np.isin(flags, poisoned).mean() if len(flags) else float("nan")
        show(f"sf coop    teacher w_ref={w} flags {len(flags)} ({hit:.2f} bd)", student,
             gstats["generator_s"] + st["consolidate_s"])


if __name__ == "__main__":
    main()
