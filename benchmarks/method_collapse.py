"""Does a method wreck the model? One original of a config's task, one class forgotten, the method at
given settings: accuracy on the forget set, on the validation split's kept classes, and the method's
stats (the guard's `returned_epoch` / `scale_used` among them). The numbers behind docs/findings.md's
scrub and unrolling_sgd entries.

    python benchmarks/method_collapse.py simulations/audit.toml scrub --set methods.scrub.max_drop=1.0
    python benchmarks/method_collapse.py simulations/audit.toml unrolling_sgd --forget-class 3

Plain PyTorch on one core, no Ray; needs data.val_size > 0 (the guard judges on it).
"""

from __future__ import annotations

import argparse
import time

import torch

from fedunlearn.cli import load_experiment
from fedunlearn.data import ForgetConfig, complement, load_dataset, select_forget
from fedunlearn.models import build_model
from fedunlearn.training import accuracy, seed_everything, train
from fedunlearn.unlearn import METHODS, UnlearnTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("method")
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _, cfg = load_experiment(args.config, args.set)
    seed = cfg.experiment.seed
    data = load_dataset(cfg.data, seed)
    if data.val is None:
        raise SystemExit("set data.val_size: the kept classes' accuracy is measured on the validation split")

    def make_model():
        seed_everything(seed)
        return build_model(cfg.model, data.input_shape, data.num_classes)

    original = train(make_model(), data.train, cfg.train, "cpu", seed=seed, progress=False)
    forget_idx = select_forget(data.train.y.numpy(), ForgetConfig(kind="class", classes=(args.forget_class,)), seed)
    retain_idx = complement(len(data.train), forget_idx)
    task = UnlearnTask(original=original, retain=data.train.subset(retain_idx), forget=data.train.subset(forget_idx),
                       train_cfg=cfg.train, make_model=make_model, num_classes=data.num_classes,
                       device=torch.device("cpu"), seed=seed, retain_idx=retain_idx, forget_idx=forget_idx, val=data.val)
    kept = data.val.subset(torch.nonzero(data.val.y != args.forget_class).flatten())
    method_cfg = cfg.method_config(args.method)
    start = time.perf_counter()
    model, stats = METHODS.get(args.method).unlearn(task, method_cfg)
    wall = time.perf_counter() - start
    print(f"{args.method} {method_cfg} ({wall:.1f} s)")
    print(f"original:  forget acc {accuracy(original, task.forget, 'cpu'):.3f}, "
          f"kept-class val acc {accuracy(original, kept, 'cpu'):.3f}")
    print(f"unlearned: forget acc {accuracy(model, task.forget, 'cpu'):.3f}, "
          f"kept-class val acc {accuracy(model, kept, 'cpu'):.3f}")
    print("stats:", {k: round(v, 4) if isinstance(v, float) else v for k, v in dict(stats).items()})


if __name__ == "__main__":
    main()
