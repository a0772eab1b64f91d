"""Where source_free_absent's server task spends its time, at a config's model shape, one thread.

Times `server_repair` (in process, no Ray) stage by stage: the generator, the check samples, the
original's and reference's logits, the support check over the remaining clients' local models.
The models are seeded random CNNs of the config's architecture: the cost of a forward or
backward pass does not depend on the weights, and skip_agreement = 0 keeps the reference, as
the scale config's measured run did (a distillation adds its own steps on top). A second table
times one local model's pass over the check samples in each memory layout and batch size
(inference.py's BATCH). Only comparable within one run on an otherwise idle machine.

    python benchmarks/source_free_speed.py simulations/withdrawal_scale.toml
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

import torch

from fedunlearn.config import build, load_toml
from fedunlearn.experiments.federated_matrix import InlineServer
from fedunlearn.federated.config import Config
from fedunlearn.federated.methods import source_free_absent as absent
from fedunlearn.models import build_model
from fedunlearn.unlearn.source_free import pipeline


def timed(module, name: str, totals: dict) -> None:
    """Wrap module.name so that its wall time adds up in totals[name]."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = build(Config, load_toml(args.config))
    torch.set_num_threads(1)
    shape, classes = (1, 28, 28), 10  # Fashion-MNIST / MNIST; the benchmark needs no data

    def make_model():
        torch.manual_seed(0)
        return build_model(cfg.model, shape, classes)

    states = []
    for i in range(2 + cfg.method_config("source_free_absent").support_clients):
        torch.manual_seed(100 + i)
        states.append(absent.to_state(build_model(cfg.model, shape, classes)))
    repair_cfg = replace(cfg.method_config("source_free_absent"), skip_agreement=0.0)
    locals_ = [(state, 600) for state in states[2:]]
    totals: dict[str, float] = {}
    for module, name in [(pipeline, "train_generator"), (pipeline, "sample"), (pipeline, "logits"),
                         (absent, "class_support")]:
        timed(module, name, totals)
    absent.warm_up(InlineServer(), make_model, states[0], classes, shape, 0, cfg=repair_cfg)
    print(f"server_repair, {len(locals_)} local models, {repair_cfg.check_samples} check samples:")
    for _ in range(args.repeats):
        totals.clear()
        start = time.perf_counter()
        absent.server_repair(make_model, states[0], states[1], classes, shape, repair_cfg, 0, locals_)
        print(f"  total {time.perf_counter() - start:6.2f} s  " + "  ".join(f"{k} {v:.2f}" for k, v in totals.items()))

    x = torch.rand(repair_cfg.check_samples, *shape)
    model = make_model().eval()
    print(f"one local model over {len(x)} check samples (s):")
    for layout in ("default", "channels_last"):
        m = copy.deepcopy(model)
        xs = x
        if layout == "channels_last":
            m, xs = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        cells = []
        for batch in (64, 128, 256, 1000):
            walls = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                with torch.inference_mode():
                    for i in range(0, len(xs), batch):
                        m(xs[i:i + batch])
                walls.append(time.perf_counter() - start)
            cells.append(f"batch {batch} {min(walls):.3f}")
        print(f"  {layout:13s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
