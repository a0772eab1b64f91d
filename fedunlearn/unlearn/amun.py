"""AMUN (Ebrahimpour-Boroojeny et al. 2025, "Not All Wrong is Bad: Using Adversarial Examples for Unlearning").

For each forget sample, the closest adversarial example we can find: PGD-L2 inside a radius
that starts small and doubles until the model's prediction changes (Algorithm 1), labelled
with the model's new (wrong) prediction. Fine-tuning on these adversarial neighbours, with
retain samples (D_R + D_A) or, without access to the retain set, with the forget samples
themselves (D_F + D_A), lowers the model's confidence on exactly the forget samples, the way
a model that never saw them behaves, without the collapse that random labels cause.
(Measured on Fashion-MNIST: D_F + D_A + D_R kept forget accuracy at the original's level;
`with_forget` selects either variant.)

The search is independent per sample: it is fanned out over chunks of the forget set as
parallel Ray tasks (the model's state dict put into the object store once). Per radius, the
search stops for a sample as soon as its prediction changes, and a sample that survives a
radius starts the doubled one from where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedunlearn.cluster import ClusterConfig, current_resources, fan_out, ray_session, worker_device
from fedunlearn.config import check_range
from fedunlearn.data.datasets import ArrayDataset
from fedunlearn.training import TrainConfig, clone, loader, make_optimizer, seed_everything
from fedunlearn.unlearn.base import Stats, UnlearnTask


@dataclass(frozen=True)
class Config:
    eps: float = 0.04            # first L2 radius, for inputs in [0, 1]; doubled until the prediction changes
    steps: int = 50              # PGD steps per radius, each of length radius / 10
    max_doublings: int = 8       # a sample still unchanged at eps * 2**max_doublings gets no adversarial twin
    epochs: int = 10             # fine-tuning epochs on adversarial (+ retain or forget) samples
    lr: float = 0.05
    batch_size: int = 128
    # Retain samples drawn afresh each epoch, as a multiple of the other fine-tuning samples;
    # 0 = no retain data. More retain data keeps test accuracy over continual requests
    # (docs/findings.md).
    retain_ratio: float = 4.0
    # Fine-tune on the forget samples (true labels) too? None = as in the paper: only when no
    # retain samples are used (D_F + D_A); with retain samples it is D_R + D_A.
    with_forget: bool | None = None
    chunks: int = 0              # search tasks; 0 = one per worker slot; 1 = in this process, without Ray
    search_batch: int = 256      # forget samples attacked together inside one task
    benchmark_repeats: int = 3   # benchmark: interleaved runs of the search on all workers and on one

    def __post_init__(self):
        check_range("eps", self.eps, 1e-6)
        check_range("steps", self.steps, 1)
        check_range("max_doublings", self.max_doublings, 0)
        check_range("epochs", self.epochs, 0)
        check_range("lr", self.lr, 0.0)
        check_range("retain_ratio", self.retain_ratio, 0.0)
        check_range("chunks", self.chunks, 0)
        check_range("search_batch", self.search_batch, 1)
        check_range("benchmark_repeats", self.benchmark_repeats, 1)


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def nearest_adversarial(model: nn.Module, x: torch.Tensor, cfg: Config, device: torch.device) -> dict:
    """Algorithm 1 on a batch: x_adv, y_adv (the model's new prediction), the radius that worked,
    and `found` (False where even the largest radius left the prediction unchanged)."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # only input gradients are needed
    x = x.to(device)
    with torch.no_grad():
        y0 = model(x).argmax(1)
    delta = torch.zeros_like(x)
    x_adv, y_adv = x.clone(), y0.clone()
    radius = torch.full((len(x),), float("nan"), device=device)
    found = torch.zeros(len(x), dtype=torch.bool, device=device)
    steps_done = 0
    active = torch.arange(len(x), device=device)
    for doubling in range(cfg.max_doublings + 1):
        eps = cfg.eps * 2 ** doubling
        for step in range(cfg.steps + 1):  # the last pass only checks where the last step landed
            d = delta[active].requires_grad_(True)
            logits = model(x[active] + d)
            flipped = logits.argmax(1) != y0[active]
            hit = active[flipped]  # found at this radius: keep the point, stop moving it
            x_adv[hit], y_adv[hit] = x[hit] + delta[hit], logits.argmax(1)[flipped]
            radius[hit], found[hit] = eps, True
            active, moving = active[~flipped], ~flipped
            if len(active) == 0 or step == cfg.steps:
                break
            loss = F.cross_entropy(logits[moving], y0[active], reduction="sum")
            grad = torch.autograd.grad(loss, d)[0][moving]
            moved = delta[active] + (eps / 10) * grad / _l2(grad)
            moved = moved * (eps / _l2(moved)).clamp(max=1.0)            # back into the L2 ball
            delta[active] = (x[active] + moved).clamp(0, 1) - x[active]  # and into the image range
            steps_done += len(active)
        if len(active) == 0:
            break
    return {"x_adv": x_adv.cpu(), "y_adv": y_adv.cpu(), "radius": radius.cpu(), "found": found.cpu(),
            "steps": steps_done}


def search_chunk(make_model, state: dict, x: torch.Tensor, cfg: Config, device: torch.device | None = None) -> dict:
    """One Ray task's share of the search: the model rebuilt from its state dict, then batches of x."""
    device = device or worker_device()
    model = make_model()
    model.load_state_dict(state)
    return _merge([nearest_adversarial(model, x[i:i + cfg.search_batch], cfg, device)
                   for i in range(0, max(1, len(x)), cfg.search_batch)])


def _merge(parts: list[dict]) -> dict:
    merged = {k: torch.cat([p[k] for p in parts]) for k in ("x_adv", "y_adv", "radius", "found")}
    merged["steps"] = sum(p["steps"] for p in parts)
    return merged


def search(task: UnlearnTask, model: nn.Module, cfg: Config, max_parallel: int = 0) -> dict:
    """The adversarial search over task.forget, fanned out over chunks (or in-process if chunks = 1)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    x = task.forget.x
    if cfg.chunks == 1 or len(x) == 0:
        return search_chunk(task.make_model, state, x, cfg, task.device)
    cluster = task.cluster or ClusterConfig()
    with ray_session(cluster):
        import ray

        chunks = cfg.chunks or current_resources(cluster).slots
        state_ref = ray.put(state)  # once, shared by every chunk
        pieces = [x[idx] for idx in np.array_split(np.arange(len(x)), min(chunks, len(x)))]
        parts = fan_out(search_chunk, [(task.make_model, state_ref, piece, cfg) for piece in pieces], cluster,
                        max_parallel=max_parallel)
    return _merge(parts)


def finetune(model: nn.Module, base: ArrayDataset, retain: ArrayDataset, cfg: Config, recipe: TrainConfig,
             device: torch.device, seed: int) -> nn.Module:
    """SGD (the original's momentum and weight decay) on base + a fresh retain sample each epoch."""
    model.to(device).train()
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    per_epoch = min(len(retain), int(round(cfg.retain_ratio * len(base))))
    if len(base) + per_epoch == 0:
        return model.eval()  # no adversarial example found and nothing else to train on
    steps = cfg.epochs * -(-(len(base) + per_epoch) // cfg.batch_size)
    opt, sched = make_optimizer(model, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                                   momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                                   schedule=recipe.schedule), steps)
    for epoch in range(cfg.epochs):
        data = base
        if per_epoch:
            data = ArrayDataset.concat(base, retain.subset(rng.choice(len(retain), per_epoch, replace=False)))
        for xb, yb in loader(data, cfg.batch_size, shuffle=True, seed=seed + epoch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb.to(device)), yb.to(device)).backward()
            opt.step()
            sched.step()
    return model.eval()


def unlearn(task: UnlearnTask, cfg: Config = Config()):
    start = time.perf_counter()
    found = search(task, task.original, cfg)
    search_s = time.perf_counter() - start
    ok = found["found"]
    adversarial = ArrayDataset(found["x_adv"][ok], found["y_adv"][ok])
    with_forget = cfg.retain_ratio == 0 if cfg.with_forget is None else cfg.with_forget
    base = ArrayDataset.concat(task.forget, adversarial) if with_forget else adversarial
    model = finetune(clone(task.original), base, task.retain, cfg, task.train_cfg, task.device, seed=task.seed + 5)
    distance = _l2(found["x_adv"][ok] - task.forget.x[ok]).flatten()
    return model, Stats(finetune_on=("D_F+D_A" if with_forget else "D_A") + ("+D_R" if cfg.retain_ratio else ""),
                        search_s=search_s, finetune_s=time.perf_counter() - start - search_s,
                        adversarial=int(ok.sum()), not_found=int((~ok).sum()), pgd_steps=int(found["steps"]),
                        mean_radius=float(found["radius"][ok].mean()) if ok.any() else float("nan"),
                        mean_l2=float(distance.mean()) if ok.any() else float("nan"))


def benchmark(task: UnlearnTask, cfg: Config, result: dict) -> Stats:
    """The same adversarial search (same chunks) on every worker at once and on one worker,
    interleaved `benchmark_repeats` times; the fastest run of each counts (least disturbed)."""
    runs: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(cfg.benchmark_repeats):
        for limit in (0, 1):
            start = time.perf_counter()
            search(task, task.original, cfg, max_parallel=limit)
            runs[limit].append(time.perf_counter() - start)
    return Stats(search_parallel_s=min(runs[0]), search_1worker_s=min(runs[1]),
                 parallel_speedup=min(runs[1]) / min(runs[0]), benchmark_repeats=cfg.benchmark_repeats)
