"""Where source_free_absent's server task spends its time, at a config's model shape, one thread.

Times `server_repair` (in process, no Ray) stage by stage: the generator, the check samples, the
original's and reference's logits, the support check over the remaining clients' local models.
The models are seeded random CNNs of the config's architecture: the cost of a forward or
backward pass does not depend on the weights, and skip_agreement = 0 keeps the reference, as
the scale config's measured run did (a distillation adds its own steps on top). Each repeat runs
the task twice, interleaved, each time in a fresh process (a warm-up, then one timed repair, as
on the server's worker): "before", the same code with the exact speed-ups of 2026-12-01 turned
off (lean_activations, check samples generated in one batch, inference batches of 128), and
"after", as shipped; it fails unless both give the same student, generator, samples, support and
stats bit for bit. The page faults are memory the kernel had to map and zero (fresh buffers). A
second table times one local model's pass over the check samples in each memory layout and
batch size (inference.py's BATCH). Only comparable within one run.

    python benchmarks/source_free_speed.py simulations/withdrawal_scale.toml
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch

from fedunlearn.config import build, load_toml
from fedunlearn.experiments.federated_matrix import InlineServer
from fedunlearn.federated.config import Config
from fedunlearn.federated.methods import source_free_absent as absent
from fedunlearn.models import build_model
from fedunlearn.unlearn.source_free import generator, inference, pipeline, support

SHAPE, CLASSES = (1, 28, 28), 10  # Fashion-MNIST / MNIST; the benchmark needs no data
STAGES = [(pipeline, "train_generator"), (pipeline, "sample"), (pipeline, "logits"), (absent, "class_support")]


@contextlib.contextmanager
def patched(pairs):
    """setattr(module, name, value) for each (module, name, value) within the block."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in pairs]
    for module, name, value in pairs:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def before_speedups():
    """The patches that turn this branch's exact speed-ups off (the code as it was before them)."""
    plain = lambda *models: contextlib.nullcontext()  # noqa: E731
    return [(generator, "lean_activations", plain), (support, "lean_activations", plain),
            (inference, "lean_activations", plain),
            (pipeline, "sample", functools.partial(generator.sample, batch_size=10**9)),
            (pipeline, "logits", functools.partial(inference.logits, batch_size=128)),
            (absent, "class_support", functools.partial(support.class_support, batch_size=128))]


def timing(totals: dict, results: dict):
    """Patches wrapping each stage so that its wall time adds up in totals and its last result is kept."""
    def wrap(name, inner):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                results[name] = inner(*args, **kwargs)
                return results[name]
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
        return wrapper

    return [(module, name, wrap(name, getattr(module, name))) for module, name in STAGES]


def same(a, b) -> bool:
    """Bit-identical tensors, or containers of them, or equal plain values."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a if not str(k).endswith("_s"))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def setup(config: str):
    """(config, make_model, states, repair config) for the benchmark: seeded random CNNs."""
    cfg = build(Config, load_toml(config))
    torch.set_num_threads(1)

    def make_model():
        torch.manual_seed(0)
        return build_model(cfg.model, SHAPE, CLASSES)

    states = []
    for i in range(2 + cfg.method_config("source_free_absent").support_clients):
        torch.manual_seed(100 + i)
        states.append(absent.to_state(build_model(cfg.model, SHAPE, CLASSES)))
    return cfg, make_model, states, replace(cfg.method_config("source_free_absent"), skip_agreement=0.0)


def page_faults() -> int:
    """This process's minor page faults so far (memory the kernel had to map and zero)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def one_run(config: str, variant: str, out: str) -> None:
    """In this (fresh) process: the warm-up, then one timed server_repair, as `variant`; saved to `out`."""
    _, make_model, states, repair_cfg = setup(config)
    locals_ = [(state, 600) for state in states[2:]]
    totals, results = {}, {}
    with patched(before_speedups() if variant == "before" else []):
        absent.warm_up(InlineServer(), make_model, states[0], CLASSES, SHAPE, 0, cfg=repair_cfg)
        with patched(timing(totals, results)):
            start, cpu, faults = time.perf_counter(), time.process_time(), page_faults()
            student, gen, stats = absent.server_repair(make_model, states[0], states[1], CLASSES, SHAPE, repair_cfg,
                                                       0, locals_)
            wall, cpu, faults = time.perf_counter() - start, time.process_time() - cpu, page_faults() - faults
    torch.save({"wall": wall, "cpu": cpu, "faults": faults, "totals": totals,
                "outputs": (student, gen.state_dict(), stats, results["class_support"], results["sample"])}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", choices=["before", "after"], help=argparse.SUPPRESS)  # one fresh process's run
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return one_run(args.config, args.variant, args.out)
    cfg, make_model, states, repair_cfg = setup(args.config)
    print(f"server_repair, {repair_cfg.support_clients} local models, {repair_cfg.check_samples} check samples, one "
          "fresh process per run after a warm-up\n(before / after the exact speed-ups, interleaved; wall s, and the "
          "process's CPU s, which a loaded machine inflates less):")
    walls, cpus = {"before": [], "after": []}, {"before": [], "after": []}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            outputs = {}
            for variant in ("before", "after"):
                out = os.path.join(tmp, f"{variant}.pt")
                subprocess.run([sys.executable, __file__, args.config, "--variant", variant, "--out", out], env=env,
                               check=True)
                run = torch.load(out, weights_only=False)
                walls[variant].append(run["wall"])
                cpus[variant].append(run["cpu"])
                outputs[variant] = run["outputs"]
                print(f"  {variant:6s} total {run['wall']:6.2f} s (CPU {run['cpu']:5.2f}, {run['faults']:6d} faults)  "
                      + "  ".join(f"{k} {v:.2f}" for k, v in run["totals"].items()))
            assert same(outputs["before"], outputs["after"]), "the speed-ups changed the repair's outputs"
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print("  same student, generator, samples, support and stats bit for bit in every repeat; median "
          + ", ".join(f"{k} {median(walls[k]):.2f} s (CPU {median(cpus[k]):.2f})" for k in walls))

    x = torch.rand(repair_cfg.check_samples, *SHAPE)
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
