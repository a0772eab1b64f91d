"""`fedunlearn tune CONFIG --method NAME`: a method's settings searched with Ray Tune, scored against retraining.

Originals and a retrain ensemble are trained once (Ray tasks, as in the audit); each trial
runs the method with its settings on every original and scores it by how far the result is
from retraining: KLoM on the forget set plus KLoM on the validation split (data.val_size).
The test set never takes part. The best settings are written as a `[methods.NAME]` section.
The search space is derived from the method's Config defaults (learning rates log-uniform
over two decades around the default, epoch counts 1..2x, shares in (0, 1) uniform).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from fedunlearn.audit.ensemble import ORIGINAL, RETRAIN_A, Job, Shared, member, run_members
from fedunlearn.errors import ConfigError
from fedunlearn.metrics.klom import klom, margins

Space = dict[str, tuple[str, float, float]]  # key -> (kind, low, high); kinds: loguniform, uniform, randint


def search_space(config_cls) -> Space:
    space: Space = {}
    for f in dataclasses.fields(config_cls):
        default = f.default
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if f.name == "lr" or f.name.endswith("_lr"):
            space[f.name] = ("loguniform", default / 10, default * 10)
        elif isinstance(default, int) and "epoch" in f.name and default >= 1:
            space[f.name] = ("randint", 1, 2 * default + 1)
        elif isinstance(default, float) and 0 < default < 1 and f.name in ("alpha", "fraction", "retain_fraction"):
            space[f.name] = ("uniform", max(0.01, default / 2), min(0.99, (1 + default) / 2))
    return space


def score(method_logits: list[dict], retrain_logits: list[dict], labels: dict[str, torch.Tensor]) -> float:
    """KLoM(forget) + KLoM(val) of the method's models against the retrained ones (lower is better)."""
    total = 0.0
    for part in ("forget", "val"):
        a = margins(torch.stack([m[part] for m in method_logits]), labels[part])
        b = margins(torch.stack([m[part] for m in retrain_logits]), labels[part])
        total += klom(a, b)
    return total if math.isfinite(total) else float("inf")


def trial(params: dict, method: str, base_cfg, shared: Shared, originals: list[dict], retrain_logits: list[dict],
          labels: dict) -> float:
    """Plain function: the method with `params` on each original, scored against retraining."""
    from fedunlearn.config import build
    from fedunlearn.unlearn import METHODS

    cfg = build(METHODS.get(method).Config, {**dataclasses.asdict(base_cfg), **params}, f"methods.{method}")
    logits = [member(Job(method, i, i, cfg), shared, state).logits for i, state in enumerate(originals)]
    return score(logits, retrain_logits, labels)


def _tune_space(space: Space):
    from ray import tune

    kinds = {"loguniform": tune.loguniform, "uniform": tune.uniform, "randint": tune.randint}
    return {k: kinds[kind](lo, hi) for k, (kind, lo, hi) in space.items()}


def require_tune():
    try:
        import ray.tune  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"`fedunlearn tune` needs Ray Tune's extra packages ({err}); install them with "
                          "pip install 'ray[tune]==2.55.1'") from None


def tune_method(cfg, method: str, out_dir: str | Path, samples: int = 8, models: int = 3) -> Path:
    """Search `method`'s settings for the centralized config `cfg`; writes OUT/tuned_<method>.toml."""
    require_tune()
    from ray import tune

    from fedunlearn.cluster.ray_env import ray_session
    from fedunlearn.data import complement, load_dataset
    from fedunlearn.data.forget_model import select_forget_for
    from fedunlearn.audit.ensemble import fresh_model
    from fedunlearn.metrics import Splits

    if cfg.data.val_size == 0:
        raise ConfigError("tuning scores on a validation split; set data.val_size (e.g. --set data.val_size=500)")
    base_cfg = cfg.method_config(method)
    space = search_space(type(base_cfg))
    if not space:
        raise ConfigError(f"method '{method}' has no numeric settings to search")
    seed = cfg.experiment.seed
    data = load_dataset(cfg.data, seed)
    base = Shared(cfg.model, data.input_shape, data.num_classes, cfg.train, cfg.eval, data.train, data.train,
                  data.train, Splits(data.train, data.train, data.test), data.val)
    with ray_session(cfg.audit.cluster):
        originals = sorted(run_members([Job(ORIGINAL, i, seed + i, evaluate=False) for i in range(models)], base, {},
                                       cfg.audit.cluster, desc="originals"), key=lambda m: m.index)
        models_ = []
        for m in originals:
            model = fresh_model(base, seed + m.index)
            model.load_state_dict(m.state)
            models_.append(model)
        forget_idx = select_forget_for(data.train, cfg.forget, seed, lambda: models_, "cpu")
        retain_idx = complement(len(data.train), forget_idx)
        retain, forget = data.train.subset(retain_idx), data.train.subset(forget_idx)
        shared = Shared(cfg.model, data.input_shape, data.num_classes, cfg.train, cfg.eval, data.train, retain, forget,
                        Splits(retain, forget, data.val), data.val, retain_idx, forget_idx)
        retrains = run_members([Job(RETRAIN_A, i, seed + models + i) for i in range(models)], shared, {},
                               cfg.audit.cluster, desc="retrains")
        labels = {"forget": forget.y, "val": data.val.y}
        objective = tune.with_parameters(
            lambda params, **kw: {"score": trial(params, **kw)}, method=method, base_cfg=base_cfg, shared=shared,
            originals=[m.state for m in originals], retrain_logits=[m.logits for m in retrains], labels=labels)
        tuner = tune.Tuner(objective, param_space=_tune_space(space),
                           tune_config=tune.TuneConfig(metric="score", mode="min", num_samples=samples),
                           run_config=tune.RunConfig(storage_path=str(Path(out_dir).resolve() / "tune")))
        best = tuner.fit().get_best_result()
    return write_section(out_dir, method, best.config, best.metrics["score"], samples, models)


def write_section(out_dir: str | Path, method: str, params: dict[str, Any], best: float, samples: int, models: int) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# searched by `fedunlearn tune` ({samples} trials, {models} originals and retrains): "
             f"KLoM(forget) + KLoM(val) against retraining = {best:.4f}", f"[methods.{method}]"]
    for key, value in sorted(params.items()):
        lines.append(f"{key} = {value!r}" if not isinstance(value, float) else f"{key} = {value:.6g}")
    path = out / f"tuned_{method}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
